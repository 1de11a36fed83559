#!/usr/bin/env python3
"""Where the time of the live path goes: a per-stage profile of N real-time streams.

Runs the set-up of scripts/benchmark_streaming.py (WAV source -> ring buffer -> Silero VAD
segmenter -> streaming transcriber -> one inference worker) for one stream count and wraps
the stages' functions at run time with thread-aware timers. Each wrapped call's time is
counted once, in its innermost stage (a stage's time excludes the wrapped stages it calls),
so per thread the stages add up to the thread's lifetime: what no wrapper covers is "other".

Reports, per stage: calls, wall seconds, share of the inference worker's time (and of its
busy time), share of the capture and segmenter threads' time, and the calling thread's CPU
seconds; then CPU seconds per audio second for the whole process. Wall time of Python
stages includes waiting for the GIL while other threads run; ONNX Runtime's intra-op
threads do part of each graph call's work and show up only in the process CPU line.

Not a test: run it on a quiet machine. Example:
    .venv/bin/python scripts/profile_streaming.py --model var/pkg/tiny.en --streams 4 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import psutil

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from benchmark_streaming import CORPUS, add_engine_arguments, files_for_stream, run_streams, short_ids, start_engines  # noqa: E402
from edgescribe.daemon import pipeline as pipeline_module  # noqa: E402
from edgescribe.daemon import scheduler as scheduler_module  # noqa: E402
from edgescribe.daemon.capture import CaptureStream, WavSource  # noqa: E402
from edgescribe.daemon.ring_buffer import RingBuffer  # noqa: E402
from edgescribe.daemon.segmenter import Segmenter  # noqa: E402
from edgescribe.daemon.streaming import StreamTranscriber  # noqa: E402
from edgescribe.daemon.vad import EnergyVad, SileroVad  # noqa: E402
from edgescribe.engines import beam_search as beam_module  # noqa: E402
from edgescribe.engines import decoding as decoding_module  # noqa: E402
from edgescribe.engines.errors import EdgescribeError  # noqa: E402
from edgescribe.engines.model import WhisperModel  # noqa: E402

# thread roles, from the names the daemon gives its threads
WORKER, SEGMENTER, CAPTURE = "inference worker", "segmenter threads", "capture threads"

# stages (what a row of the report counts)
OTHER = "other (Python not in a stage, lock waits)"
IDLE = "idle: waiting for work"
LOG_MEL = "log-mel"
MEL_PAD = "mel padding to the encoder window"
ENCODER = "encoder"
GRAPH_PROMPT = "decoder graph: prompt calls"
GRAPH_STEPS = "decoder graph: token steps"
RUNNER_PY = "decoder runner Python (feeds, KV-cache writes)"
FILTERS = "decoding loop: logit filters"
CHOICE = "decoding loop: token choice (argmax/sampling, log-probs)"
LOOP = "decoding loop: bookkeeping"
PROMPT = "decoding: prompt (no-speech, language)"
SETUP = "decoding: set-up and results (options, cache, text)"
BEAM = "beam search bookkeeping"
ALIGNER = "aligner graph"
WORD_TIMING = "word timing (DTW, host)"
SCHEDULER = "scheduler: queueing, batching"
DELIVER = "transcriber: handling outcomes (on_done)"
RING_GET = "ring buffer get"
AUDIO_WAIT = "waiting for audio (ring buffer empty)"
VAD_SILERO = "VAD (Silero)"
VAD_ENERGY = "VAD (energy)"
SEGMENTER_PY = "segmenter: framing, noise floor, utterances"
TRANSCRIBER = "transcriber: utterance updates"
SUBMIT = "scheduler: submit"
BACK_PRESSURE = "back-pressure: waiting to queue a final"
SOURCE_OPEN = "WAV source: open (load file)"
SOURCE_READ = "WAV source: read"
PACING = "pacing: waiting for real time"
RING_PUT = "ring buffer put, levels"

ORDER = {
    WORKER: [LOG_MEL, MEL_PAD, ENCODER, GRAPH_PROMPT, GRAPH_STEPS, RUNNER_PY, FILTERS, CHOICE, LOOP, PROMPT, SETUP,
             BEAM, ALIGNER, WORD_TIMING, SCHEDULER, DELIVER, SUBMIT],
    SEGMENTER: [VAD_SILERO, VAD_ENERGY, SEGMENTER_PY, TRANSCRIBER, SUBMIT, RING_GET],
    CAPTURE: [SOURCE_OPEN, SOURCE_READ, RING_PUT],
}
# a wait's stage follows the stage it waits in
WAITS = {OTHER: IDLE, RING_GET: AUDIO_WAIT, SUBMIT: BACK_PRESSURE, SOURCE_READ: PACING}


def role_of(thread_name: str) -> Optional[str]:
    if thread_name == "inference":
        return WORKER
    if thread_name.startswith("pipeline-"):
        return SEGMENTER
    if thread_name.startswith("capture-"):
        return CAPTURE
    return None


@dataclass
class StageTotal:
    calls: int = 0
    wall_s: float = 0.0  # exclusive of the wrapped stages called inside
    cpu_s: float = 0.0  # the calling thread's CPU, exclusive likewise


@dataclass
class ThreadRecord:
    role: str
    name: str
    native_id: int
    stages: dict[str, StageTotal] = field(default_factory=dict)
    wall_s: Optional[float] = None  # set when the thread's root function returns
    cpu_s: Optional[float] = None


Stage = Union[str, Callable[[list], str]]


class StageProfiler:
    """Wraps functions at run time; times each call on the profiled threads into its stage.

    A profiled thread is one whose root function (``wrap_root``) is running: it has a stack
    of open frames ``[stage, wall start, cpu start, child wall, child cpu]``. On any other
    thread a wrapper calls straight through.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.threads: list[ThreadRecord] = []
        self._patches: list[tuple[Any, str, Any, bool]] = []  # owner, name, original, was an instance attribute
        self.cpu_marks: dict[str, dict] = {}

    # -- patching

    def wrap(self, owner: Any, name: str, stage: Stage) -> None:
        """Time ``owner.name`` (a function defined on that class or module) as ``stage``."""
        original = self._original(owner, name)
        setattr(owner, name, self._timed(original, stage))
        self._patches.append((owner, name, original, False))

    def wrap_instance(self, obj: Any, name: str, stage: Stage) -> None:
        """Time one object's bound method (e.g. one ONNX Runtime session's ``run``)."""
        setattr(obj, name, self._timed(getattr(obj, name), stage))
        self._patches.append((obj, name, None, True))

    def wrap_after_init(self, cls: type, name: str, stage: Stage) -> None:
        """Time the callable each new ``cls`` object keeps as its attribute ``name``."""
        init = self._original(cls, "__init__")
        timed = self._timed

        def init_then_wrap(obj, *args, **kwargs):
            init(obj, *args, **kwargs)
            setattr(obj, name, timed(getattr(obj, name), stage))

        cls.__init__ = init_then_wrap
        self._patches.append((cls, "__init__", init, False))

    def wrap_root(self, owner: Any, name: str, root: Optional[Callable[[], None]] = None) -> None:
        """``owner.name`` is a thread's whole life (its target): profile the thread while it runs."""
        original = self._original(owner, name)

        def profiled(*args, **kwargs):
            thread = threading.current_thread()
            role = role_of(thread.name)
            if role is None:
                return original(*args, **kwargs)
            record = ThreadRecord(role, thread.name, threading.get_native_id())
            with self._lock:
                self.threads.append(record)
            if root is not None:
                root("start")
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            self._local.stack = [[OTHER, wall0, cpu0, 0.0, 0.0]]
            self._local.stages = record.stages
            try:
                return original(*args, **kwargs)
            finally:
                frame = self._local.stack.pop()
                self._local.stack = None
                wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
                self._add(record.stages, OTHER, wall - frame[3], cpu - frame[4])
                record.wall_s, record.cpu_s = wall, cpu
                if root is not None:
                    root("end")

        setattr(owner, name, profiled)
        self._patches.append((owner, name, original, False))

    @staticmethod
    def _original(owner: Any, name: str) -> Callable:
        if name not in vars(owner):
            raise LookupError(f"{getattr(owner, '__name__', owner)}.{name} is gone; update instrument() "
                              "in scripts/profile_streaming.py to the code's new names")
        return vars(owner)[name]

    def remove(self) -> None:
        for owner, name, original, instance in reversed(self._patches):
            if instance:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._patches.clear()

    # -- timing

    def _timed(self, original: Callable, stage: Stage) -> Callable:
        local = self._local

        def timed(*args, **kwargs):
            stack = getattr(local, "stack", None)
            if not stack:
                return original(*args, **kwargs)
            name = stage if isinstance(stage, str) else stage(stack)
            frame = [name, time.perf_counter(), time.thread_time(), 0.0, 0.0]
            stack.append(frame)
            try:
                return original(*args, **kwargs)
            finally:
                wall = time.perf_counter() - frame[1]
                cpu = time.thread_time() - frame[2]
                stack.pop()
                parent = stack[-1]
                parent[3] += wall
                parent[4] += cpu
                self._add(local.stages, name, wall - frame[3], cpu - frame[4])

        timed.__wrapped__ = original
        return timed

    @staticmethod
    def _add(stages: dict[str, StageTotal], name: str, wall: float, cpu: float) -> None:
        total = stages.get(name)
        if total is None:
            total = stages[name] = StageTotal()
        total.calls += 1
        total.wall_s += wall
        total.cpu_s += cpu

    def calls(self) -> int:
        return sum(t.calls for record in self.threads for t in record.stages.values())

    def overhead_per_call(self, calls: int = 20000) -> float:
        """Seconds one wrapped call adds on a profiled thread (measured here, on this thread)."""

        class Probe:
            def noop(self) -> None:
                pass

        probe = Probe()
        started = time.perf_counter()
        for _ in range(calls):
            probe.noop()
        bare = time.perf_counter() - started
        self.wrap(Probe, "noop", "probe")
        self._local.stack, self._local.stages = [[OTHER, 0.0, 0.0, 0.0, 0.0]], {}
        try:
            started = time.perf_counter()
            for _ in range(calls):
                probe.noop()
            wrapped = time.perf_counter() - started
        finally:
            self._local.stack = None
            owner, name, original, _ = self._patches.pop()
            setattr(owner, name, original)
        return max(0.0, wrapped - bare) / calls


