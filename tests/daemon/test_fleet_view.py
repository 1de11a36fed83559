"""The fleet table's model: rows from availability and health, flags, the plain and JSON renderings.

The health payloads come from scripts/simulate_fleet.py, which is checked here against
docs/schemas/health.json, so the model is fed what devices really publish.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import random
import sys
from pathlib import Path

from edgescribe.daemon.fleet_view import FleetModel, rows_json, table_lines
from tests.fixtures.mosquitto import validate_payload

REPO = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0


@functools.cache
def simulator():
    spec = importlib.util.spec_from_file_location("simulate_fleet", REPO / "scripts" / "simulate_fleet.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def device(name: str, jetson: bool = True):
    return simulator().SimDevice(name, "edgescribe", streams=2, jetson=jetson, model=("tiny.en", "tensorrt"),
                                 started=NOW - 100)


def health(name: str, now: float = NOW, jetson: bool = True) -> dict:
    return device(name, jetson).health(now, random.Random(0))


def feed(model: FleetModel, name: str, leaf: str, payload, retained: bool = False, now: float = NOW) -> bool:
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    data = payload if isinstance(payload, bytes) else payload.encode()
    return model.update(f"edgescribe/{name}/{leaf}", data, retained, now)


def test_simulated_payloads_have_the_daemons_shape():
    sim, rng = device("press-1"), random.Random(0)
    validate_payload(sim.health(NOW, rng), "health")
    validate_payload(device("press-2", jetson=False).health(NOW, rng), "health")
    first, second = sim.final("line1", NOW, rng), sim.final("line2", NOW, rng)
    validate_payload(first, "final")
    assert (first["seq"], second["seq"]) == (1, 2)


def test_a_row_shows_what_the_health_snapshot_says():
    model = FleetModel()
    snapshot = health("press-1")
    snapshot["streams"]["line2"]["dropped_audio_s"] = 1.5
    snapshot["outbox"]["depth"] = 7
    feed(model, "press-1", "availability", "online")
    feed(model, "press-1", "health", snapshot)
    [row] = model.rows(NOW + 12)
    assert row.flag == ""
    assert (row.streams_up, row.streams_total, row.model, row.backend) == (2, 2, "tiny.en", "tensorrt")
    assert row.latency_p95_s == snapshot["inference"]["latency_p95_s"]
    assert row.real_time_factor == snapshot["inference"]["real_time_factor"]
    assert (row.outbox_depth, row.dropped_audio_s, row.health_age_s) == (7, 1.5, 12.0)
    assert row.temperature_c == max(snapshot["jetson"]["temperatures_c"].values())
    # the module's input rail, not the sum of it and its parts
    assert row.power_w == round(snapshot["jetson"]["power_rails"][0]["power_mw"] / 1000, 1)


def test_a_device_without_jetson_readings_shows_none_for_them():
    model = FleetModel()
    feed(model, "pc-1", "availability", "online")
    feed(model, "pc-1", "health", health("pc-1", jetson=False))
    [row] = model.rows(NOW)
    assert (row.temperature_c, row.power_w) == (None, None)
    assert table_lines([row])[1].split()[-3:] == ["-", "-", "0s"]


def test_flags_offline_stopped_silent_stream_down_and_bridge_down_come_first():
    model = FleetModel(stale_after_s=90)
    for name in ("a-ok", "b-offline", "c-stopped", "d-silent", "e-stream", "f-bridge", "g-nohealth"):
        feed(model, name, "availability", "online")
        feed(model, name, "health", health(name), now=NOW - (200 if name == "d-silent" else 5))
    feed(model, "b-offline", "availability", "offline")
    feed(model, "c-stopped", "availability", "stopped")
    broken = health("e-stream")
    broken["streams"]["line1"]["state"] = "down"
    feed(model, "e-stream", "health", broken)
    model.update("edgescribe/bridge/f-bridge", b"0", True, NOW)
    feed(model, "g-nohealth", "health", b"")  # a retained snapshot cleared
    flags = {row.device: row.flag for row in model.rows(NOW)}
    assert flags == {"a-ok": "", "b-offline": "OFFLINE", "c-stopped": "STOPPED", "d-silent": "SILENT",
                     "e-stream": "STREAM DOWN", "f-bridge": "BRIDGE DOWN", "g-nohealth": "NO HEALTH"}
    assert model.rows(NOW)[-1].device == "a-ok"
    model.update("edgescribe/bridge/f-bridge", b"1", True, NOW)
    assert {row.device: row.flag for row in model.rows(NOW)}["f-bridge"] == ""


def test_a_retained_snapshot_is_as_old_as_its_time_but_a_live_one_as_its_arrival():
    model = FleetModel(stale_after_s=90)
    feed(model, "old", "availability", "online", retained=True)
    feed(model, "old", "health", health("old", now=NOW - 3600), retained=True)
    # a device whose clock runs an hour behind is still fresh when its snapshot arrives live
    feed(model, "skewed", "availability", "online")
    feed(model, "skewed", "health", health("skewed", now=NOW - 3600))
    rows = {row.device: row for row in model.rows(NOW)}
    assert (rows["old"].flag, rows["old"].health_age_s) == ("SILENT", 3600.0)
    assert (rows["skewed"].flag, rows["skewed"].health_age_s) == ("", 0.0)
    assert table_lines([rows["old"]])[1].rstrip().endswith("60m")


def test_other_topics_and_unreadable_payloads_are_ignored():
    model = FleetModel()
    assert not model.update("edgescribe/press-1/transcript/line1/final", b"{}", False, NOW)
    assert not model.update("other/press-1/health", b"{}", False, NOW)
    assert not feed(model, "press-1", "health", b"{not json")
    assert not feed(model, "press-1", "health", b"[1, 2]")
    assert not feed(model, "press-1", "availability", b"\xff\xfe")
    assert model.rows(NOW) == []


def test_json_carries_every_column():
    model = FleetModel()
    feed(model, "press-1", "availability", "online")
    feed(model, "press-1", "health", health("press-1"))
    [entry] = json.loads(rows_json(model.rows(NOW)))
    assert entry["device"] == "press-1" and entry["availability"] == "online" and entry["streams_total"] == 2
    assert set(entry) >= {"latency_p95_s", "real_time_factor", "outbox_depth", "dropped_audio_s", "temperature_c",
                          "power_w", "health_age_s", "flag"}
