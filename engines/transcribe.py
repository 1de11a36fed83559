"""Offline transcription: a whole recording, window by window, into timed segments.

The seek loop of openai-whisper and faster-whisper: decode a 30-s window, keep the
segments closed by timestamp pairs, move the window to the last closing timestamp (so a
sentence cut by the window edge is decoded again whole), and condition each window on the
text before it. A window whose text looks wrong (too repetitive for zlib, or too unlikely)
is decoded again at a higher temperature; a window the model judges silent is skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgescribe.engines.audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, SAMPLE_RATE, load_audio
from edgescribe.engines.decoding import DecodingOptions, DecodingResult, decode
from edgescribe.engines.encoder_window import DEFAULT_ENCODER_WINDOW, EncoderWindow
from edgescribe.engines.fallback import Attempt, FallbackLadder
from edgescribe.engines.model import WhisperModel
from edgescribe.engines.quality_gates import QualityGates
from edgescribe.engines.tokenizer import TIME_PRECISION
from edgescribe.engines.word_timing import SpanTokens, Word, time_words

log = logging.getLogger(__name__)

FRAMES_PER_TIMESTAMP = round(TIME_PRECISION * FRAMES_PER_SECOND)  # 2 mel frames per timestamp step


@dataclass(frozen=True)
class TranscribeOptions:
    """Options of the offline pipeline; defaults are Whisper's."""

    language: str | None = None  # None: detect from the first window (multilingual models)
    task: str = "transcribe"
    initial_prompt: str | None = None  # text that conditions the first window (names, jargon)
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    best_of: int = 5  # samples per window at temperatures > 0; the likeliest is kept
    beam_size: int = 1  # beams at temperature 0 (1: greedy); see engines/beam_search.py
    patience: float = 1.0  # beam search: finish once round(beam_size * patience) sequences ended
    length_penalty: float | None = None  # beam search: None ranks by logprob / length
    compression_ratio_threshold: float | None = 2.4  # above: repetitive, try a higher temperature
    log_prob_threshold: float | None = -1.0  # average log-probability below: try a higher temperature
    no_speech_threshold: float | None = 0.6  # no-speech probability above (and logprob low): skip
    # Beyond Whisper: windows quieter than this (RMS, dB full scale) are silence without asking
    # the model, which on digital silence confidently "hears" a lone "you".
    silence_threshold_db: float | None = -70.0
    # Beyond Whisper: when every temperature fails and the likeliest text is still improbable,
    # the window is noise the model tried to read words into; drop it rather than keep the guess.
    drop_failed_windows: bool = True
    condition_on_previous_text: bool = True
    prompt_reset_on_temperature: float = 0.5  # drop the conditioning text after a hot fallback
    without_timestamps: bool = False
    max_initial_timestamp: float = 1.0
    suppress_blank: bool = True
    suppress_tokens: tuple[int, ...] = (-1,)
    sample_len: int | None = None
    seed: int | None = 0  # sampling is reproducible by default
    # A recording that fits one window is encoded in a window sized to it (see
    # engines/encoder_window.py); longer recordings keep 30-s windows, as the seek loop needs.
    encoder_window: EncoderWindow = DEFAULT_ENCODER_WINDOW
    # Word start/end times per segment (engines/word_timing.py); needs the package's aligner graph.
    # Segments keep their text and the seek loop its course; their times follow their words.
    word_timestamps: bool = False


@dataclass(frozen=True)
class Segment:
    """A stretch of speech with its text, times in seconds from the start of the recording."""

    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    words: tuple[Word, ...] = ()  # with TranscribeOptions.word_timestamps


@dataclass
class Transcription:
    segments: list[Segment]
    language: str
    duration: float  # seconds of audio
    language_probability: float | None = None  # None when the language was given
    windows: int = 0  # 30-s windows decoded (fallback retries not counted)
    fallbacks: int = 0  # windows decoded again at a higher temperature
    full_window_retries: int = 0  # short windows decoded again in 30 s (engines/encoder_window.py)

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments).strip()


