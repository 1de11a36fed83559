"""The one decoding loop: batched greedy (or temperature-sampled) Whisper decoding over a Runner.

Both the offline pipeline (``transcribe.py``) and the streaming daemon call :func:`decode`.
It encodes a batch of 30-s log-mel windows once, runs each sequence's prompt through the
decoder, then extends every sequence one token per step with a shared fixed-size KV cache
until each has produced end-of-text. Logit filters follow openai-whisper's decoder:
suppressed tokens, no blank start, and the timestamp rules (timestamps in pairs, never
decreasing, the first one early, and a timestamp whenever timestamps together outweigh the
best text token).

Because the decoder graph returns only the last position's logits, the prompt runs as two
calls: ``[<|startofprev|> previous text..., <|startoftranscript|>]``, whose logits give the
no-speech probability and (for multilingual models) the language, then
``[language, task, (<|notimestamps|>), (prefix...)]``, whose logits give the first token.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgescribe.engines.beam_search import PromptState, beam_decode
from edgescribe.engines.model import WhisperModel
from edgescribe.engines.tokenizer import TIME_PRECISION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode one 30-s window.

    ``prompt`` holds previous-text tokens (conditioning, sent after <|startofprev|>);
    ``prefix`` holds tokens the transcript is forced to begin with. Both are token ids;
    use ``WhisperTokenizer.encode_prompt`` to make them from text.
    """

    task: str = "transcribe"  # or "translate" (multilingual models only)
    language: str | None = None  # None: detect (multilingual) or "en" (English-only)
    temperature: float = 0.0  # 0: greedy; > 0: sample from softmax(logits / temperature)
    sample_len: int | None = None  # most tokens to generate; default n_text_ctx // 2
    prompt: tuple[int, ...] = ()
    prefix: tuple[int, ...] = ()
    without_timestamps: bool = False
    suppress_blank: bool = True  # no space or end-of-text as the first token
    suppress_tokens: tuple[int, ...] = (-1,)  # -1: the tokenizer's non-speech symbols
    max_initial_timestamp: float | None = 1.0  # seconds; the first timestamp may not be later
    seed: int | None = None  # for reproducible sampling when temperature > 0
    beam_size: int = 1  # > 1: beam search (engines/beam_search.py), at temperature 0 only
    patience: float = 1.0  # beam search ends once round(beam_size * patience) sequences finished
    length_penalty: float | None = None  # None: rank beams by logprob / length; else ((5 + length) / 6) ** this


@dataclass(frozen=True)
class TimedSpan:
    """Tokens between two timestamps, times in seconds from the start of the window."""

    start: float
    end: float | None  # None: runs to the end of the audio in the window (no closing timestamp)
    tokens: list[int]


@dataclass
class DecodingResult:
    """What one window decoded to.

    ``tokens`` are the generated tokens including timestamps (and the forced prefix),
    without end-of-text. ``avg_logprob`` is the summed log-probability of the chosen
    tokens including end-of-text, divided by (number of tokens + 1), as Whisper defines it.
    ``spans`` cut ``tokens`` at timestamp pairs; ``complete`` is false when the last span
    is unfinished (no closing timestamp), which tells the seek loop where to resume.
    """

    tokens: list[int]
    text: str
    language: str
    language_probs: dict[str, float] | None
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    spans: list[TimedSpan] = field(default_factory=list)
    complete: bool = True
    hit_length_limit: bool = False
    # log-probability of each of ``tokens`` as decoded (0 for the forced prefix), for word
    # probabilities (engines/word_timing.py); beam search reports those of the winning sequence
    token_logprobs: list[float] = field(default_factory=list)


