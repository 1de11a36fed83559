"""Beam search decoding: openai-whisper's BeamSearchDecoder, batched over windows x beams.

Each window with ``beam_size`` k runs as k rows of one decoder batch (the cross-attention
K/V repeated per beam with ``Runner.select_cross``). Every step each live row proposes its
k + 1 likeliest next tokens (after the same logit filters as greedy decoding), scored by
the summed log-probability of the whole sequence; per window the k best sequences that do
not end in end-of-text live on, and those that do are kept as finished candidates until
``round(k * patience)`` of them exist. The self-attention cache follows the surviving
sequences with ``Runner.reorder``. The winner is the finished sequence with the best
summed log-probability divided by its length (openai-whisper's MaximumLikelihoodRanker; with
``length_penalty`` the divisor is ``((5 + length) / 6) ** length_penalty``). With k = 1
this is greedy decoding, token for token. Each row also carries its tokens' log-probabilities
(the step's log-softmax after the filters, as greedy decoding reports them), which follow the
sequence from row to row, so the winner's words get probabilities too.

The decoder objects handed in run the prompt, filter logits and build the result
(``engines.decoding`` builds them over one set of options per row); this module imports
nothing of decoding.py, so the two form no import cycle (decoding.py imports
:class:`PromptState` from here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np


class BeamOptions(Protocol):
    """The decoding options this module reads (engines.decoding.DecodingOptions)."""

    beam_size: int
    patience: float
    length_penalty: float | None
    sample_len: int | None


@dataclass
class PromptState:
    """The decoder rows after their prompt ran (engines.decoding._BatchDecoder.prompt): where
    greedy decoding and beam search both start."""

    cache: Any  # the runner's self-attention cache, one row per decoder row
    offsets: np.ndarray  # int64 [rows]: each row's next position; the caller advances it
    logits: np.ndarray  # [rows, vocab]: logits of each row's first generated token
    # tokens each row has "sampled" in the sense of the timestamp rules: the prefix onwards
    sampled: list[list[int]]
    languages: list[str]
    language_probs: list[Any]  # per row: {code: probability} when detected, else None
    no_speech: np.ndarray  # float64 [rows]: probability of <|nospeech|> after the SOT


class RowDecoder(Protocol):
    """What beam search needs of the greedy decoder (engines.decoding._BatchDecoder), whose
    rows are this search's rows: options, the prompt, logit filters and results."""

    runner: Any
    options: Sequence[BeamOptions]
    special: Any
    n_ctx: int

    def prompt(self, cross: Any) -> PromptState: ...

    def filter_logits(self, logits: np.ndarray, b: int, sampled: list[int], generated: int) -> None: ...

    def result(self, b, sampled, sum_logprob, language, language_probs, no_speech_prob, limit_hit,
               token_logprobs) -> Any: ...


@dataclass(frozen=True)
class _Ending:
    """How a finished sequence scored: summed log-probability (end-of-text included), each
    token's log-probability (0 for the forced prefix), whether it stopped at the length limit."""

    score: float
    token_logprobs: tuple[float, ...]
    limit_hit: bool


@dataclass
class _Window:
    """One window's search: its rows in the batch and the sequences finished so far."""

    first: int  # its first row; rows first .. first + size - 1 are its beams
    size: int
    max_finished: int
    budget: int  # most tokens to generate
    done: bool = False
    # finished sequence (tokens from the prefix on, without end-of-text) -> its ending
    finished: dict[tuple[int, ...], "_Ending"] = field(default_factory=dict)

    @property
    def rows(self) -> range:
        return range(self.first, self.first + self.size)


def beam_decode(
    make_decoder: Callable[[list[Any]], RowDecoder], cross: Any, options: Sequence[BeamOptions], max_rows: int | None = None
) -> list[Any]:
    """Decode each window with its options' beam size; one result per window.

    ``cross`` is the encoder output of the windows, one row per window; ``make_decoder``
    builds the greedy decoder over one set of options per decoder row. Windows are searched
    in groups of at most ``max_rows`` beams (a TensorRT engine's batch limit), each group
    with its own cache.
    """
    sizes = [o.beam_size for o in options]
    if max_rows is not None and max(sizes) > max_rows:
        raise ValueError(f"beam_size {max(sizes)} needs {max(sizes)} decoder rows; the engine takes at most {max_rows} "
                         "(rebuild the engines with a larger max_batch, or lower the beam size)")
    groups: list[list[int]] = [[]]
    for window, size in enumerate(sizes):
        if groups[-1] and max_rows is not None and sum(sizes[w] for w in groups[-1]) + size > max_rows:
            groups.append([])
        groups[-1].append(window)
    results: list[Any] = []
    for group in groups:
        rows = np.repeat(np.array(group), [sizes[w] for w in group])
        search = _BeamSearch(make_decoder([options[w] for w in rows]), [sizes[w] for w in group])
        results += search.run(cross, rows)
    return results


