"""model/switch's TensorRT step (daemon/engine_rollout.py): which backend the new package gets,
and the build's progress as schema-valid ``model`` events.

TensorRT cannot run here, so the branch where it is absent runs for real (``seam.load`` fails
as it does on any machine without JetPack), and the build function is handed in where
TensorRT would be: it sleeps like a long build, or fails like one.
"""

from __future__ import annotations

import time

import pytest

from edgescribe.daemon.config.engine import EngineConfig
from edgescribe.daemon.engine_rollout import EngineBuildRefused, EngineRollout
from edgescribe.daemon.publisher import event_payload
from edgescribe.engines.package import ModelPackage
from edgescribe.engines.tensorrt.builder import BuildOptions
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixture)
from tests.fixtures.mosquitto import validate_payload

GPU = object()  # what seam.load() returns on a Jetson, as far as the rollout is concerned


def actions(events) -> list[str]:
    for seq, event in enumerate(events, start=1):
        validate_payload(event_payload(event, "test-press", seq), "event")
    return [event.action for event in events]


def test_without_tensorrt_nothing_is_built_and_onnx_runtime_serves(tiny_en_package, tmp_path):
    events, calls = [], []
    rollout = EngineRollout(events.append, build=lambda *args, **kwargs: calls.append(args))
    plan = rollout.prepare(ModelPackage.load(tiny_en_package.dir), EngineConfig(engine_dir=tmp_path))
    assert plan.backend == "onnxruntime" and "TensorRT is not installed" in plan.detail, plan
    plan = rollout.prepare(ModelPackage.load(tiny_en_package.dir),
                           EngineConfig(backend="onnxruntime", engine_dir=tmp_path))
    assert plan.detail == "engine.backend is onnxruntime; no TensorRT engines built"
    assert calls == [] and events == []


def test_a_build_reports_progress_and_gets_the_engine_settings(tiny_en_package, tmp_path):
    events, calls = [], []

    def build(package, engine_dir, options, trt, threads=0):
        calls.append((package.dir, engine_dir, options, trt, threads))
        time.sleep(0.55)
        return True

    rollout = EngineRollout(events.append, build=build, load_tensorrt=lambda: GPU, tick_s=0.2)
    engine = EngineConfig(backend="auto", engine_dir=tmp_path, precision="fp32", max_batch=2, threads=3)
    plan = rollout.prepare(ModelPackage.load(tiny_en_package.dir), engine)
    assert calls == [(tiny_en_package.dir, tmp_path, BuildOptions("fp32", 2, engine.max_prompt_tokens,
                                                                  engine.workspace_mb), GPU, 3)]
    seen = actions(events)
    assert seen[0] == "build_started" and seen[-1] == "build_done" and seen.count("build_progress") == 2, seen
    assert plan.backend == "tensorrt" and str(tmp_path / tiny_en_package.dir.name) in plan.detail, plan
    assert all(e.model == tiny_en_package.dir.name and e.backend == "tensorrt" for e in events)
    # engines already current: build_engines returns False, nothing to wait for
    events.clear()
    plan = EngineRollout(events.append, build=lambda *a, **k: False, load_tensorrt=lambda: GPU).prepare(
        ModelPackage.load(tiny_en_package.dir), engine)
    assert actions(events) == ["build_started", "build_done"] and plan.detail.startswith("TensorRT engines up to date")


def test_a_failed_build_refuses_the_switch_only_where_tensorrt_is_required(tiny_en_package, tmp_path):
    def build(*args, **kwargs):
        raise RuntimeError("decoder engine: fp32 drifts past tolerance\n  (max |logit diff| 3.1)")

    events = []
    rollout = EngineRollout(events.append, build=build, load_tensorrt=lambda: GPU)
    package = ModelPackage.load(tiny_en_package.dir)
    with pytest.raises(EngineBuildRefused, match="^TensorRT engine build failed: decoder engine: fp32 drifts past "
                                                 r"tolerance \(max \|logit diff\| 3.1\)$"):
        rollout.prepare(package, EngineConfig(backend="tensorrt", engine_dir=tmp_path))
    plan = rollout.prepare(package, EngineConfig(backend="auto", engine_dir=tmp_path))
    assert plan.backend == "onnxruntime" and "build failed, running on ONNX Runtime" in plan.detail
    assert actions(events) == ["build_started", "build_failed"] * 2
    assert "drifts past tolerance" in events[-1].detail
