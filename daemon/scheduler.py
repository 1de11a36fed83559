"""One inference worker for every stream: batches ready windows through one loaded model,
and an engine manager that swaps the serving model between utterances.

Why one worker: the device has one accelerator (or, on CPU, a handful of cores); running
streams side by side in their own threads would only make them compete. Batching the
windows that are ready at the same moment amortises the encoder and every decoder step
over all streams, which is what lets one Orin serve several microphones.

Order of work: finals before partials (a final is what applications act on; a partial
that waits is simply replaced by a newer one), and partials get at most ``partial_share``
of the worker's time: a decode cannot be interrupted, so a final that arrives while a
partial runs waits for it, and with several streams talking the partials alone would keep
the worker busy all the time. Finals are never dropped: when too many
wait, ``submit`` blocks the caller, so back-pressure reaches the capture ring buffer,
where lost audio is counted and reported as a gap instead of growing memory here.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgescribe.daemon.events import ModelEvent
from edgescribe.engines.audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES
from edgescribe.engines.backend import load_model
from edgescribe.engines.audio import SAMPLE_RATE
from edgescribe.engines.decoding import DecodingOptions, continuation, decode
from edgescribe.engines.encoder_window import DEFAULT_ENCODER_WINDOW, EncoderWindow
from edgescribe.engines.errors import ModelPackageError
from edgescribe.engines.word_timing import SpanTokens, Word, time_words

log = logging.getLogger(__name__)

# Partials may use at most this share of the worker's time over the last PARTIAL_WINDOW_S.
# Measured with tiny.en on 2 CPU cores (scripts/benchmark_streaming.py, docs/benchmarks.md):
# at 4 streams partials made two-thirds of the decode calls, and the final latency p95 was
# 1.5-2.4 s with them against 0.55 s without any. One stream's partials use well under half
# the worker, so a single microphone sees every partial it saw before.
PARTIAL_SHARE = 0.5
PARTIAL_WINDOW_S = 10.0


@dataclass
class ModelLease:
    """One utterance's claim on a model: every decode of that utterance uses the same model,
    so a switch never mixes two models' hypotheses inside one utterance."""

    model: Any  # engines.model.WhisperModel
    _manager: "EngineManager"
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self)


