"""The systemd units: systemd-analyze accepts them silently and the hardening holds.

``systemd-analyze verify`` needs every Exec binary to exist, so the units are copied to a
temporary directory with their binaries pointed at a stand-in executable; the daemon's unit
requires the engine-build unit, so both are verified together.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgescribe.engines.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
DAEMON = UNITS / "edgescribe.service"
ENGINES = UNITS / "edgescribe-engines.service"
MAX_EXPOSURE = 2.5

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed (apt-get install systemd)")


def directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every line; systemd allows a key more than once."""
    out, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(path: Path, key: str) -> list[str]:
    return [v for _, k, v in directives(path) if k == key]


@pytest.fixture
def verifiable_units(tmp_path):
    """Copies of both units whose Exec lines run a stand-in executable that exists."""
    if not ENGINES.is_file():
        pytest.fail(f"{ENGINES.relative_to(REPO)} is missing: edgescribe.service wants it")
    stand_in = tmp_path / "stand-in"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    copies = []
    for unit in (DAEMON, ENGINES):
        text = re.sub(
            r"^(Exec(?:Start|StartPre|StartPost|Stop|StopPost|Reload|Condition)=[-@:+!]*)(\S+)",
            lambda m: m.group(1) + str(stand_in),
            unit.read_text(),
            flags=re.M,
        )
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(copy)
    return copies


@needs_analyze
def test_units_verify_without_a_word(verifiable_units):
    result = subprocess.run(
        [analyze, "verify", *map(str, verifiable_units)], capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stderr) == (0, "")


@needs_analyze
def test_exposure_is_low_and_documented():
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(DAEMON)], capture_output=True, text=True, timeout=120
    )
    match = re.search(r"Overall exposure level for edgescribe\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE
    assert f"exposure level {exposure:.1f}" in (REPO / "docs" / "install.md").read_text()


def test_daemon_unit_contract():
    assert values(DAEMON, "Type") == ["notify"] and values(DAEMON, "NotifyAccess") == ["main"]
    assert values(DAEMON, "ExecStart") == ["/opt/edgescribe/venv/bin/edgescribe run --config /etc/edgescribe/config.yaml"]
    # systemctl reload sends SIGHUP, which re-reads the configuration (not the default: terminate)
    assert values(DAEMON, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    # The engine build runs first; a failed build still lets the daemon start on ONNX Runtime.
    assert "edgescribe-engines.service" in values(DAEMON, "Wants")
    assert any("edgescribe-engines.service" in v for v in values(DAEMON, "After"))
    assert not any("mosquitto" in v for v in values(DAEMON, "Requires") + values(DAEMON, "Wants"))
    assert values(DAEMON, "Restart") == ["on-failure"]  # covers watchdog timeouts too
    assert values(DAEMON, "WatchdogSec")
    # A configuration error will not fix itself: no restart loop on it.
    assert values(DAEMON, "RestartPreventExitStatus") == [str(ConfigError.exit_code)]
    assert {"StateDirectory", "CacheDirectory", "ConfigurationDirectory"} <= {k for _, k, _ in directives(DAEMON)}
    assert "char-alsa rw" in values(DAEMON, "DeviceAllow") and values(DAEMON, "DevicePolicy") == ["closed"]


def test_memory_deny_write_execute_holds_for_the_cpu_pipeline():
    """The unit forbids W+X memory; the CPU inference stack must run under that rule."""
    assert values(DAEMON, "MemoryDenyWriteExecute") == ["yes"]
    code = r"""
import ctypes, mmap, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X mapping was allowed: the rule is not enforced")
except OSError:
    pass
import numpy as np, onnxruntime as ort, yaml, paho.mqtt.client, sqlite3
from onnx import helper, TensorProto
graph = helper.make_graph(
    [helper.make_node("MatMul", ["a", "b"], ["c"])], "g",
    [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in "ab"],
    [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4, 4])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
options = ort.SessionOptions(); options.intra_op_num_threads = 1
session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
out = session.run(None, {"a": np.eye(4, dtype=np.float32), "b": np.ones((4, 4), np.float32)})[0]
assert out.sum() == 16
assert ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)(41) == 42
from edgescribe.daemon.config import load_config
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    if result.returncode == 77:
        pytest.skip("kernel has no PR_SET_MDWE (Linux < 6.3): cannot emulate MemoryDenyWriteExecute")
    assert result.returncode == 0, result.stderr[-2000:]
