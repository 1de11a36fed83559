"""scripts/simulate_fleet.py --bridges: devices reach a real plant mosquitto through real local
mosquitto processes bridged with the shipped config/mosquitto/bridge.conf."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.mosquitto import mosquitto  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


def simulate(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/simulate_fleet.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_a_fleet_through_bridges_reaches_the_plant_broker(tmp_path, mosquitto):
    report = tmp_path / "report.json"
    run = simulate("--broker", f"127.0.0.1:{mosquitto.port}", "--devices", "6", "--bridges", "2",
                   "--health-interval", "1", "--finals-per-min", "60", "--duration", "6", "--report", str(report))
    assert run.returncode == 0, run.stderr
    figures = json.loads(report.read_text())
    assert figures["bridges"] == 2 and figures["fleet_view_rows"] == 6 and figures["fleet_view_flagged"] == 0, figures
    finals = figures["published"]["final"]
    assert finals >= 6, figures
    # every final crossed a bridge (QoS 1 both legs); the devices are connected to no one else
    assert figures["finals_received_at_plant"] == finals, figures
    # no simulated devices' brokers outlive the run
    assert "simulate-fleet-" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    # the devices connected only to the local brokers: the plant broker saw one bridge per device
    log = mosquitto.log()
    assert log.count("edgescribe-bridge-sim-") >= 6 and " as sim-sim-" not in log, log[-2000:]


def test_bad_bridge_options_are_one_line_errors():
    run = simulate("--devices", "2", "--bridges", "3")
    assert run.returncode == 2 and run.stderr.strip().endswith("--bridges: expected 0 to --devices (2); got 3"), run
    run = simulate("--vanish-how", "bridge")
    assert run.returncode == 2 and run.stderr.strip().endswith("--vanish-how bridge needs --bridges"), run