def compression_ratio(text: str) -> float:
    """UTF-8 length over zlib-compressed length: above ~2.4 the text is repeating itself."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def decode(
    model: WhisperModel,
    mel: np.ndarray,
    options: DecodingOptions | list[DecodingOptions] = DecodingOptions(),
    encoded: Any = None,
) -> list[DecodingResult]:
    """Decode a batch of log-mel windows float32 [batch, n_mels, frames]; one result per window.

    ``options`` is one set for every window or a list with one per window (e.g. each stream
    its own prompt or temperature; ``beam_size`` > 1 searches with engines/beam_search.py).
    ``encoded`` is ``model.runner.encode(mel)`` when the
    caller already has it (temperature fallback decodes the same window again).
    """
    if mel.ndim == 2:
        mel = mel[None]
    batch = mel.shape[0]
    if isinstance(options, DecodingOptions):
        options = [options] * batch
    if len(options) != batch:
        raise ValueError(f"{len(options)} decoding options for {batch} windows")
    if batch == 0:
        return []
    beam = any(o.beam_size > 1 for o in options)
    sampled = [i for i, o in enumerate(options) if o.temperature > 0]
    if beam and 0 < len(sampled) < batch:
        # beam search and sampling in one batch: each decodes on its own (beam_size 1 at
        # temperature 0 is greedy decoding in either)
        if encoded is not None:
            raise ValueError("encoded can be given only for a batch without both beam search and sampling")
        rest = [i for i in range(batch) if options[i].temperature <= 0]
        results = dict(zip(rest, decode(model, mel[rest], [options[i] for i in rest])))
        results.update(zip(sampled, decode(model, mel[sampled], [options[i] for i in sampled])))
        return [results[i] for i in range(batch)]
    if encoded is None:
        encoded = model.runner.encode(np.ascontiguousarray(mel, dtype=np.float32))
    if beam:
        # a TensorRT engine's profile caps the rows (windows x beams) of one decoder call
        max_rows = getattr(model.runner, "max_batch", None)
        return beam_decode(lambda rows: _BatchDecoder(model, rows), encoded, options, max_rows)
    return _BatchDecoder(model, options).run(encoded)


class _BatchDecoder:
    """State of one call to :func:`decode`: the rows, their tokens, offsets and scores."""

    def __init__(self, model: WhisperModel, options: list[DecodingOptions]):
        self.model = model
        self.tokenizer = model.tokenizer
        self.runner = model.runner
        self.options = options
        self.special = self.tokenizer.special
        self.n_ctx = model.dims.n_text_ctx
        self.n_vocab = model.dims.n_vocab
        self.batch = len(options)
        for option in options:
            self._check(option)
        # suppression sets differ only if the options differ; resolve each distinct one once
        resolved: dict[tuple[int, ...], np.ndarray] = {}
        self.suppress = [
            resolved.setdefault(o.suppress_tokens, np.array(self.tokenizer.suppress_ids(o.suppress_tokens), np.int64))
            for o in options
        ]
        self.blank = np.array(self.tokenizer.encode(" ") + [self.special.eot], np.int64)
        # one generator a row: a row's samples depend on its own seed, never on the rows it is
        # batched with (best_of candidates, or whatever the scheduler put together)
        self.rngs = [np.random.default_rng(o.seed) for o in options]

    def _check(self, option: DecodingOptions) -> None:
        if option.task not in ("transcribe", "translate"):
            raise ValueError(f"unknown task {option.task!r}")
        if option.language is not None and self.model.is_multilingual:
            self.tokenizer.language_token(option.language)  # raises on unknown codes
        if option.task == "translate" and not self.model.is_multilingual:
            raise ValueError("translation needs a multilingual model; this one is English-only")
        if option.beam_size < 1 or option.patience <= 0:
            raise ValueError(f"beam_size must be 1 or more and patience above 0, got {option.beam_size} and {option.patience}")
        if option.beam_size > 1 and option.temperature > 0:
            raise ValueError(f"beam search runs at temperature 0, got beam_size {option.beam_size} at {option.temperature}")

    # -- prompt --------------------------------------------------------------------

    def _context(self, option: DecodingOptions) -> list[int]:
        """<|startofprev|> + the newest previous text that fits + <|startoftranscript|>."""
        context = []
        if option.prompt:
            # at most half the context for old text, as Whisper does
            context = [self.special.sot_prev, *option.prompt[-(self.n_ctx // 2 - 1) :]]
        return context + [self.special.sot]

    def _task_tokens(self, option: DecodingOptions, language: str) -> list[int]:
        """Language and task (multilingual), <|notimestamps|>, then the forced prefix."""
        tokens = []
        if self.model.is_multilingual:
            tokens = self.tokenizer.sot_sequence(language, option.task)[1:]
        if option.without_timestamps:
            tokens.append(self.special.no_timestamps)
        if option.prefix:
            if not option.without_timestamps:
                tokens.append(self.special.timestamp_begin)  # the prefix starts the window
            tokens.extend(option.prefix[-(self.n_ctx // 2 - 1) :])
        return tokens

    def _feed(self, rows: list[list[int]], offsets: np.ndarray, cache, cross) -> np.ndarray:
        """Run token lists of different lengths; return each row's logits after its last token.

        Rows are right-padded: a short row's padding writes scratch keys past its own end,
        which its next real token overwrites (the graph ignores cache rows >= offset). The
        last token of every row then runs alone at that row's own offset, so every row's
        logits come from its own last real token.
        """
        lengths = np.array([len(r) for r in rows], np.int64)
        longest = int(lengths.max())
        if longest + int(offsets.max()) > self.n_ctx:
            raise ValueError(f"prompt of {longest} tokens at position {int(offsets.max())} exceeds the text context {self.n_ctx}")
        pad = self.special.eot
        if longest > 0 and (lengths == longest).all():
            logits = self.runner.decode(np.array(rows, np.int64), offsets, cache, cross)
        else:
            if longest > 1:
                heads = np.array([r[:-1] + [pad] * (longest - len(r)) for r in rows], np.int64)
                heads = heads[:, : longest - 1]
                self.runner.decode(heads, offsets, cache, cross)
            lasts = np.array([[r[-1] if r else pad] for r in rows], np.int64)
            logits = self.runner.decode(lasts, offsets + np.maximum(lengths - 1, 0), cache, cross)
        offsets += lengths
        return logits

    def prompt(self, cross: Any) -> PromptState:
        """Run every row's prompt with a new cache (greedy decoding and beam search alike)."""
        options, special = self.options, self.special
        cache = self.runner.new_cache(self.batch)
        offsets = np.zeros(self.batch, np.int64)

        # 1. previous text + SOT: no-speech probability and language
        sot_logits = self._feed([self._context(o) for o in options], offsets, cache, cross)
        no_speech = _softmax(sot_logits)[:, special.no_speech]
        languages, language_probs = self._languages(sot_logits)

        # 2. language, task, notimestamps, prefix: logits of the first generated token
        task_rows = [self._task_tokens(o, lang) for o, lang in zip(options, languages)]
        logits = sot_logits
        if any(task_rows):
            fed = np.array([len(r) > 0 for r in task_rows])
            task_logits = self._feed(task_rows, offsets, cache, cross)
            logits = np.where(fed[:, None], task_logits, sot_logits)

        sampled = [row[row.index(special.timestamp_begin):] if o.prefix and not o.without_timestamps
                   else list(o.prefix) for row, o in zip(task_rows, options)]
        return PromptState(cache, offsets, logits, sampled, languages, language_probs, no_speech)

    # -- the loop ------------------------------------------------------------------

    def run(self, cross: Any) -> list[DecodingResult]:
        batch, options, special = self.batch, self.options, self.special
        prompt = self.prompt(cross)
        cache, offsets, logits, sampled = prompt.cache, prompt.offsets, prompt.logits, prompt.sampled
        languages, language_probs, no_speech = prompt.languages, prompt.language_probs, prompt.no_speech
        generated = [0] * batch
        token_logprobs = [[0.0] * len(row) for row in sampled]
        sum_logprobs = np.zeros(batch, np.float64)
        finished = np.zeros(batch, bool)
        limit_hit = np.zeros(batch, bool)
        budgets = [o.sample_len or self.n_ctx // 2 for o in options]
        temperatures = np.array([o.temperature for o in options], np.float32)

        for _step in range(max(budgets)):
            logits = np.asarray(logits, dtype=np.float32)  # a fresh array per step: filters write in place
            for b in range(batch):
                if not finished[b]:
                    self.filter_logits(logits[b], b, sampled[b], generated[b])
            chosen = self._choose(logits, temperatures)
            logprobs = _chosen_logprobs(logits, chosen)
            for b in range(batch):
                if finished[b]:
                    continue
                sum_logprobs[b] += logprobs[b]
                if chosen[b] == special.eot:
                    finished[b] = True
                    continue
                sampled[b].append(int(chosen[b]))
                token_logprobs[b].append(float(logprobs[b]))
                generated[b] += 1
                if generated[b] >= budgets[b] or offsets[b] + 1 >= self.n_ctx:
                    finished[b] = limit_hit[b] = True
            if finished.all():
                break
            # finished rows keep running a dummy token in place; cheaper than reshaping the cache
            step_offsets = np.minimum(offsets, self.n_ctx - 1)
            step_tokens = np.where(finished, special.eot, chosen).astype(np.int64)[:, None]
            logits = self.runner.decode(step_tokens, step_offsets, cache, cross)
            offsets += ~finished

        return [
            self.result(b, sampled[b], sum_logprobs[b], languages[b], language_probs[b], float(no_speech[b]),
                         bool(limit_hit[b]), token_logprobs[b])
            for b in range(batch)
        ]

    def _languages(self, sot_logits: np.ndarray) -> tuple[list[str], list[dict[str, float] | None]]:
        """Each row's language: the given one, or the most likely language token after SOT."""
        languages: list[str] = []
        all_probs: list[dict[str, float] | None] = []
        codes = self.tokenizer.languages
        ids = np.array([self.tokenizer.language_tokens[c] for c in codes], np.int64) if self.model.is_multilingual else None
        for b, option in enumerate(self.options):
            if not self.model.is_multilingual:
                languages.append("en")
                all_probs.append(None)
            elif option.language is not None:
                languages.append(option.language)
                all_probs.append(None)
            else:
                probs = _softmax(sot_logits[b, ids][None])[0]
                languages.append(codes[int(probs.argmax())])
                all_probs.append({c: float(p) for c, p in zip(codes, probs)})
        return languages, all_probs

    def filter_logits(self, logits: np.ndarray, b: int, sampled: list[int], generated: int) -> None:
        """Apply every logit rule to one row in place (openai-whisper's LogitFilters)."""
        option = self.options[b]
        special = self.special
        logits[self.suppress[b]] = -np.inf
        if option.suppress_blank and generated == 0:
            logits[self.blank] = -np.inf
        if not option.without_timestamps:
            self._timestamp_rules(logits, sampled, option)

    def _timestamp_rules(self, logits: np.ndarray, sampled: list[int], option: DecodingOptions) -> None:
        begin = self.special.timestamp_begin
        eot = self.special.eot
        logits[self.special.no_timestamps] = -np.inf
        last_is_time = len(sampled) >= 1 and sampled[-1] >= begin
        penultimate_is_time = len(sampled) < 2 or sampled[-2] >= begin
        # timestamps come in pairs (start, end) except just before end-of-text
        if last_is_time:
            if penultimate_is_time:
                logits[begin:] = -np.inf  # a pair just closed: text must follow
            else:
                logits[:eot] = -np.inf  # an open start timestamp: no text before the end one
        # timestamps never go back; a segment's end must be later than its start
        times = [t for t in sampled if t >= begin]
        if times:
            floor = times[-1] if last_is_time and not penultimate_is_time else times[-1] + 1
            logits[begin:floor] = -np.inf
        if not sampled:
            logits[:begin] = -np.inf  # the window starts with a timestamp
            if option.max_initial_timestamp is not None:
                last_allowed = begin + int(round(option.max_initial_timestamp / TIME_PRECISION))
                logits[last_allowed + 1 :] = -np.inf
        # when timestamps together are likelier than the best text token, take a timestamp
        # (compared on logits: the softmax normaliser is the same on both sides)
        text_best = logits[:begin].max()
        if text_best > -np.inf and _logsumexp(logits[begin:]) > text_best:
            logits[:begin] = -np.inf

    def _choose(self, logits: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
        chosen = logits.argmax(axis=-1)
        hot = temperatures > 0
        for b in np.flatnonzero(hot):
            # Gumbel-max: argmax(logits / T + Gumbel noise) samples from softmax(logits / T)
            noise = -np.log(-np.log(self.rngs[b].uniform(1e-20, 1.0, size=logits.shape[1])))
            chosen[b] = (logits[b] / temperatures[b] + noise).argmax()
        return chosen

    def result(self, b, sampled, sum_logprob, language, language_probs, no_speech_prob, limit_hit,
                token_logprobs: list[float] | None = None) -> DecodingResult:
        option = self.options[b]
        tokens = list(sampled)
        text = self.tokenizer.decode(tokens).strip()
        spans, complete = split_at_timestamps(tokens, self.special.timestamp_begin, option.without_timestamps)
        return DecodingResult(
            tokens=tokens,
            text=text,
            language=language,
            language_probs=language_probs,
            avg_logprob=float(sum_logprob / (len(tokens) + 1)),
            no_speech_prob=no_speech_prob,
            compression_ratio=compression_ratio(text),
            temperature=option.temperature,
            spans=spans,
            complete=complete,
            hit_length_limit=limit_hit,
            token_logprobs=list(token_logprobs or []),
        )


def continuation(result: DecodingResult, forced: int, tokenizer: Any) -> DecodingResult:
    """A result decoded without timestamps, less its first ``forced`` tokens (a prefix the
    caller forced): the text, scores and span of what the model added after it. Forced tokens
    were scored 0, so the summed log-probability is the continuation's own; the no-speech
    probability stays the window's."""
    rest = result.tokens[forced:]
    summed = result.avg_logprob * (len(result.tokens) + 1)
    text = tokenizer.decode(rest).strip()
    return replace(
        result,
        tokens=rest,
        text=text,
        avg_logprob=float(summed / (len(rest) + 1)),
        compression_ratio=compression_ratio(text),
        spans=[TimedSpan(0.0, None, list(rest))],
        token_logprobs=result.token_logprobs[forced:],
    )


def split_at_timestamps(tokens: list[int], timestamp_begin: int, without_timestamps: bool = False) -> tuple[list[TimedSpan], bool]:
    """Cut a window's tokens into spans at consecutive timestamp pairs.

    Returns the spans (times relative to the window) and whether the window ended cleanly:
    true when the tokens close with a lone timestamp (nothing spoken after it) or carry no
    timestamp pair at all; false when the last span is unfinished and should be decoded
    again from its start in the next window.
    """
    if without_timestamps:
        return [TimedSpan(0.0, None, list(tokens))], True
    ends_with_single = len(tokens) >= 2 and tokens[-2] < timestamp_begin <= tokens[-1]
    cuts = [i for i in range(1, len(tokens)) if tokens[i] >= timestamp_begin and tokens[i - 1] >= timestamp_begin]
    if not cuts:
        # one span: opened by a leading timestamp (if any), closed by a trailing one (if any)
        start = (tokens[0] - timestamp_begin) * TIME_PRECISION if tokens and tokens[0] >= timestamp_begin else 0.0
        closing = [i for i, t in enumerate(tokens) if t >= timestamp_begin and i > 0 and tokens[i - 1] < timestamp_begin]
        end = (tokens[closing[-1]] - timestamp_begin) * TIME_PRECISION if closing else None
        return [TimedSpan(start, end, list(tokens))], True
    if ends_with_single:
        cuts.append(len(tokens))
    spans = []
    last = 0
    for cut in cuts:
        piece = tokens[last:cut]
        spans.append(TimedSpan((piece[0] - timestamp_begin) * TIME_PRECISION, (piece[-1] - timestamp_begin) * TIME_PRECISION, piece))
        last = cut
    return spans, ends_with_single


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _logsumexp(x: np.ndarray) -> float:
    top = x.max()
    if top == -np.inf:
        return -np.inf
    return float(top + np.log(np.exp(x - top, dtype=np.float64).sum()))


def _chosen_logprobs(logits: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """log_softmax(logits)[row, chosen[row]] for every row."""
    top = logits.max(axis=-1, keepdims=True)
    normaliser = top[:, 0] + np.log(np.exp(logits - top, dtype=np.float64).sum(axis=-1))
    return logits[np.arange(len(chosen)), chosen] - normaliser
