"""Turn a model package's ONNX graphs into validated TensorRT engines for this device.

What is decided here (and tested without a GPU): the optimisation profiles, which layers an
fp16 build keeps in fp32, which I/O tensors are fp16, the cache key, and the order of
operations -- reuse, build, load, validate, fall back to fp32 for a graph that drifts, mark
good. What needs the GPU (parse, build, deserialise) is one call each into ``seam``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence

from edgescribe.engines.errors import EdgescribeError
from edgescribe.engines.encoder_window import WINDOW_FRAMES
from edgescribe.engines.runtime import KV_TENSORS, cross_layer_shape, layer_input
from edgescribe.engines.tensorrt.engine_cache import ALIGNER, EngineBuildError, EngineCache, EngineKey, engine_keys
from edgescribe.engines.tensorrt.platform import DeviceFacts
from edgescribe.engines.tensorrt.seam import NetworkRecipe, Shape

log = logging.getLogger(__name__)

# LayerNorm's variance and Softmax's exponent sums overflow or lose everything in fp16 on long
# (1500-frame) sequences; Reduce covers a LayerNorm exported as ReduceMean/Pow/Sqrt.
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
# Tensors that only ever live on the device: fp16 halves the K/V cache's memory and bandwidth.
# mel in and logits out stay fp32 (the host converts nothing, and greedy picks see full precision).
# The decoder's per-layer K/V inputs (self_k.0, ...) are added by ``half_io``; the aligner reads
# the same per-layer cross K/V inputs from the encoder's buffers, and returns fp32 scores.
HALF_IO = ("cross_k", "cross_v", "new_k", "new_v")
# The aligner's opt point: a short utterance's tokens (its max is the text context).
ALIGNER_OPT_TOKENS = 64


@dataclass(frozen=True)
class KVInput:
    """One decoder input holding one layer's slice of a K/V buffer."""

    tensor: str  # the input's name in the graph and engine ("self_k.0", ...)
    source: str  # "self_k", "self_v", "cross_k" or "cross_v": the buffer of all layers it reads
    layer: int


def kv_inputs(layers: int) -> list[KVInput]:
    """The decoder's K/V inputs, one per tensor and layer."""
    return [KVInput(layer_input(name, layer), name, layer) for name in KV_TENSORS for layer in range(layers)]


def aligner_kv_inputs(alignment_heads: Sequence[tuple[int, int]]) -> list[str]:
    """The cross K/V inputs of the aligner graph, as engines/alignment_export.py's
    ``aligner_inputs`` names them (not imported: that module pulls in onnx, which the daemon
    never needs; tests/engines/test_tensorrt_builder.py checks the two agree)."""
    top = max(layer for layer, _ in alignment_heads)
    return [layer_input("cross_k", i) for i in range(top + 1)] + [layer_input("cross_v", i) for i in range(top)]


def half_io(dims) -> tuple[str, ...]:
    return HALF_IO + tuple(kv.tensor for kv in kv_inputs(dims.n_text_layer))


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    max_batch: int = 4
    max_prompt_tokens: int = 224
    workspace_mb: int = 1024

    def __post_init__(self):
        if self.precision not in ("fp16", "fp32"):
            raise ValueError(f"precision must be fp16 or fp32, not {self.precision!r}")
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.max_prompt_tokens < 1:
            raise ValueError("max_prompt_tokens must be at least 1")


@dataclass(frozen=True)
class ValidationOutcome:
    """What a validator reports: pass/fail, lines for logs and the good mark, graphs at fault."""

    passed: bool
    lines: Sequence[str]
    blamed: frozenset[str] = frozenset()


Validator = Callable[[], ValidationOutcome]


