"""Engine cache: key composition, sidecars, atomic writes and the good mark (no GPU involved)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from edgescribe.engines.files import file_sha256
from edgescribe.engines.tensorrt import engine_cache
from edgescribe.engines.tensorrt.engine_cache import (
    DEVICE_AND_MODEL_FIELDS,
    EngineCache,
    EngineKey,
    atomic_write,
    model_sha256,
)

PLAN = b"serialised-engine-" * 1000


def make_key(graph: str = "encoder", **changes) -> EngineKey:
    key = EngineKey(
        graph=graph,
        model_sha256="a" * 64,
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        l4t="R36.4.3",
        precision="fp16",
        profile=(("mel", (1, 80, 3000), (1, 80, 3000), (4, 80, 3000)),),
    )
    return dataclasses.replace(key, **changes)


CHANGES = {
    "graph": "decoder",
    "model_sha256": "b" * 64,
    "tensorrt_version": "10.3.1",
    "gpu_name": "NVIDIA GeForce RTX 4090",
    "compute_capability": "8.9",
    "l4t": "R36.4.0",
    "precision": "fp32",
    "profile": (("mel", (1, 80, 3000), (1, 80, 3000), (8, 80, 3000)),),
    "cache_format": engine_cache.CACHE_FORMAT_VERSION + 1,
}


def test_every_key_field_is_covered_by_the_change_table():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(EngineKey)}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_each_key_field_changes_the_digest_and_is_named_in_the_mismatch(field):
    base = make_key()
    changed = dataclasses.replace(base, **{field: CHANGES[field]})
    assert changed.digest() != base.digest()
    differences = changed.mismatches(base)
    assert len(differences) == 1 and differences[0].startswith(f"{field}: built for ")


def test_key_round_trips_through_json():
    key = make_key()
    assert EngineKey.from_json(json.loads(json.dumps(key.to_json()))) == key
    assert EngineKey.from_json(key.to_json()).digest() == key.digest()


def test_model_sha256_follows_the_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text('{"files": {}}')
    first = model_sha256(tmp_path)
    (tmp_path / "manifest.json").write_text('{"files": {"x": 1}}')
    assert model_sha256(tmp_path) != first


def written_cache(tmp_path, graphs=("encoder", "decoder")) -> tuple[EngineCache, dict[str, EngineKey]]:
    cache = EngineCache(tmp_path, "tiny.en")
    cache.prepare()
    keys = {graph: make_key(graph) for graph in graphs}
    for graph, key in keys.items():
        cache.write_engine(key, PLAN + graph.encode(), 12.3, "fp16", 7)
    return cache, keys


def test_fresh_validated_engines_are_ok_and_sidecar_records_key_and_build(tmp_path):
    cache, keys = written_cache(tmp_path)
    assert cache.status(keys).reason.endswith("were never validated")
    cache.mark_good(list(keys), ["cross_k ok"])
    status = cache.status(keys)
    assert status.ok, status.reason
    sidecar = json.loads(cache.sidecar_path("encoder").read_text())
    assert sidecar["key"] == keys["encoder"].to_json()
    assert sidecar["key_digest"] == keys["encoder"].digest()
    assert sidecar["engine_sha256"] == file_sha256(cache.engine_path("encoder"))
    assert sidecar["build_seconds"] == 12.3 and sidecar["built_at"]
    assert sidecar["precision_effective"] == "fp16"


def test_stale_key_names_the_changed_field(tmp_path):
    cache, keys = written_cache(tmp_path)
    cache.mark_good(list(keys), [])
    upgraded = {g: dataclasses.replace(k, tensorrt_version="10.4.0") for g, k in keys.items()}
    status = cache.status(upgraded)
    assert not status.ok
    assert "stale" in status.reason and "tensorrt_version: built for 10.3.0, now 10.4.0" in status.reason


def test_runtime_check_ignores_precision_and_profile_but_not_the_device(tmp_path):
    cache, keys = written_cache(tmp_path)
    cache.mark_good(list(keys), [])
    other_settings = {g: dataclasses.replace(k, precision="fp32", profile=()) for g, k in keys.items()}
    assert cache.status(other_settings, only=DEVICE_AND_MODEL_FIELDS).ok
    other_gpu = {g: dataclasses.replace(k, compute_capability="7.2") for g, k in keys.items()}
    assert "compute_capability" in cache.status(other_gpu, only=DEVICE_AND_MODEL_FIELDS).reason


def test_truncated_engine_is_refused(tmp_path):
    cache, keys = written_cache(tmp_path)
    cache.mark_good(list(keys), [])
    path = cache.engine_path("decoder")
    path.write_bytes(path.read_bytes()[:100])
    status = cache.status(keys)
    assert not status.ok and "truncated or altered" in status.reason and str(path) in status.reason


def test_same_size_altered_engine_is_refused(tmp_path):
    cache, keys = written_cache(tmp_path)
    cache.mark_good(list(keys), [])
    path = cache.engine_path("encoder")
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "truncated or altered" in cache.status(keys).reason


def test_crash_between_engine_and_sidecar_leaves_no_valid_looking_engine(tmp_path):
    """New engine renamed into place, process dies before its sidecar: old sidecar must not vouch."""
    cache, keys = written_cache(tmp_path)
    cache.mark_good(list(keys), [])
    cache.invalidate()  # what write_engine does first
    atomic_write(cache.engine_path("encoder"), b"a different, newer engine")
    status = cache.status(keys)
    assert not status.ok and "truncated or altered" in status.reason


def test_crash_before_rename_leaves_the_old_engine_and_prepare_removes_the_temp(tmp_path):
    cache, keys = written_cache(tmp_path)
    cache.mark_good(list(keys), [])
    leftover = cache.dir / f".encoder.engine.tmp-{os.getpid() + 1}"
    leftover.write_bytes(PLAN[:50])  # what a build killed mid-write leaves
    assert cache.status(keys).ok  # the real name still holds the complete, vouched-for engine
    cache.prepare()
    assert not leftover.exists()


def test_missing_sidecar_and_missing_engine_are_reported(tmp_path):
    cache, keys = written_cache(tmp_path, graphs=("encoder",))
    keys["decoder"] = make_key("decoder")
    assert "no decoder engine at" in cache.status(keys).reason
    cache.sidecar_path("encoder").unlink()
    assert "has no sidecar" in cache.status({"encoder": keys["encoder"]}).reason


def test_unreadable_sidecar_is_reported_with_its_path(tmp_path):
    cache, keys = written_cache(tmp_path)
    cache.sidecar_path("encoder").write_text("{not json")
    reason = cache.status(keys).reason
    assert str(cache.sidecar_path("encoder")) in reason and "unreadable" in reason


def test_rewriting_an_engine_withdraws_the_good_mark_first(tmp_path):
    cache, keys = written_cache(tmp_path)
    cache.mark_good(list(keys), [])
    cache.write_engine(keys["encoder"], b"rebuilt", 1.0, "fp32", 0)
    assert not cache.good_path.exists()
    assert "never validated" in cache.status(keys).reason


def test_good_mark_for_other_engines_is_refused(tmp_path):
    cache, keys = written_cache(tmp_path)
    cache.mark_good(list(keys), [])
    mark = json.loads(cache.good_path.read_text())
    mark["engines"]["decoder"] = "0" * 64
    cache.good_path.write_text(json.dumps(mark))
    assert "vouches for other engines" in cache.status(keys).reason


def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "decoder.engine"
    target.write_bytes(b"old complete engine")

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine_cache.os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write(target, b"new engine")
    assert target.read_bytes() == b"old complete engine"
    assert [p.name for p in tmp_path.iterdir()] == ["decoder.engine"]


def test_timing_cache_is_shared_by_models_and_round_trips(tmp_path):
    tiny, base = EngineCache(tmp_path, "tiny.en"), EngineCache(tmp_path, "base")
    assert tiny.read_timing_cache() is None
    tiny.prepare()
    tiny.write_timing_cache(b"tactics")
    assert base.read_timing_cache() == b"tactics"