def transcribe(model: WhisperModel, audio: str | Path | np.ndarray, options: TranscribeOptions = TranscribeOptions()) -> Transcription:
    """Transcribe a WAV file or 16-kHz mono float32 samples."""
    samples = load_audio(audio) if isinstance(audio, (str, Path)) else np.asarray(audio, dtype=np.float32)
    if options.language is not None and not model.is_multilingual and options.language != "en":
        log.warning("%s is English-only; ignoring language %r", model.name, options.language)
        options = replace(options, language="en")
    return _SeekLoop(model, options).run(samples)


class _SeekLoop:
    def __init__(self, model: WhisperModel, options: TranscribeOptions):
        self.model = model
        self.options = options
        self.tokenizer = model.tokenizer
        self.begin = self.tokenizer.special.timestamp_begin
        self.fallbacks = 0
        self.full_window_retries = 0
        self.encoded = None  # encoder output of the window last decoded (word timing aligns over it)
        self.gates = QualityGates(options.compression_ratio_threshold, options.log_prob_threshold, options.no_speech_threshold)

    def run(self, samples: np.ndarray) -> Transcription:
        options = self.options
        mel = self.model.log_mel(samples)
        content_frames = mel.shape[-1] - 1  # the last frame covers only the padding
        language = options.language if self.model.is_multilingual else "en"
        language_probability = None
        history: list[int] = self.tokenizer.encode_prompt(options.initial_prompt) if options.initial_prompt else []
        prompt_start = 0  # history[prompt_start:] conditions the next window
        segments: list[Segment] = []
        seek = 0
        windows = 0
        last_speech = 0.0  # where the last timed segment ended (word timing)
        # A recording that fits one window may be encoded in a shorter one; the seek loop needs 30 s.
        window_mode = options.encoder_window if content_frames <= N_FRAMES else "full"
        ladder = FallbackLadder(tuple(options.temperatures), options.beam_size, window_mode)
        # every window moves seek forward by >= 1 frame, so this bound is never the one that ends the loop
        while seek < content_frames and windows <= content_frames:
            size = min(N_FRAMES, content_frames - seek)
            if self._is_quiet(samples[seek * HOP_LENGTH : (seek + size) * HOP_LENGTH]):
                log.debug("window at %.2f s: below %s dBFS, silence", seek / FRAMES_PER_SECOND, options.silence_threshold_db)
                seek += size
                continue
            windows += 1
            result = self._decode_in_window(mel[:, seek : seek + size], ladder, language, history[prompt_start:])
            if language is None:
                language = result.language
                language_probability = (result.language_probs or {}).get(language)
                log.info("detected language %s (p=%.2f)", language, language_probability or 0.0)
            if self.gates.is_silent(result):
                log.debug("window at %.2f s: no speech (p=%.2f)", seek / FRAMES_PER_SECOND, result.no_speech_prob)
                seek += size
                continue
            kept, next_seek = self._segments(result, seek, size)
            if options.word_timestamps and kept:
                kept, last_speech = self._with_words(kept, result, size, seek, last_speech)
            for segment in kept:
                history.extend(segment.tokens)
            segments.extend(kept)
            seek = max(next_seek, seek + 1)
            if not options.condition_on_previous_text or result.temperature > options.prompt_reset_on_temperature:
                prompt_start = len(history)
        return Transcription(
            segments=segments,
            language=language or "en",
            duration=len(samples) / SAMPLE_RATE,
            language_probability=language_probability,
            windows=windows,
            fallbacks=self.fallbacks,
            full_window_retries=self.full_window_retries,
        )

    def _decoding_options(self, language: str | None, prompt: list[int], attempt: Attempt) -> DecodingOptions:
        o = self.options
        return DecodingOptions(
            task=o.task,
            language=language,
            temperature=attempt.temperature,
            sample_len=o.sample_len,
            prompt=tuple(prompt),
            without_timestamps=o.without_timestamps,
            suppress_blank=o.suppress_blank,
            suppress_tokens=o.suppress_tokens,
            max_initial_timestamp=o.max_initial_timestamp,
            seed=o.seed,
            beam_size=attempt.beam_size,  # sampling (best_of) above temperature 0
            patience=o.patience,
            length_penalty=o.length_penalty,
        )

    def _decode_in_window(self, mel: np.ndarray, ladder: FallbackLadder, language: str | None,
                          prompt: list[int]) -> DecodingResult:
        """Decode ``mel`` [n_mels, <= 3000 frames] along the fallback ladder (engines/fallback.py)
        until a result passes the quality checks; when none does, the best of those tried."""
        o = self.options
        attempt: Attempt | None = ladder.first()
        window: np.ndarray | None = None
        tried: list[DecodingResult] = []  # the attempts whose verdict counts
        asked = language
        while attempt is not None:
            chosen = self.model.encoder_window(mel, attempt.window)[None]
            if window is None or chosen.shape != window.shape:
                window = chosen
                self.encoded = self.model.runner.encode(window)
            option = self._decoding_options(asked, prompt, attempt)
            if attempt.temperature > 0 and o.best_of > 1:
                # several samples of the same window in one batch; keep the likeliest
                candidates = decode(self.model, np.repeat(window, o.best_of, axis=0),
                                    [replace(option, seed=None if o.seed is None else o.seed + i) for i in range(o.best_of)])
                result = max(candidates, key=lambda r: r.avg_logprob)
            else:
                result = decode(self.model, window, option, encoded=self.encoded)[0]
            if attempt.step == "hotter":
                self.fallbacks += 1
            if not ladder.fails(result, self.gates):
                return result
            attempt = ladder.next_after(attempt, short=window.shape[-1] < N_FRAMES)
            if attempt is not None and attempt.step == "full_window":
                self.full_window_retries += 1
                continue  # the short window is the suspect: its result neither counts nor sets the language
            tried.append(result)
            if asked is None:
                asked = result.language  # detected once; fallbacks keep it
        best = replace(self.gates.best_of_failed(tried), temperature=o.temperatures[-1])
        if o.drop_failed_windows and self.gates.is_unlikely(best):
            log.debug("every temperature failed (best avg logprob %.2f): treating the window as noise", best.avg_logprob)
            return replace(best, tokens=[], text="", spans=[])
        return best  # the hottest temperature tried governs the prompt reset

    def _with_words(self, kept: list[Segment], result: DecodingResult, size: int, seek: int,
                    last_speech: float) -> tuple[list[Segment], float]:
        """``kept`` with their words timed over the encoder output of their window (``size`` frames)."""
        logprobs: dict[int, list[float]] = {}  # id of a span's token list -> its tokens' log-probabilities
        position = 0
        for span in result.spans:
            logprobs[id(span.tokens)] = result.token_logprobs[position : position + len(span.tokens)]
            position += len(span.tokens)
        spans = [SpanTokens(s.start, s.end, s.tokens, logprobs.get(id(s.tokens), [])) for s in kept]
        timed, last_speech = time_words(self.model, self.encoded, spans, seek / FRAMES_PER_SECOND, size,
                                        result.language, last_speech)
        # a segment with words runs from its first word to its last, as openai-whisper's do
        return [replace(segment, start=t.start, end=t.end, words=tuple(t.words))
                for segment, t in zip(kept, timed)], last_speech

    def _is_quiet(self, samples: np.ndarray) -> bool:
        threshold = self.options.silence_threshold_db
        if threshold is None or len(samples) == 0:
            return threshold is not None
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        return rms < 10 ** (threshold / 20)

    def _segments(self, result: DecodingResult, seek: int, size: int) -> tuple[list[Segment], int]:
        """The window's segments in recording time, and where the next window starts."""
        offset = seek / FRAMES_PER_SECOND
        window_seconds = size / FRAMES_PER_SECOND
        if result.complete or not result.spans:
            next_seek = seek + size
        else:
            # the last span is unfinished: restart at the closing timestamp of the one before
            last_time = result.spans[-1].tokens[-1] - self.begin
            next_seek = seek + last_time * FRAMES_PER_TIMESTAMP
        segments = []
        for span in result.spans:
            start = offset + span.start
            end = offset + (span.end if span.end is not None else window_seconds)
            text = self.tokenizer.decode(span.tokens)
            # no letter or digit: " ." and the like, which the model writes for hiss, not speech
            if start == end or not any(c.isalnum() for c in text):
                continue
            segments.append(Segment(
                start=round(start, 3),
                end=round(min(end, offset + window_seconds), 3),
                text=text,
                tokens=span.tokens,
                avg_logprob=result.avg_logprob,
                no_speech_prob=result.no_speech_prob,
                compression_ratio=result.compression_ratio,
                temperature=result.temperature,
            ))
        return segments, next_seek