class EngineManager:
    """Holds the serving model and, during a switch, the one it replaces (at most two).

    The small model serves from start-up; the larger one loads in a background thread and
    becomes the serving model as soon as it is ready. Utterances that already hold a lease
    finish on the old model; new utterances get the new one. The old model is freed when
    its last lease is released.
    """

    def __init__(
        self,
        load: Callable[[Path], Any],
        serving: Path,
        upgrade: Optional[Path] = None,
        emit: Callable[[Any], None] = lambda event: None,
    ):
        self._load = load
        self._serving_path = Path(serving)
        self._upgrade_path = Path(upgrade) if upgrade else None
        self._emit = emit
        self._lock = threading.Lock()
        self._current: Any = None
        self._retiring: Any = None
        self._leases: collections.Counter = collections.Counter()  # id(model) -> open leases
        self._loader: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self.switched = threading.Event()  # set once the upgrade serves (or failed to load)

    @classmethod
    def from_config(cls, models, engine, emit: Callable[[Any], None]) -> "EngineManager":
        """The manager the daemon runs: ``models`` (ModelsConfig) says which packages,
        ``engine`` (EngineConfig) how to run them."""

        def load(package_dir: Path) -> Any:
            return load_model(package_dir, backend=engine.backend, engine_dir=engine.engine_dir, threads=engine.threads)

        return cls(load, models.serving, models.upgrade, emit)

    def start(self) -> None:
        """Load the serving model now (the caller waits for it) and the upgrade in the background."""
        self._current = self._load(self._serving_path)
        self._emit(self._model_event("loaded", self._current, f"serving {self._serving_path}"))
        if self._upgrade_path is None:
            self.switched.set()
            return
        self._loader = threading.Thread(target=self._load_upgrade, name="model-upgrade", daemon=True)
        self._loader.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        if self._loader is not None:
            self._loader.join(timeout)

    @property
    def current(self) -> Any:
        with self._lock:
            return self._current

    def loaded_models(self) -> list[Any]:
        with self._lock:
            return [m for m in (self._current, self._retiring) if m is not None]

    def lease(self) -> ModelLease:
        with self._lock:
            if self._current is None:
                raise RuntimeError("EngineManager.lease() before start()")
            self._leases[id(self._current)] += 1
            return ModelLease(self._current, self)

    def _release(self, lease: ModelLease) -> None:
        with self._lock:
            key = id(lease.model)
            self._leases[key] -= 1
            if self._leases[key] <= 0:
                del self._leases[key]
                if self._retiring is lease.model:
                    log.info("model %s: last utterance finished, releasing it", lease.model.name)
                    self._retiring = None

    def _load_upgrade(self) -> None:
        started = time.monotonic()
        try:
            model = self._load(self._upgrade_path)
        except Exception as error:  # keep serving the small model; say why once
            log.error("model upgrade %s failed to load, staying on %s: %s", self._upgrade_path, self._current.name, error)
            self.switched.set()
            return
        if self._stopping.is_set():
            return
        self._serve(model, self._upgrade_path, started)
        self.switched.set()

    def switch(self, package_dir: Path) -> Any:
        """Load ``package_dir`` (on the caller's thread) and serve it from the next utterance on.
        If it fails to load, the serving model stays and the error is raised."""
        started = time.monotonic()
        model = self._load(Path(package_dir))
        self._serve(model, Path(package_dir), started)
        return model

    def _serve(self, model: Any, package_dir: Path, started: float) -> None:
        with self._lock:
            old = self._current
            self._current = model
            # the old model stays only while utterances that started on it are still open
            self._retiring = old if self._leases[id(old)] > 0 else None
        log.info("switched serving model %s -> %s (loaded in %.1f s)", old.name, model.name, time.monotonic() - started)
        self._emit(self._model_event("switched", model, f"from {old.name}; new utterances use {package_dir}"))

    @staticmethod
    def _model_event(action: str, model: Any, detail: str) -> ModelEvent:
        return ModelEvent(action=action, model=model.name, backend=model.runner.name, detail=detail, wall_time=time.time())


@dataclass
class DecodeRequest:
    """Audio windows of one utterance to decode with one set of options."""

    key: str  # the utterance id: a newer partial with the same key replaces a queued one
    final: bool
    windows: list[np.ndarray]  # f32 16-kHz samples, each at most 30 s
    lease: ModelLease
    on_done: Callable[["DecodeOutcome"], None]  # called on the worker thread
    temperature: float = 0.0
    language: Optional[str] = None  # None: detect
    task: str = "transcribe"
    prompt: str = ""
    beam_size: int = 1  # > 1: beam search (at temperature 0 only)
    # the window the encoder reads (engines/encoder_window.py); None: the scheduler's setting.
    # A final's retry asks for "full" after a short window failed (engines/fallback.py).
    encoder_window: Optional[EncoderWindow] = None
    word_timestamps: bool = False  # finals only: time each window's words (DecodeOutcome.words)
    # A final decoded after its context (daemon/streaming.py CONTEXT_AFTER_GAP_S): the first
    # ``context_samples`` of its one window are earlier audio, and ``prefix``, their text, is
    # forced as the start of the transcript. The outcome holds only what follows: text and
    # scores of the continuation, word times from the start of the audio after the context.
    prefix: str = ""
    context_samples: int = 0
    tag: Any = None  # the submitter's own note, handed back untouched with the outcome
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class DecodeOutcome:
    request: DecodeRequest
    results: list[Any]  # engines.decoding.DecodingResult, one per window; empty on error
    model: str
    backend: str
    batch_size: int  # windows in the decode call that produced this outcome
    error: Optional[BaseException] = None
    # with request.word_timestamps: per window (as results), its words with times in seconds
    # from the window's start, or None where they could not be timed (no aligner)
    words: list[Optional[list[Word]]] = field(default_factory=list)
    # per window (as results): the mel frames of the encoder window it was decoded in
    window_frames: list[int] = field(default_factory=list)


