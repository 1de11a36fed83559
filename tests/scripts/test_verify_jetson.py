"""scripts/verify-jetson.sh and verify_jetson.py: the parts that run without a GPU.

The GPU steps only run on an Orin; what is tested here is what decides the verdict there:
the measurement on the ONNX Runtime side, the comparison that must fail on any differing
transcript, and the script refusing cleanly where TensorRT is not usable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.models import tiny_en_package  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def measurement(tiny_en_package, corpus, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("verify") / "onnxruntime.json"
    done = run(PYTHON, "scripts/verify_jetson.py", "measure", "--model", str(tiny_en_package.dir),
               "--backend", "onnxruntime", "--corpus", str(corpus / "en"), "--limit", "3",
               "--token-steps", "8", "--threads", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_measure_records_text_wer_speed_and_memory(measurement, corpus):
    result = json.loads(measurement.read_text())
    assert result["backend"] == "onnxruntime" and len(result["files"]) == 3
    assert all(f["text"].strip() and f["reference"] for f in result["files"])
    assert 0.0 <= result["wer"] < 0.5  # real speech, real weights: mostly right
    assert result["rtf"] > 0 and result["token_ms"] > 0 and result["peak_rss_mb"] > 50


def test_compare_passes_identical_runs_and_fails_on_one_changed_word(measurement, tmp_path):
    same = run(PYTHON, "scripts/verify_jetson.py", "compare", str(measurement), str(measurement))
    assert same.returncode == 0, same.stdout
    assert "OK: 3 files transcribed identically" in same.stdout

    other = json.loads(measurement.read_text())
    other["backend"] = "tensorrt"
    changed = other["files"][1]
    changed["text"] = changed["text"].replace(" ", " the ", 1)
    (tmp_path / "tensorrt.json").write_text(json.dumps(other))
    differs = run(PYTHON, "scripts/verify_jetson.py", "compare", str(measurement), str(tmp_path / "tensorrt.json"))
    assert differs.returncode == 1
    assert f"MISMATCH {changed['id']}:" in differs.stdout and "FAILED" in differs.stdout


def test_measure_with_tensorrt_where_it_is_missing_is_one_line(tiny_en_package, corpus, tmp_path):  # noqa: F811
    done = run(PYTHON, "scripts/verify_jetson.py", "measure", "--model", str(tiny_en_package.dir),
               "--backend", "tensorrt", "--engine-dir", str(tmp_path), "--corpus", str(corpus / "en"),
               "--out", str(tmp_path / "trt.json"))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("verify_jetson: error: ")
    assert not (tmp_path / "trt.json").exists()


def test_verify_script_stops_at_the_device_step_without_tensorrt(tiny_en_package, corpus):  # noqa: F811
    done = run("bash", "scripts/verify-jetson.sh", "--model", str(tiny_en_package.dir),
               "--corpus", str(corpus / "en"), "--python", PYTHON)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "TensorRT is not usable here" in done.stderr.strip().splitlines()[-1]
    assert "== build engines" not in done.stdout  # nothing after the failed step ran


def test_verify_script_names_a_missing_package(tmp_path, corpus):
    done = run("bash", "scripts/verify-jetson.sh", "--model", str(tmp_path), "--corpus", str(corpus / "en"))
    assert done.returncode == 1
    assert done.stderr.strip() == f"verify-jetson: error: {tmp_path} is not a model package (no manifest.json)"