def wait_stage(stack: list) -> str:
    parent = stack[-1][0]
    return WAITS.get(parent, f"waiting in {parent}")


def graph_stage(stack: list) -> str:
    return GRAPH_PROMPT if any(frame[0] == PROMPT for frame in stack) else GRAPH_STEPS


class CpuMarks:
    """Process and per-thread CPU at the start and end of the inference worker (the run)."""

    def __init__(self) -> None:
        self.marks: dict[str, tuple[float, float, dict[int, float]]] = {}

    def __call__(self, when: str) -> None:
        times = os.times()
        threads = {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
        self.marks[when] = (time.perf_counter(), times.user + times.system, threads)

    def complete(self) -> bool:
        return "start" in self.marks and "end" in self.marks

    def process_cpu_s(self) -> float:
        return self.marks["end"][1] - self.marks["start"][1]

    def wall_s(self) -> float:
        return self.marks["end"][0] - self.marks["start"][0]

    def native_threads_cpu_s(self, python_ids: set[int]) -> float:
        """CPU of threads Python did not start (ONNX Runtime's intra-op pools) over the run."""
        before, after = self.marks["start"][2], self.marks["end"][2]
        return sum(cpu - before.get(tid, 0.0) for tid, cpu in after.items() if tid not in python_ids)


def _always_wrapped() -> list[tuple[object, tuple[str, ...], str]]:
    """(owner, its functions, stage) for what every run wraps (names as in engines/ and daemon/ today)."""
    scheduler_class = scheduler_module.InferenceScheduler
    batch_decoder = decoding_module._BatchDecoder
    return [
        # inference worker: the scheduler
        (scheduler_class, ("_take_batch", "_partials_allowed", "_decode_batch", "_decode_by_length"), SCHEDULER),
        (scheduler_module, ("_decode_groups", "_options_for"), SCHEDULER),
        (scheduler_class, ("submit", "withdraw", "finals_waiting"), SUBMIT),  # called by the transcribers
        (scheduler_class, ("_time_words",), WORD_TIMING),
        (StreamTranscriber, ("_deliver",), DELIVER),  # bound into each transcriber's settings when built
        # model and decoding loop
        (WhisperModel, ("log_mel",), LOG_MEL),
        (WhisperModel, ("encoder_window",), MEL_PAD),
        (batch_decoder, ("__init__", "result"), SETUP),
        (batch_decoder, ("prompt",), PROMPT),
        (batch_decoder, ("run",), LOOP),
        (batch_decoder, ("filter_logits",), FILTERS),
        (batch_decoder, ("_choose",), CHOICE),
        (decoding_module, ("_chosen_logprobs",), CHOICE),
        (decoding_module, ("beam_decode",), BEAM),
        (beam_module._BeamSearch, ("run", "_advance", "_finalize", "_best"), BEAM),
        (beam_module, ("_log_softmax",), BEAM),
        # segmenter threads
        (RingBuffer, ("get",), RING_GET),
        (SileroVad, ("speech_prob",), VAD_SILERO),
        (EnergyVad, ("speech_prob",), VAD_ENERGY),
        (Segmenter, ("push", "flush"), SEGMENTER_PY),
        (StreamTranscriber, ("push",), TRANSCRIBER),
        # capture threads
        (WavSource, ("open",), SOURCE_OPEN),
        (WavSource, ("read",), SOURCE_READ),
        (CaptureStream, ("_queue",), RING_PUT),
    ]


def instrument(profiler: StageProfiler, model: WhisperModel, cpu: CpuMarks) -> None:
    """Wrap the live path's functions (names as in engines/ and daemon/ today)."""
    wrap = profiler.wrap
    # thread roots
    profiler.wrap_root(scheduler_module.InferenceScheduler, "_run", root=cpu)
    profiler.wrap_root(CaptureStream, "_run")
    profiler.wrap_root(pipeline_module, "consume")  # StreamPipeline takes it as its thread's target when built
    wrap(threading.Condition, "wait", wait_stage)  # Event.wait and wait_for wait here too
    for owner, names, stage in _always_wrapped():
        for name in names:
            wrap(owner, name, stage)
    # the scheduler keeps the decode function it was built with (engines.decoding.decode)
    profiler.wrap_after_init(scheduler_module.InferenceScheduler, "_decode", SETUP)

    # the runner: what this backend's class has
    runner = model.runner
    runner_class = type(runner)
    wrap(runner_class, "encode", ENCODER)
    session = getattr(runner, "_decoder", None)
    if session is not None and callable(getattr(session, "run", None)):
        wrap(runner_class, "decode", RUNNER_PY)
        profiler.wrap_instance(session, "run", graph_stage)
    else:  # a runner whose decode is the graph call itself (TensorRT)
        wrap(runner_class, "decode", graph_stage)
    for name in ("new_cache", "select_cross"):
        if name in vars(runner_class):
            wrap(runner_class, name, SETUP)
    if "reorder" in vars(runner_class):
        wrap(runner_class, "reorder", BEAM)
    if "align" in vars(runner_class):
        wrap(runner_class, "align", ALIGNER)


# -- the report --------------------------------------------------------------------------


def role_summary(profiler: StageProfiler, role: str) -> dict:
    """One role's stages summed over its threads; "other" is the remainder of the busy time."""
    records = [r for r in profiler.threads if r.role == role and r.wall_s is not None]
    wall = sum(r.wall_s for r in records)
    cpu = sum(r.cpu_s for r in records)
    stages: dict[str, StageTotal] = {}
    for record in records:
        for name, total in record.stages.items():
            into = stages.setdefault(name, StageTotal())
            into.calls += total.calls
            into.wall_s += total.wall_s
            into.cpu_s += total.cpu_s
    waits = {name for name in stages if name in WAITS.values() or name.startswith("waiting in ")}
    waited = sum(stages[name].wall_s for name in waits)
    busy = wall - waited
    named = [n for n in ORDER[role] if n in stages] + sorted(n for n in stages if n not in ORDER[role] and n not in waits
                                                             and n != OTHER)
    other = stages.get(OTHER, StageTotal())
    rows = [(name, stages[name]) for name in named]
    # the remainder, so the rows add up exactly (it equals what the wrappers counted as "other")
    remainder = busy - sum(t.wall_s for _, t in rows)
    rows.append((OTHER, StageTotal(other.calls, remainder, other.cpu_s)))
    rows += [(name, stages[name]) for name in sorted(waits)]
    return {
        "threads": len(records),
        "wall_s": wall,
        "busy_s": busy,
        "cpu_s": cpu,
        "stages": [
            {
                "stage": name,
                "calls": total.calls,
                "wall_s": total.wall_s,
                "cpu_s": total.cpu_s,
                "share": total.wall_s / wall if wall else 0.0,
                "share_of_busy": (total.wall_s / busy if busy else 0.0) if name not in waits else None,
                "wait": name in waits,
            }
            for name, total in rows
        ],
    }


def finite(value: float) -> Optional[float]:
    """JSON has no NaN: no finals, no latency."""
    return None if math.isnan(value) else value


def markdown_table(title: str, summary: dict) -> list[str]:
    lines = [f"### {title}", "",
             f"{summary['threads']} thread(s), {summary['wall_s']:.2f} s of thread time, "
             f"{summary['busy_s']:.2f} s busy (not waiting), {summary['cpu_s']:.2f} s CPU on these threads.", "",
             "| stage | calls | wall s | share of thread time | share of busy time | ms per call | thread CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in summary["stages"]:
        busy = "" if row["share_of_busy"] is None else f"{100 * row['share_of_busy']:.1f} %"
        per_call = f"{1000 * row['wall_s'] / row['calls']:.3f}" if row["calls"] and row["stage"] != OTHER else ""
        lines.append(f"| {row['stage']} | {row['calls']} | {row['wall_s']:.3f} | {100 * row['share']:.1f} % | {busy} "
                     f"| {per_call} | {row['cpu_s']:.3f} |")
    total = sum(row["wall_s"] for row in summary["stages"])
    lines.append(f"| **total** | | {total:.3f} | {100 * total / summary['wall_s'] if summary['wall_s'] else 0:.1f} % "
                 f"| | | {sum(row['cpu_s'] for row in summary['stages']):.3f} |")
    return lines


def report(args, profiler: StageProfiler, cpu: CpuMarks, result, model, overhead_s: float) -> tuple[str, dict]:
    roles = {role: role_summary(profiler, role) for role in (WORKER, SEGMENTER, CAPTURE)}
    audio_per_stream = [len(s.samples) / 16000 for s in result.spoken.values()]
    audio_s = sum(audio_per_stream)
    python_ids = {r.native_id for r in profiler.threads} | {threading.main_thread().native_id}
    process_cpu = cpu.process_cpu_s()
    native_cpu = cpu.native_threads_cpu_s(python_ids)
    run_wall = cpu.wall_s()
    by_thread = {
        WORKER: roles[WORKER]["cpu_s"],
        "ONNX Runtime intra-op threads (and other native threads)": native_cpu,
        SEGMENTER: roles[SEGMENTER]["cpu_s"],
        CAPTURE: roles[CAPTURE]["cpu_s"],
    }
    by_thread["main thread and the rest"] = process_cpu - sum(by_thread.values())
    calls = profiler.calls()
    latencies = sorted(result.latencies)
    data = {
        "config": {"model": str(args.model), "name": model.name, "backend": model.runner.name, "threads": args.threads,
                   "streams": args.streams, "seconds": args.seconds, "encoder_window": args.encoder_window,
                   "partials": not args.no_partials, "max_batch": args.max_batch},
        "run": {"wall_s": run_wall, "audio_s": audio_s, "audio_per_stream_s": max(audio_per_stream),
                "finals": result.finals, "partials": result.partials, "gaps": result.gaps, "lost_s": result.lost_s,
                "latency_p50_s": finite(result.percentile(0.5)), "latency_p95_s": finite(result.percentile(0.95)),
                "latency_max_s": latencies[-1] if latencies else None,
                "batch_sizes": {str(k): v for k, v in sorted(result.batch_sizes.items())}},
        "roles": roles,
        "cpu": {"process_s": process_cpu, "per_audio_s": process_cpu / audio_s if audio_s else None,
                "cores_busy": process_cpu / run_wall if run_wall else None, "by_thread_s": by_thread,
                "worker_busy_per_audio_s": roles[WORKER]["busy_s"] / audio_s if audio_s else None},
        "profiler": {"wrapped_calls": calls, "overhead_per_call_us": 1e6 * overhead_s,
                     "overhead_estimate_s": calls * overhead_s},
    }

    c = data["config"]
    lines = [f"## Live-path profile: {c['streams']} stream(s)", "",
             f"Model {model.name} on {model.runner.name}, {args.threads} threads, max batch {args.max_batch}, "
             f"partials {'on' if c['partials'] else 'off'}, {args.encoder_window} encoder windows; "
             f"{max(audio_per_stream):.0f} s of corpus speech per stream at real-time pace, run {run_wall:.1f} s.", "",
             f"Finals {result.finals}, partials {result.partials}, gaps {result.gaps} ({result.lost_s:.1f} s lost), "
             f"final latency p50 {result.percentile(0.5):.2f} s, p95 {result.percentile(0.95):.2f} s; decode batches "
             + (", ".join(f"{size}: {n}" for size, n in sorted(result.batch_sizes.items())) or "none") + ".", ""]
    lines += markdown_table("Inference worker", roles[WORKER]) + [""]
    lines += markdown_table(f"Segmenter threads (ring buffer -> VAD -> segmenter -> transcriber), all {args.streams}",
                            roles[SEGMENTER]) + [""]
    lines += markdown_table(f"Capture threads (WAV source -> ring buffer), all {args.streams}", roles[CAPTURE]) + [""]
    lines += ["### CPU", "",
              "| measure | value |", "|---|---:|",
              f"| process CPU over the run | {process_cpu:.2f} s |",
              f"| audio (all streams) | {audio_s:.1f} s |",
              f"| **CPU seconds per audio second** | **{data['cpu']['per_audio_s']:.3f}** |",
              f"| cores busy on average | {data['cpu']['cores_busy']:.2f} |",
              f"| worker busy seconds per audio second | {data['cpu']['worker_busy_per_audio_s']:.3f} |"]
    lines += [f"| CPU s: {name} | {seconds:.2f} |" for name, seconds in by_thread.items()]
    lines += ["", f"Stage times exclude the wrapped stages they call; per thread they add up to its lifetime. "
                  f"Profiler: {calls} wrapped calls at about {1e6 * overhead_s:.1f} µs each, "
                  f"about {calls * overhead_s:.2f} s in all, inside the rows above. Wall time of Python stages "
                  "includes GIL waits; ONNX Runtime's own threads (spinning when idle) appear only in the CPU table."]
    return "\n".join(lines), data


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_engine_arguments(parser)
    parser.add_argument("--streams", type=int, default=1, help="simultaneous real-time streams")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per stream (whole corpus files, so a little more)")
    parser.add_argument("--json", type=Path, default=None, help="also write the profile as JSON to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.streams < 1:
        parser.error("--streams must be 1 or more")
    if args.seconds <= 0:
        parser.error("--seconds must be above 0")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not (CORPUS / "en" / "transcripts.tsv").is_file():
        print(f"error: corpus not found at {CORPUS} (en/transcripts.tsv)", file=sys.stderr)
        return 1

    try:
        model, engines = start_engines(args)
    except EdgescribeError as error:
        print(f"error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 1)
    ids = short_ids(CORPUS)
    files = [files_for_stream(ids, i, args.streams, args.seconds, CORPUS) for i in range(args.streams)]
    profiler, cpu = StageProfiler(), CpuMarks()
    overhead = profiler.overhead_per_call()
    try:
        instrument(profiler, model, cpu)
    except LookupError as error:
        profiler.remove()
        engines.stop()
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 1
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_streams(engines, files, args, Path(tmp))
    finally:
        profiler.remove()
        engines.stop()
    if not cpu.complete() or any(r.wall_s is None for r in profiler.threads):
        print("error: a profiled thread did not finish; no profile", file=sys.stderr)
        return 1
    text, data = report(args, profiler, cpu, result, model, overhead)
    print(text)
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(data, indent=2) + "\n")
        except OSError as error:
            print(f"error: cannot write {args.json}: {error.strerror}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
