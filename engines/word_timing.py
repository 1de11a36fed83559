"""Word-level start and end times, computed the way openai-whisper's timing.py does.

For one decoded window: run the aligner graph (engines/alignment_export.py) over
``[sot sequence, <|notimestamps|>, text tokens, <|endoftext|>]``, keep the alignment heads'
cross-attention over the window's real frames, softmax it over those frames, normalise each
head over tokens (z-score), median-filter along time (width 7), average the heads, and align
tokens to frames by dynamic time warping on the negated matrix. A token starts where the
warping path first reaches its row; tokens merge into words (split on spaces, or on whole
characters for languages written without them), punctuation joins its neighbour, and the
same clean-up heuristics as openai-whisper and faster-whisper cap implausibly long words at
pauses and sentence ends. A word's probability is the mean probability of its tokens as the
decoder chose them.

Numpy only: the warping runs one anti-diagonal at a time, vectorised within each.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from edgescribe.engines.model import WhisperModel
from edgescribe.engines.tokenizer import TIME_PRECISION

MEDIAN_FILTER_WIDTH = 7
TOKENS_PER_SECOND = 1 / TIME_PRECISION  # encoder positions per second (two mel frames each)
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"
# Languages written without spaces between words: a word is each whole character.
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})


@dataclass(frozen=True)
class Word:
    """A word with times in seconds (recording time once placed in a segment)."""

    word: str  # with its leading space, as the tokenizer spells it
    start: float
    end: float
    probability: float | None  # None when the caller passed no token log-probabilities


@dataclass(frozen=True)
class SpanTokens:
    """One segment of a window to time: its times (recording time), tokens and their log-probabilities."""

    start: float
    end: float
    tokens: list[int]  # as decoded, timestamps included
    logprobs: list[float]  # one per token, or empty


@dataclass(frozen=True)
class TimedSpan:
    """A segment's words, and its times refined by them (recording time)."""

    start: float
    end: float
    words: list[Word]