def profiles(dims, options: BuildOptions, alignment_heads: Optional[Sequence[tuple[int, int]]] = None,
             ) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
    """(min, opt, max) shapes per graph input: batch 1..max_batch, tokens 1..max_prompt_tokens,
    encoder windows from the shortest of engines/encoder_window.py up to 30 s.

    With ``alignment_heads`` (the package has an aligner graph) the aligner gets a profile too:
    batch 1 (word timing aligns one window at a time), the whole token sequence of a window
    (1..n_text_ctx, the decoder's positions) and the cross K/V of the same window range as
    the decoder's, whose buffers it reads.

    The opt point is batch 1, one token and the shortest window: one active speaker saying a
    short sentence, decoding token by token, is the common case, and it is the per-token step
    whose latency a listener notices. One profile spans every window length (TensorRT tunes
    its kernels at the opt point and runs the others correctly, if less tuned); a profile per
    window length would need a context per profile and is not measured on hardware.
    """
    if options.max_prompt_tokens > dims.n_text_ctx:
        raise ValueError(f"max_prompt_tokens {options.max_prompt_tokens} exceeds the model's text context {dims.n_text_ctx}")
    hi, n = options.max_batch, options.max_prompt_tokens
    ctx, state = dims.n_text_ctx, dims.n_text_state
    shortest, full = min(WINDOW_FRAMES), 2 * dims.n_audio_ctx

    def batched(shape: Callable[[int], Shape]) -> tuple[Shape, Shape, Shape]:
        return shape(1), shape(1), shape(hi)

    def windows(shape: Callable[[int, int], Shape], per_frame: int) -> tuple[Shape, Shape, Shape]:
        return shape(1, shortest // per_frame), shape(1, shortest // per_frame), shape(hi, full // per_frame)

    def kv_shape(kv: KVInput) -> tuple[Shape, Shape, Shape]:
        if kv.source.startswith("self"):
            return batched(lambda b: (b, ctx, state))
        return windows(lambda b, rows: cross_layer_shape(dims, b, rows), per_frame=2)  # a row per 2 frames

    decoder = {"tokens": ((1, 1), (1, 1), (hi, n)), "offset": batched(lambda b: (b,))}
    decoder |= {kv.tensor: kv_shape(kv) for kv in kv_inputs(dims.n_text_layer)}
    shapes = {"encoder": {"mel": windows(lambda b, frames: (b, dims.n_mels, frames), per_frame=1)}, "decoder": decoder}
    if alignment_heads:
        shortest_rows, full_rows = (cross_layer_shape(dims, 1, frames // 2) for frames in (shortest, full))
        cross = (shortest_rows, shortest_rows, full_rows)
        aligner = {"tokens": ((1, 1), (1, min(ALIGNER_OPT_TOKENS, ctx)), (1, ctx))}
        shapes[ALIGNER] = aligner | {name: cross for name in aligner_kv_inputs(alignment_heads)}
    return shapes


def expected_keys(model_sha256: str, facts: DeviceFacts, options: BuildOptions, dims,
                  alignment_heads: Optional[Sequence[tuple[int, int]]] = None) -> dict[str, EngineKey]:
    """The keys of every engine to build: encoder, decoder and, with ``alignment_heads``, the aligner."""
    return engine_keys(model_sha256, facts, options.precision, profiles(dims, options, alignment_heads))


def recipe(onnx_path, graph: str, dims, options: BuildOptions, precision: str,
           alignment_heads: Optional[Sequence[tuple[int, int]]] = None) -> NetworkRecipe:
    """``precision`` is this graph's compute precision; K/V I/O follows the *requested* one,
    so an encoder built fp16 and a decoder (or aligner) that fell back to fp32 still exchange
    fp16 K/V."""
    half = options.precision == "fp16"
    return NetworkRecipe(
        onnx_path=onnx_path,
        profile=profiles(dims, options, alignment_heads)[graph],
        fp16=precision == "fp16",
        fp32_layer_types=FP32_LAYER_TYPES if precision == "fp16" else (),
        half_io=half_io(dims) if half else (),
        workspace_bytes=options.workspace_mb << 20,
    )


class Ticker:
    """Logs 'still building X: N s' every ``interval`` seconds until the block ends.

    TensorRT prints nothing for minutes while it times tactics; a technician watching the
    install (or journalctl) needs to see that it is alive.
    """

    def __init__(self, what: str, interval: float = 15.0):
        self.what = what
        self.interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._tick, name=f"ticker-{what}", daemon=True)
        self.started = 0.0

    def __enter__(self) -> "Ticker":
        self.started = time.monotonic()
        log.info("building %s", self.what)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=self.interval + 1)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _tick(self) -> None:
        while not self._done.wait(self.interval):
            log.info("still building %s: %s elapsed", self.what, format_seconds(self.elapsed))


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, RuntimeError) else f"{type(error).__name__}: {text}"


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