class _BeamSearch:
    def __init__(self, decoder: RowDecoder, beam_sizes: Sequence[int]):
        self.decoder = decoder
        self.runner = decoder.runner
        self.special = decoder.special
        firsts = np.concatenate([[0], np.cumsum(beam_sizes)[:-1]]).astype(int)
        self.windows = []
        for first, size in zip(firsts, beam_sizes):
            option = decoder.options[first]
            self.windows.append(_Window(
                first=int(first),
                size=int(size),
                max_finished=max(1, round(size * option.patience)),
                budget=option.sample_len or decoder.n_ctx // 2,
            ))
        self.rows = int(sum(beam_sizes))

    def run(self, window_cross: Any, row_windows: np.ndarray) -> list[Any]:
        """Search; ``row_windows`` is each decoder row's window in ``window_cross``."""
        decoder, special, rows = self.decoder, self.special, self.rows
        cross = self.runner.select_cross(window_cross, row_windows)
        # the prompt, as greedy decoding runs it, once per beam (every beam starts identical)
        prompt = decoder.prompt(cross)
        cache, offsets, logits, sampled = prompt.cache, prompt.offsets, prompt.logits, prompt.sampled
        forced = [len(s) for s in sampled]  # the prefix: not generated, not counted in lengths
        sum_logprobs = np.zeros(rows, np.float64)
        # each row's tokens' log-probabilities, as greedy decoding reports them (word probabilities)
        token_logprobs = [[0.0] * len(s) for s in sampled]
        live = np.ones(rows, bool)

        for _step in range(max(w.budget for w in self.windows)):
            logits = np.asarray(logits, dtype=np.float32)  # a fresh array: filters write in place
            for r in np.flatnonzero(live):
                decoder.filter_logits(logits[r], int(r), sampled[r], len(sampled[r]) - forced[r])
            logprobs = _log_softmax(logits)
            sources = np.arange(rows)
            tokens = np.full(rows, special.eot, np.int64)
            for window in self.windows:
                if not window.done:
                    self._advance(window, logprobs, sampled, token_logprobs, forced, sum_logprobs, sources, tokens, offsets)
            # rows of windows that ran this step (some may have ended with it) take their sequences
            sampled = [list(sampled[s]) + [int(t)] if live[r] else sampled[r]
                       for r, (s, t) in enumerate(zip(sources, tokens))]
            token_logprobs = [token_logprobs[s] + [float(logprobs[s, t])] if live[r] else token_logprobs[r]
                              for r, (s, t) in enumerate(zip(sources, tokens))]
            for window in self.windows:
                if window.done:
                    live[window.rows] = False
            if not live.any():
                break
            # the cache rows follow the sequences that survived; unmoved rows are not copied
            self.runner.reorder(cache, sources, int(offsets.max()))
            # done windows keep running a dummy token in place; cheaper than reshaping the cache
            logits = self.runner.decode(tokens[:, None], np.minimum(offsets, decoder.n_ctx - 1), cache, cross)
            offsets += live

        results = []
        for window in self.windows:
            self._finalize(window, sampled, token_logprobs, sum_logprobs)
            tokens, ending = self._best(window, forced[window.first])
            b = window.first
            results.append(decoder.result(b, list(tokens), ending.score, prompt.languages[b], prompt.language_probs[b],
                                          float(prompt.no_speech[b]), ending.limit_hit, list(ending.token_logprobs)))
        return results

    def _advance(self, window: _Window, logprobs, sampled, token_logprobs, forced, sum_logprobs, sources, tokens,
                 offsets) -> None:
        """One step of one window: choose its next k sequences (writing their source rows,
        tokens and scores into the batch arrays), collect those that ended."""
        k = window.size
        scores: dict[tuple[int, ...], float] = {}
        origin: dict[tuple[int, ...], int] = {}
        for r in window.rows:
            row = logprobs[r]
            top = np.argpartition(-row, k)[: k + 1]
            top = top[np.argsort(-row[top], kind="stable")]
            prefix = tuple(sampled[r])
            for token in top.tolist():
                sequence = prefix + (token,)
                scores[sequence] = float(sum_logprobs[r] + row[token])
                origin[sequence] = r
        kept = 0
        newly_finished: list[tuple[tuple[int, ...], _Ending]] = []
        for sequence in sorted(scores, key=scores.get, reverse=True):
            if sequence[-1] == self.special.eot:
                # end-of-text counts in the score, not among the tokens (as in greedy decoding)
                ending = _Ending(scores[sequence], tuple(token_logprobs[origin[sequence]]), False)
                newly_finished.append((sequence[:-1], ending))
                continue
            row = window.first + kept
            sources[row] = origin[sequence]
            tokens[row] = sequence[-1]
            sum_logprobs[row] = scores[sequence]
            kept += 1
            if kept == k:
                break
        for sequence, ending in newly_finished:
            if len(window.finished) >= window.max_finished:
                break
            window.finished[sequence] = ending
        first = window.first
        generated = len(sampled[first]) + 1 - forced[first]
        window.done = (
            len(window.finished) >= window.max_finished
            or generated >= window.budget
            or offsets[first] + 1 >= self.decoder.n_ctx
        )

    def _finalize(self, window: _Window, sampled, token_logprobs, sum_logprobs) -> None:
        """Too few finished sequences (the length limit): the best live beams stand in."""
        if len(window.finished) >= window.size:
            return
        for r in sorted(window.rows, key=lambda r: -sum_logprobs[r]):
            window.finished.setdefault(tuple(sampled[r]), _Ending(float(sum_logprobs[r]), tuple(token_logprobs[r]), True))
            if len(window.finished) >= window.size:
                break

    def _best(self, window: _Window, forced: int) -> tuple[tuple[int, ...], _Ending]:
        """The finished sequence with the best length-normalised summed log-probability."""
        penalty = self.decoder.options[window.first].length_penalty

        def normalised(item):
            tokens, ending = item
            score = ending.score
            length = max(len(tokens) - forced, 1)
            return score / (length if penalty is None else ((5 + length) / 6) ** penalty)

        return max(window.finished.items(), key=normalised)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - (top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True)))