@dataclass
class AlignedWord:
    """A word as aligned, times from the window start; the clean-up steps edit it in place."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float | None


# -- the numeric steps ------------------------------------------------------------------


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of odd ``width`` along the last axis, reflect-padded."""
    if width % 2 == 0:
        raise ValueError(f"median filter width must be odd, got {width}")
    if width <= 1 or x.shape[-1] <= width // 2:
        return x  # too short to reflect-pad; openai-whisper leaves it alone too
    pad = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.partition(windows, pad, axis=-1)[..., pad]  # the middle of an odd window: its median


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through ``cost`` [tokens, frames] from (0, 0) to the end.

    Returns (token indices, frame indices) along the path. Same recurrence and tie-breaking as
    openai-whisper's dtw_cpu (diagonal only when strictly cheapest, then up, else left). A
    cell depends on its upper, left and upper-left neighbours, so each anti-diagonal is
    computed at once from the two before it.
    """
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.full((n + 1, m + 1), -1, np.int8)
    for s in range(2, n + m + 1):
        i = np.arange(max(1, s - m), min(n, s - 1) + 1)
        j = s - i
        c0, c1, c2 = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        diagonal = (c0 < c1) & (c0 < c2)
        up = ~diagonal & (c1 < c0) & (c1 < c2)
        step = np.where(diagonal, 0, np.where(up, 1, 2)).astype(np.int8)
        total[i, j] = cost[i - 1, j - 1] + np.where(diagonal, c0, np.where(up, c1, c2))
        trace[i, j] = step
    trace[0, :] = 2
    trace[:, 0] = 1
    path = []
    i, j = n, m
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    indices = np.array(path[::-1], np.int64).reshape(-1, 2).T
    return indices[0], indices[1]


def alignment_matrix(scores: np.ndarray, num_frames: int, medfilt_width: int = MEDIAN_FILTER_WIDTH) -> np.ndarray:
    """Token-by-frame alignment strength from the aligner's scores [heads, tokens, audio_ctx]."""
    weights = scores[:, :, : num_frames // 2].astype(np.float64)
    weights = np.exp(weights - weights.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = (weights - mean) / np.where(std > 0, std, 1.0)
    return median_filter(weights, medfilt_width).mean(axis=0)


# -- words --------------------------------------------------------------------------------


def split_to_word_tokens(model: WhisperModel, tokens: list[int], language: str) -> tuple[list[str], list[list[int]]]:
    """Words and their tokens: whole characters for unspaced languages, else words at spaces."""
    if language in UNSPACED_LANGUAGES:
        return _split_on_unicode(model, tokens)
    words: list[str] = []
    word_tokens: list[list[int]] = []
    eot = model.tokenizer.special.eot
    for subword, pieces in zip(*_split_on_unicode(model, tokens)):
        special = pieces[0] >= eot
        if special or subword.startswith(" ") or subword.strip() in string.punctuation or not words:
            words.append(subword)
            word_tokens.append(list(pieces))
        else:
            words[-1] += subword
            word_tokens[-1].extend(pieces)
    return words, word_tokens


def _split_on_unicode(model: WhisperModel, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
    """Cut wherever the tokens so far decode to whole characters (no U+FFFD of a split byte)."""
    decode = model.tokenizer.decode_with_timestamps
    full = decode(tokens)
    words: list[str] = []
    word_tokens: list[list[int]] = []
    current: list[int] = []
    offset = 0
    for token in tokens:
        current.append(token)
        decoded = decode(current)
        bad = decoded.find("\ufffd")
        if bad < 0 or (offset + bad < len(full) and full[offset + bad] == "\ufffd"):
            words.append(decoded)
            word_tokens.append(current)
            current = []
            offset += len(decoded)
    return words, word_tokens


def merge_punctuations(timings: list[AlignedWord], prepended: str = PREPEND_PUNCTUATIONS,
                       appended: str = APPEND_PUNCTUATIONS) -> None:
    """Join opening punctuation to the word after it and closing punctuation to the word before
    (openai-whisper's rules); a merged-away entry keeps its place with an empty word."""
    i, j = len(timings) - 2, len(timings) - 1
    while i >= 0:
        previous, following = timings[i], timings[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(timings):
        previous, following = timings[i], timings[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def find_alignment(model: WhisperModel, cross, text_tokens: list[int], token_probs: list[float] | None,
                   num_frames: int, language: str) -> list[AlignedWord]:
    """Each word of ``text_tokens`` (no timestamps) with start/end seconds from the window start."""
    if not text_tokens:
        return []
    special = model.tokenizer.special
    sot_sequence = model.tokenizer.sot_sequence(language if model.is_multilingual else None)
    tokens = [*sot_sequence, special.no_timestamps, *text_tokens, special.eot]
    scores = model.runner.align(np.array([tokens], np.int64), cross)[:, 0]  # [heads, tokens, audio_ctx]
    matrix = alignment_matrix(scores, num_frames)[len(sot_sequence) : -1]
    text_indices, time_indices = dtw(-matrix)

    words, word_tokens = split_to_word_tokens(model, text_tokens + [special.eot], language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    return [
        AlignedWord(word, list(pieces), float(start), float(end),
                    float(np.mean(token_probs[i:j])) if token_probs is not None else None)
        for word, pieces, start, end, i, j in zip(words, word_tokens, starts, ends, boundaries[:-1], boundaries[1:])
    ]


def time_words(model: WhisperModel, cross, spans: list[SpanTokens], window_start: float, num_frames: int,
               language: str, last_speech: float) -> tuple[list[TimedSpan], float]:
    """Words of each of one window's segments, in recording time.

    As in openai-whisper and faster-whisper, a segment with words starts at its first word and
    ends at its last: the aligned times are finer than the decoder's timestamp tokens, which
    the clean-up below still consults for implausibly long first and last words.

    ``cross`` is the window's encoder output (batch of one), ``num_frames`` its real mel
    frames, ``last_speech`` where speech last ended (seconds; the first word after a long pause
    is kept from stretching back into it). Returns each span's timing and the new last_speech.
    """
    eot = model.tokenizer.special.eot
    text_tokens: list[int] = []
    probs: list[float] = []
    per_span: list[int] = []
    with_probs = all(len(span.logprobs) == len(span.tokens) for span in spans)
    for span in spans:
        kept = [(t, p) for t, p in zip(span.tokens, span.logprobs if with_probs else [0.0] * len(span.tokens)) if t < eot]
        text_tokens.extend(t for t, _ in kept)
        probs.extend(float(np.exp(p)) for _, p in kept)
        per_span.append(len(kept))
    timings = find_alignment(model, cross, text_tokens, probs if with_probs else None, num_frames, language)
    durations = np.array([t.end - t.start for t in timings])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):
        # a sentence-ending mark or the word after it is never longer than twice the median word
        for i in range(1, len(timings)):
            if timings[i].end - timings[i].start > longest:
                if timings[i].word in SENTENCE_END_MARKS:
                    timings[i].end = timings[i].start + longest
                elif timings[i - 1].word in SENTENCE_END_MARKS:
                    timings[i].start = timings[i].end - longest
    merge_punctuations(timings)

    result: list[TimedSpan] = []
    index = 0
    for span, count in zip(spans, per_span):
        words: list[AlignedWord] = []
        taken = 0
        while index < len(timings) and taken < count:
            timing = timings[index]
            if timing.word:
                words.append(AlignedWord(timing.word, timing.tokens, window_start + timing.start,
                                         window_start + timing.end, timing.probability))
            taken += len(timing.tokens)
            index += 1
        if not words:
            result.append(TimedSpan(span.start, span.end, []))
            continue
        _fix_segment_edges(words, span, last_speech, median, longest)
        placed = _in_order(words)
        result.append(TimedSpan(placed[0].start, placed[-1].end, placed))
        last_speech = placed[-1].end
    return result, last_speech


def _fix_segment_edges(words: list[AlignedWord], span: SpanTokens, last_speech: float, median: float, longest: float) -> None:
    """openai-whisper's clean-up of a segment's first and last words (see the module docstring)."""
    first = words[0]
    if first.end - last_speech > median * 4 and (
        first.end - first.start > longest or (len(words) > 1 and words[1].end - first.start > longest * 2)
    ):
        if len(words) > 1 and words[1].end - words[1].start > longest:
            boundary = max(words[1].end / 2, words[1].end - longest)
            first.end = words[1].start = boundary
        first.start = max(0.0, first.end - longest)
    if span.start < first.end and span.start - 0.5 > first.start:
        first.start = max(0.0, min(first.end - median, span.start))
    last = words[-1]
    if span.end > last.start and span.end + 0.5 < last.end:
        last.end = max(last.start + median, span.end)


def _in_order(timings: list[AlignedWord]) -> list[Word]:
    """Words whose times never run backwards (the edge clean-up may move a first word's end
    past the next word's start)."""
    words: list[Word] = []
    floor = 0.0
    for timing in timings:
        start = max(timing.start, floor)
        end = max(timing.end, start)
        words.append(Word(timing.word, round(start, 3), round(end, 3),
                          None if timing.probability is None else round(timing.probability, 4)))
        floor = start
    return words