class EngineBuilder:
    """Reuse, or build once, load, validate and mark good the engines of one package.

    ``keys`` names the engines (encoder, decoder and the aligner when the package has one).
    When the set as a whole is not current, only the engines that are not current on their own
    are rebuilt (an engine set from before the aligner had an engine gains just the aligner),
    and then the whole set is loaded, validated and marked good again.
    """

    def __init__(
        self,
        cache: EngineCache,
        trt,
        keys: Mapping[str, EngineKey],
        recipes: Callable[[str, str], NetworkRecipe],
        validate: Validator,
        tick_interval: float = 15.0,
    ):
        self.cache = cache
        self.trt = trt
        self.keys = dict(keys)
        self.graphs = tuple(self.keys)
        self.recipes = recipes  # (graph, compute precision) -> recipe
        self.validate = validate
        self.tick_interval = tick_interval

    def ensure(self, force: bool = False) -> bool:
        """Make the engines current. Returns True when something was built, False when up to date."""
        self.cache.prepare()
        graphs = self.graphs
        if force:
            reason = "rebuild forced (--force)"
        else:
            status = self.cache.status(self.keys)
            if status.ok:
                reason = self._load_problem()
            else:
                reason = status.reason
                graphs = tuple(g for g in self.graphs if not self.cache.status({g: self.keys[g]}).ok) or self.graphs
            if reason is None:
                log.info("TensorRT engines in %s are up to date; nothing to build", self.cache.dir)
                return False
        log.info("building TensorRT engines (%s): %s", ", ".join(graphs), reason)

        requested = self.keys["encoder"].precision
        self._build_and_load(graphs, requested)
        outcome = self._validated()
        # Each graph falls back to fp32 at most once, so this loop ends.
        still_fp16 = {g for g in self.graphs if self.cache.precision_of(g) == "fp16"}
        while not outcome.passed and outcome.blamed & still_fp16:
            graphs = [g for g in self.graphs if g in outcome.blamed & still_fp16]
            log.warning("fp16 %s drifts past tolerance; rebuilding it in fp32", " and ".join(graphs))
            self._build_and_load(graphs, "fp32")
            still_fp16 -= set(graphs)
            outcome = self._validated()
        if not outcome.passed:
            failed = [line for line in outcome.lines if "FAIL" in line] or list(outcome.lines)
            raise EngineBuildError(
                f"TensorRT engines in {self.cache.dir} disagree with ONNX Runtime: {'; '.join(failed)} "
                "(the engines are kept unmarked; the daemon will use ONNX Runtime)"
            )
        self.cache.mark_good(self.graphs, outcome.lines)
        log.info("TensorRT engines in %s validated and marked good", self.cache.dir)
        return True

    def _build_and_load(self, graphs: Iterable[str], precision: str) -> None:
        self._build(graphs, precision)
        # This was the one rebuild: an engine TensorRT cannot load now will not load later.
        problem = self._load_problem()
        if problem:
            raise EngineBuildError(f"{problem} (even right after rebuilding it)")

    def _build(self, graphs: Iterable[str], precision: str) -> None:
        for graph in graphs:
            key = self.keys[graph]
            with Ticker(f"{graph} engine ({precision})", self.tick_interval) as ticker:
                try:
                    built = self.trt.build(self.recipes(graph, precision), self.cache.read_timing_cache())
                # Anything TensorRT raises (its errors are untyped) ends as one line naming the file.
                except Exception as error:  # noqa: BLE001
                    raise EngineBuildError(f"building {self.cache.engine_path(graph)} failed: {_one_line(error)}") from None
                self.cache.write_engine(key, built.plan, ticker.elapsed, precision, built.fp32_layers)
                # Saved after every engine so an interrupted install keeps the timings it paid for.
                self.cache.write_timing_cache(built.timing_cache)
            log.info(
                "built %s in %s (%.1f MB, %d layers kept fp32)",
                self.cache.engine_path(graph), format_seconds(ticker.elapsed), len(built.plan) / 1e6, built.fp32_layers,
            )

    def _load_problem(self) -> Optional[str]:
        for graph in self.graphs:
            try:
                self.trt.deserialize(self.cache.load_plan(graph))
            except Exception as error:  # noqa: BLE001 (see _build)
                return f"{self.cache.engine_path(graph)} cannot be loaded: {_one_line(error)}"
        return None

    def _validated(self) -> ValidationOutcome:
        try:
            outcome = self.validate()
        except EdgescribeError:
            raise
        except Exception as error:  # noqa: BLE001: a GPU error while running the new engines
            raise EngineBuildError(f"running the new engines in {self.cache.dir} failed: {_one_line(error)}") from None
        for line in outcome.lines:
            log.info("validation: %s", line)
        return outcome


def build_hint(package_dir, engine_dir) -> str:
    """The command that fixes a missing or stale engine, for error messages."""
    out = engine_dir if engine_dir is not None else "ENGINE_DIR"
    return f"build them with: edgescribe build-engines --model {package_dir} --out {out}"