class InferenceScheduler:
    """The single inference worker thread and its two queues (finals, partials)."""

    def __init__(
        self,
        max_batch: int = 4,
        max_pending_finals: int = 32,
        decode: Callable = decode,
        partial_share: float = PARTIAL_SHARE,
        encoder_window: EncoderWindow = DEFAULT_ENCODER_WINDOW,
    ):
        self.max_batch = max_batch
        self.encoder_window = encoder_window  # engines/encoder_window.py
        self.max_pending_finals = max_pending_finals
        self.partial_share = partial_share  # 1.0: partials as often as the queue has them
        self._decode = decode  # engines.decoding.decode, or a caller's wrapper around it
        self._finals: collections.deque[DecodeRequest] = collections.deque()
        self._partials: "collections.OrderedDict[str, DecodeRequest]" = collections.OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._untimed_models: set[str] = set()  # models that cannot time words, already logged
        self._busy = False  # a batch is being decoded right now
        self._partial_time: collections.deque[tuple[float, float]] = collections.deque()  # (end, seconds)
        # statistics for health reports; written by the worker under self._cond
        self.batch_sizes: collections.Counter = collections.Counter()  # windows per decode call -> calls
        self.batches = 0  # decode calls so far
        self.busy_seconds = 0.0  # time spent preparing and decoding batches (real-time factor = this / audio)

    # -- submitting (any thread) --------------------------------------------------------

    def submit(self, request: DecodeRequest, urgent: bool = False, timeout: Optional[float] = None) -> bool:
        """Queue a request. A partial replaces a queued partial of the same utterance.

        A final waits while ``max_pending_finals`` are queued (back-pressure). ``urgent``
        finals go to the front and never wait: they are queued by the inference worker itself
        (a fallback retry, or a final that waited for its stream's previous one), which must
        not block on the queue it empties. Returns False if stopped or timed out.
        """
        with self._cond:
            if request.final:
                self._partials.pop(request.key, None)  # a final makes its partials stale
                if urgent:
                    self._finals.appendleft(request)
                else:
                    if not self._cond.wait_for(
                        lambda: self._stopping or len(self._finals) < self.max_pending_finals, timeout
                    ):
                        return False
                    if self._stopping:
                        return False
                    self._finals.append(request)
            else:
                if self._stopping:
                    return False
                self._partials.pop(request.key, None)
                self._partials[request.key] = request
            self._cond.notify_all()
            return True

    def withdraw(self, request: DecodeRequest) -> bool:
        """Take a queued final back (a speculative final that resumed speech made stale).

        Returns False when it is no longer queued: it is being decoded or already done, and
        its ``on_done`` still runs.
        """
        with self._cond:
            for index, queued in enumerate(self._finals):
                if queued is request:  # identity: dataclass equality would compare the audio
                    del self._finals[index]
                    self._cond.notify_all()
                    return True
            return False

    def finals_waiting(self) -> int:
        with self._cond:
            return len(self._finals)

    def pending(self) -> tuple[int, int]:
        """(finals, partials) queued, for health reports."""
        with self._cond:
            return len(self._finals), len(self._partials)

    # -- the worker -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0, drain: bool = True) -> None:
        """Stop the worker; with ``drain`` the queued finals are decoded first."""
        if drain:
            self.wait_idle(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._finals and not self._partials and not self._busy,
                max(0.0, deadline - time.monotonic()),
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._finals or (self._partials and self._partials_allowed())):
                    # over budget, the queued partials wait for time to pass (or are replaced)
                    self._cond.wait(0.05 if self._partials else None)
                if self._stopping:
                    return
                batch = self._take_batch(with_partials=self._partials_allowed())
                self._busy = True
                self._cond.notify_all()  # room for a blocked final submitter
            try:
                for group in _decode_groups(batch):
                    started = time.monotonic()
                    self._decode_batch(group)
                    with self._cond:
                        ended = time.monotonic()
                        self.busy_seconds += ended - started
                        self.batches += 1
                        self.batch_sizes[sum(len(request.windows) for request in group)] += 1
                        if not group[0].final:
                            self._partial_time.append((ended, ended - started))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _partials_allowed(self) -> bool:
        """Whether partials used less than their share of the worker over the last window."""
        now = time.monotonic()
        while self._partial_time and self._partial_time[0][0] < now - PARTIAL_WINDOW_S:
            self._partial_time.popleft()
        used = sum(seconds for _end, seconds in self._partial_time)
        return used < self.partial_share * PARTIAL_WINDOW_S

    def _take_batch(self, with_partials: bool) -> list[DecodeRequest]:
        """Finals first, then (if ``with_partials``) partials, all for the same model, up to
        max_batch windows.

        The first request always goes in even if it alone has more windows than max_batch
        (an over-long utterance), so nothing can get stuck.
        """
        first = self._finals[0] if self._finals else next(iter(self._partials.values()))
        model = first.lease.model
        batch: list[DecodeRequest] = []
        windows = 0

        def fits(request: DecodeRequest) -> bool:
            return request.lease.model is model and (not batch or windows + len(request.windows) <= self.max_batch)

        for request in list(self._finals):
            if fits(request):
                self._finals.remove(request)
                batch.append(request)
                windows += len(request.windows)
        for key, request in list(self._partials.items()) if with_partials else ():
            if fits(request):
                del self._partials[key]
                batch.append(request)
                windows += len(request.windows)
        return batch

    def _decode_batch(self, batch: list[DecodeRequest]) -> None:
        """Decode one batch and hand every request its outcome."""
        model = batch[0].lease.model
        mels, options = [], []
        for request in batch:
            for window in request.windows:
                mels.append(model.encoder_window(model.log_mel(window), request.encoder_window or self.encoder_window))
                options.append(_options_for(request, model))
        backend = model.runner.name
        # a final with word timestamps is always alone in its batch (_decode_groups)
        timed = batch[0] if len(batch) == 1 and batch[0].final and batch[0].word_timestamps else None
        words: list[Optional[list[Word]]] = []
        try:
            results, words = self._decode_by_length(model, mels, options, timed)
            error = None
        except Exception as failure:  # one bad batch must not kill the worker
            log.exception("decoding a batch of %d windows with %s failed", len(mels), model.name)
            results, error = [], failure
        position = 0
        for request in batch:
            count = len(request.windows)
            mine = results[position : position + count] if error is None else []
            frames = [mel.shape[-1] for mel in mels[position : position + count]] if error is None else []
            position += count
            outcome = DecodeOutcome(request, mine, model.name, backend, len(mels), error,
                                    words if request is timed and error is None else [], frames)
            try:
                request.on_done(outcome)
            except Exception:
                log.exception("handling the result for %s failed", request.key)

    def _time_words(self, model: Any, cross: Any, result: Any, frames: int) -> Optional[list[Word]]:
        """The window's words (seconds from its start), or None when they cannot be timed; the
        final's text never depends on this."""
        if not result.tokens:
            return []
        span = SpanTokens(0.0, frames / FRAMES_PER_SECOND, list(result.tokens), list(result.token_logprobs))
        try:
            timed, _ = time_words(model, cross, [span], 0.0, frames, result.language, 0.0)
        except ModelPackageError as error:
            if model.name not in self._untimed_models:
                self._untimed_models.add(model.name)
                log.warning("transcription.word_timestamps: finals of %s go out without words: %s", model.name, error)
            return None
        except Exception:  # a timing failure must not cost the final its text
            log.exception("timing the words of a final with %s failed; it goes out without words", model.name)
            return None
        return list(timed[0].words)

    def _decode_by_length(self, model: Any, mels: list[np.ndarray], options: list[DecodingOptions],
                          timed: Optional[DecodeRequest] = None) -> tuple[list[Any], list[Optional[list[Word]]]]:
        """Decode windows of one length together (one encoder call takes one shape); results in
        the order of ``mels``. With ``timed`` (a final with word timestamps, alone in its batch)
        each window's words are also timed over its own encoder output (the same encoder input,
        so the same text); otherwise the words list is empty."""
        by_length: dict[int, list[int]] = collections.defaultdict(list)
        for index, mel in enumerate(mels):
            by_length[mel.shape[-1]].append(index)
        results: list[Any] = [None] * len(mels)
        words: list[Optional[list[Word]]] = [None] * len(mels) if timed is not None else []
        for indices in by_length.values():
            stacked = np.ascontiguousarray(np.stack([mels[i] for i in indices]), dtype=np.float32)
            chosen = [options[i] for i in indices]
            if timed is None:
                decoded = self._decode(model, stacked, chosen)
            else:
                encoded = model.runner.encode(stacked)
                decoded = self._decode(model, stacked, chosen, encoded=encoded)
            for row, (index, result) in enumerate(zip(indices, decoded)):
                forced = len(options[index].prefix)
                results[index] = continuation(result, forced, model.tokenizer) if forced else result
                if timed is not None:
                    # real frames only: the rest of the encoder window is padding
                    frames = min(len(timed.windows[index]) // HOP_LENGTH, N_FRAMES)
                    cross = model.runner.select_cross(encoded, np.array([row]))
                    # the forced prefix is timed too (it is what the context audio says), then left out
                    timed_words = self._time_words(model, cross, result, frames)
                    words[index] = _after_context(timed_words, model.tokenizer.decode(result.tokens[:forced]),
                                                  timed.context_samples / SAMPLE_RATE) if forced else timed_words
        return results, words


def _after_context(words: Optional[list[Word]], prefix: str, context_s: float) -> Optional[list[Word]]:
    """The words after those that spell ``prefix``, times moved to the audio after the context;
    None when the words do not split there (the final then goes out untimed)."""
    if words is None:
        return None
    spelled, target = "", prefix.replace(" ", "")
    for count, word in enumerate(words):
        if spelled == target:
            return [replace(w, start=max(0.0, w.start - context_s), end=max(0.0, w.end - context_s))
                    for w in words[count:]]
        spelled += word.word.replace(" ", "")
    return [] if spelled == target else None


def _decode_groups(batch: list[DecodeRequest]) -> list[list[DecodeRequest]]:
    """Each final alone, then the partials together.

    A final's text must be a function of its own audio (issue 15), but a batch's results are
    not independent of its other items: the int8 decoder quantizes activations with one scale
    per tensor, computed over the whole batch, so batching moves its rounding and can change
    words (the float32 graphs: none). The int8 encoder's scales are per frame, so a window's
    cross K/V is its own either way. Partials are only previews, so they
    keep the throughput of batching.
    """
    finals = [[request] for request in batch if request.final]
    partials = [request for request in batch if not request.final]
    return finals + ([partials] if partials else [])


def _options_for(request: DecodeRequest, model: Any) -> DecodingOptions:
    multilingual = model.is_multilingual
    return DecodingOptions(
        task=request.task if multilingual else "transcribe",
        language=request.language if multilingual else "en",
        temperature=request.temperature,
        prompt=tuple(model.tokenizer.encode_prompt(request.prompt)) if request.prompt else (),
        prefix=tuple(model.tokenizer.encode_prompt(request.prefix)) if request.prefix else (),
        without_timestamps=True,  # a live utterance is one segment; its times come from the segmenter
        seed=0,  # fallback sampling is reproducible, as in the offline pipeline
        beam_size=request.beam_size,
    )
