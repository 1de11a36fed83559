#!/usr/bin/env python3
"""A simulated fleet on one (plant) broker, straight or through bridges: load for the broker and the fleet view.

Each simulated device is its own MQTT connection with the daemon's last will (``offline``,
retained, on ``<prefix>/<device>/availability``), publishes ``online`` on connect, a
real-shaped health snapshot (docs/schemas/health.json) every ``--health-interval`` s,
retained at QoS 0, and finals (docs/schemas/final.json) at QoS 1 with a device-wide
``seq`` at a Poisson rate per stream. Half of the devices report Jetson temperatures and
power rails.

With ``--vanish K`` it makes K devices lose power after ``--vanish-after`` s (their
connection goes silent without a DISCONNECT, so the broker sends the will after
1.5 x ``--keepalive``; ``--vanish-how crash`` closes their sockets instead, as the kernel
does for a killed daemon, and the will goes at once), and times how long the fleet view's model takes to flag each one
OFFLINE. With ``--broker-pid`` it reports the broker's CPU from /proc/<pid>/stat.

With ``--bridges N`` the devices do not connect to the plant broker: the script starts N
local mosquitto processes on free loopback ports, spreads the devices over them, and gives
every device its own bridge connection to the plant broker made from the shipped
config/mosquitto/bridge.conf (placeholders filled in, nothing else changed), as if N devices'
brokers shared a process. The plant broker then sees one bridge connection per device, with
the bridge's retained state on ``<prefix>/bridge/<device>``, and a historian subscribed there
counts the finals that arrive. ``--vanish-how bridge`` freezes (SIGSTOP) the local brokers
of the K doomed devices, as a power cut of the device box does: the plant broker notices
the silent bridges after 1.5 x the bridge's keepalive_interval and the fleet view flags
every device on those brokers (BRIDGE DOWN or OFFLINE).

    .venv/bin/python scripts/simulate_fleet.py --broker 127.0.0.1:1883 --devices 200 \\
        --duration 240 --vanish 3 --vanish-after 60 --broker-pid $(pidof mosquitto)
    .venv/bin/python scripts/simulate_fleet.py --broker 127.0.0.1:1883 --devices 200 --bridges 10 \\
        --duration 150 --vanish 1 --vanish-how bridge --vanish-after 30 --broker-pid $(pidof mosquitto)
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from edgescribe.daemon.fleet_command import FleetClient  # noqa: E402
from edgescribe.daemon.fleet_view import FleetModel  # noqa: E402
from edgescribe.daemon.streaming import DropCounts  # noqa: E402

BRIDGE_CONF = Path(__file__).resolve().parents[1] / "config" / "mosquitto" / "bridge.conf"
FLAGS_OFFLINE = ("OFFLINE", "BRIDGE DOWN")  # what the fleet view shows for a device gone dark

PHRASES = ("start the conveyor", "stop line two", "pallet seven is ready", "check the hydraulic pressure",
           "press four needs maintenance", "raise the guard", "quality hold on this batch", "all clear")
MODELS = (("tiny.en", "tensorrt"), ("base.en", "tensorrt"), ("small.en", "onnxruntime"))


def iso(posix: float) -> str:
    return datetime.fromtimestamp(posix, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class SimDevice:
    name: str
    prefix: str
    streams: int
    jetson: bool
    model: tuple[str, str]
    started: float = field(default_factory=time.time)
    seq: int = 1
    finals: dict = field(default_factory=dict)
    client: Optional[mqtt.Client] = None
    vanished_at: Optional[float] = None

    def topic(self, leaf: str) -> str:
        return f"{self.prefix}/{self.name}/{leaf}"

    def health(self, now: float, rng: random.Random) -> dict:
        streams = {}
        for index in range(self.streams):
            name = f"line{index + 1}"
            streams[name] = {
                "state": "up", "level_dbfs": round(rng.uniform(-48, -20), 1), "xruns": 0,
                "dropped_audio_s": 0.0, "partials": self.finals.get(name, 0) * 4, "finals": self.finals.get(name, 0),
                "speculative_finals": {"started": self.finals.get(name, 0), "reused": self.finals.get(name, 0),
                                       "discarded": 0},
                "snr_db": round(rng.uniform(15, 35), 1),
                "dropped": {counter.name: 0 for counter in fields(DropCounts)},  # the daemon's own counters
                "discarded_bursts": 0, "length_cuts": 0,
            }
        jetson = None
        if self.jetson:
            jetson = {
                "board": "NVIDIA Jetson Orin Nano Developer Kit", "gpu_load_percent": round(rng.uniform(5, 40), 1),
                "gpu_freq_mhz": 624.0, "gpu_freq_max_mhz": 624.0, "gpu_shared_memory_mb": 410.0,
                "temperatures_c": {"cpu-thermal": round(rng.uniform(42, 58), 1),
                                   "gpu-thermal": round(rng.uniform(41, 56), 1)},
                "power_rails": [{"name": "VDD_IN", "voltage_v": 5.0, "current_ma": 1400.0,
                                 "power_mw": round(rng.uniform(6000, 9000), 1)},
                                {"name": "VDD_CPU_GPU_CV", "voltage_v": 5.0, "current_ma": 400.0, "power_mw": 2000.0}],
            }
        total = sum(self.finals.values())
        return {
            "schema": 1, "device": self.name, "time": iso(now), "uptime_s": round(now - self.started, 1),
            "service": {"version": "0.9.0", "model": self.model[0], "backend": self.model[1], "engine_key": None},
            "streams": streams,
            "inference": {"real_time_factor": round(rng.uniform(0.05, 0.3), 3),
                          "latency_p50_s": round(rng.uniform(0.3, 0.6), 2),
                          "latency_p95_s": round(rng.uniform(0.6, 1.4), 2),
                          "queue_depth": 0},
            "outbox": {"depth": 0, "bytes": 0, "oldest_age_s": None, "dropped_size_total": 0, "dropped_age_total": 0,
                       "write_errors": 0, "last_error": None, "next_seq": self.seq},
            "mqtt": {"state": "connected", "broker": "127.0.0.1:1883", "connected_since": iso(self.started),
                     "reconnects": 0, "failed_attempts": 0, "last_error": None, "last_error_time": None},
            "messages": {"finals": total, "events": 0, "alerts": 0, "partials_sent": total * 4, "partials_dropped": 0,
                         "health_sent": 0, "in_flight": 0, "acked": total, "rejected": 0},
            "alerts": {},
            "host": {"cpu_percent": round(rng.uniform(10, 40), 1), "load_1m": 1.2, "memory_total_mb": 7620.0,
                     "memory_available_mb": 5100.0, "memory_used_percent": 33.1, "state_dir": "/var/lib/edgescribe",
                     "disk_free_mb": 41000.0, "disk_total_mb": 57000.0},
            "jetson": jetson,
        }

    def final(self, stream: str, now: float, rng: random.Random) -> dict:
        count = self.finals.get(stream, 0)
        self.finals[stream] = count + 1
        audio_end = round(now - self.started, 2)
        length = round(rng.uniform(1.0, 4.0), 2)
        payload = {
            "schema": 1, "seq": self.seq, "device": self.name, "stream": stream,
            "utterance_id": f"{stream}-{int(self.started * 1000)}-{count}", "sequence": 3,
            "text": rng.choice(PHRASES), "language": "en", "start": iso(now - length - 0.5), "end": iso(now - 0.5),
            "audio_start": max(0.0, audio_end - length), "audio_end": audio_end, "emitted": iso(now), "latency_s": 0.5,
            "model": self.model[0], "backend": self.model[1],
            "confidence": {"avg_logprob": -0.25, "no_speech_prob": 0.02, "compression_ratio": 1.2, "temperature": 0.0},
        }
        self.seq += 1
        return payload


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/<pid>/stat) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1


def connect_device(device: SimDevice, host: str, port: int, keepalive: int, counter: Counter) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{device.name}", protocol=mqtt.MQTTv311)
    client.will_set(device.topic("availability"), "offline", qos=1, retain=True)

    def on_connect(client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            client.publish(device.topic("availability"), "online", qos=1, retain=True)
            counter.add("availability")

    client.on_connect = on_connect
    client.connect(host, port, keepalive=keepalive)
    client.loop_start()
    device.client = client


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bridge_block(device: str, prefix: str, plant: str) -> str:
    """The shipped bridge.conf for ``device``, placeholders filled in; the global option it sets is
    left to the broker's own configuration (it would repeat once per device)."""
    text = BRIDGE_CONF.read_text()
    for placeholder, value in (("@DEVICE_ID@", device), ("@PREFIX@", prefix), ("@PLANT_ADDRESS@", plant)):
        text = text.replace(placeholder, value)
    return "\n".join(line for line in text.splitlines() if not line.startswith("max_queued_messages"))


class LocalBroker:
    """One local mosquitto on a free loopback port, bridging each of its devices to the plant broker."""

    def __init__(self, workdir: Path, index: int, devices: list[str], prefix: str, plant: str):
        self.port = free_port()
        self.devices = devices
        self.frozen = False
        config = workdir / f"local-{index:02d}.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 f"log_dest file {workdir / f'local-{index:02d}.log'}", "log_type error", "log_type warning",
                 "max_queued_messages 10000"]
        if os.geteuid() == 0:  # else mosquitto drops to a user that cannot write the log here
            lines.append("user root")
        config.write_text("\n".join(lines) + "\n\n" + "\n\n".join(bridge_block(d, prefix, plant) for d in devices)
                          + "\n")
        self.process = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                problem = self.process.stderr.read().decode().strip()
                raise SystemExit(f"simulate_fleet: error: local mosquitto exited: {problem}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"simulate_fleet: error: local mosquitto did not listen on {self.port} within {timeout} s")

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def stop(self) -> None:
        if self.frozen:
            self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class Historian:
    """A plant-side subscriber to every final (QoS 1), counting what crossed the bridges."""

    def __init__(self, host: str, port: int, prefix: str):
        self.received = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sim-historian")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/+/transcript/+/final", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.received += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def vanish(device: SimDevice, how: str) -> None:
    """``power``: the connection goes quiet (no DISCONNECT, no more pings) and stays open, as when
    the device loses power or its cable; ``crash``: the process dies and its kernel closes the socket."""
    device.client.loop_stop()
    if how == "crash":
        device.client.socket().shutdown(socket.SHUT_RDWR)
    device.vanished_at = time.time()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="127.0.0.1:1883", metavar="HOST:PORT")
    parser.add_argument("--prefix", default="edgescribe")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--streams", type=int, default=2, help="streams per device")
    parser.add_argument("--finals-per-min", type=float, default=2.0, help="finals per stream per minute (Poisson)")
    parser.add_argument("--health-interval", type=float, default=30.0)
    parser.add_argument("--keepalive", type=int, default=30, help="as the daemon's mqtt.keepalive_s")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of steady publishing")
    parser.add_argument("--vanish", type=int, default=0, help="devices that lose power during the run")
    parser.add_argument("--vanish-after", type=float, default=60.0)
    parser.add_argument("--vanish-how", choices=("power", "crash", "bridge"), default="power",
                        help="power: the connection goes silent; crash: the socket is closed (a killed daemon); "
                        "bridge (with --bridges): the doomed devices' local brokers freeze, as in a power cut")
    parser.add_argument("--bridges", type=int, default=0,
                        help="start this many local mosquitto processes bridged to --broker and spread the devices "
                        "over them (0: devices connect to --broker directly)")
    parser.add_argument("--broker-pid", type=int, help="report this broker process's CPU use")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    if not 0 <= args.bridges <= args.devices:
        parser.error(f"--bridges: expected 0 to --devices ({args.devices}); got {args.bridges}")
    if args.vanish_how == "bridge" and not args.bridges:
        parser.error("--vanish-how bridge needs --bridges")
    if args.bridges and shutil.which("mosquitto") is None:
        parser.error("--bridges needs mosquitto (apt-get install mosquitto)")
    names = [f"sim-{i:03d}" for i in range(args.devices)]
    brokers: list[LocalBroker] = []
    with tempfile.TemporaryDirectory(prefix="simulate-fleet-") as workdir:
        try:
            for index in range(args.bridges):
                brokers.append(LocalBroker(Path(workdir), index, names[index::args.bridges], args.prefix, args.broker))
            for broker in brokers:
                broker.wait_listening()
            return simulate(args, names, brokers)
        finally:
            for broker in brokers:
                broker.stop()


def simulate(args: argparse.Namespace, names: list[str], brokers: list[LocalBroker]) -> int:
    host, _, port = args.broker.rpartition(":")
    rng = random.Random(args.seed)
    counter = Counter()
    devices = [SimDevice(name, args.prefix, args.streams, jetson=i % 2 == 0, model=MODELS[i % len(MODELS)])
               for i, name in enumerate(names)]
    historian = Historian(host, int(port), args.prefix) if brokers else None
    for index, device in enumerate(devices):
        local = brokers[index % len(brokers)] if brokers else None
        connect_device(device, "127.0.0.1" if local else host, local.port if local else int(port), args.keepalive,
                       counter)

    viewer = FleetClient(argparse.Namespace(broker=args.broker, tls=False, tls_ca_file=None, tls_cert_file=None,
                                            tls_key_file=None, username=None, password_file=None),
                         FleetModel(prefix=args.prefix))
    viewer.connect()
    bridges_up_s = None
    if brokers:  # publish once every bridge is up, or the first finals would wait in the local queues
        waited, wanted = time.time(), set(names)
        while time.time() - waited < 60:
            # a device shows up at the plant broker only through its bridge (its retained "online")
            with viewer.lock:
                up = sum(1 for row in viewer.model.rows(time.time())
                         if row.device in wanted and row.flag != "BRIDGE DOWN")
            if up == len(wanted):
                break
            time.sleep(0.2)
        bridges_up_s = round(time.time() - waited, 1)

    start = time.time()
    cpu_start = cpu_seconds(args.broker_pid) if args.broker_pid else None
    local_cpu_start = sum(cpu_seconds(b.process.pid) for b in brokers)
    events: list[tuple[float, int, str, str]] = []  # (when, device index, kind, stream)
    for index, device in enumerate(devices):
        heapq.heappush(events, (start + rng.uniform(0, args.health_interval), index, "health", ""))
        for s in range(args.streams):
            heapq.heappush(events, (start + rng.expovariate(args.finals_per_min / 60), index, "final", f"line{s + 1}"))
    doomed = rng.sample(range(args.devices), args.vanish)
    vanish_at = start + args.vanish_after
    seen_offline: dict[str, float] = {}
    end = start + args.duration
    next_look = start  # the fleet view is looked at 10 times a second, as a screen refresh would
    while True:
        now = time.time()
        if doomed and now >= vanish_at:
            if args.vanish_how == "bridge":
                frozen = {index % len(brokers) for index in doomed}
                for b in frozen:
                    brokers[b].freeze()
                for index, device in enumerate(devices):
                    if index % len(brokers) in frozen:
                        device.vanished_at = time.time()  # its box is dark: nothing more from it
            else:
                for index in doomed:
                    vanish(devices[index], args.vanish_how)
            doomed = []
        if now >= next_look:
            next_look = now + 0.1
            with viewer.lock:
                for row in viewer.model.rows(now):
                    if row.flag in FLAGS_OFFLINE and row.device not in seen_offline:
                        seen_offline[row.device] = now
        if now >= end:
            break
        if events and events[0][0] <= now:
            when, index, kind, stream = heapq.heappop(events)
            device = devices[index]
            if device.vanished_at is None:
                if kind == "health":
                    snapshot = json.dumps(device.health(now, rng))
                    device.client.publish(device.topic("health"), snapshot, qos=0, retain=True)
                    heapq.heappush(events, (when + args.health_interval, index, kind, stream))
                else:
                    payload = json.dumps(device.final(stream, now, rng))
                    device.client.publish(device.topic(f"transcript/{stream}/final"), payload, qos=1)
                    heapq.heappush(events, (when + rng.expovariate(args.finals_per_min / 60), index, kind, stream))
                counter.add(kind)
            continue
        time.sleep(min(0.02, max(0.0, (events[0][0] if events else end) - now)))
    elapsed = time.time() - start
    cpu = (cpu_seconds(args.broker_pid) - cpu_start) / elapsed * 100 if args.broker_pid else None
    local_cpu = (sum(cpu_seconds(b.process.pid) for b in brokers) - local_cpu_start) / elapsed * 100

    vanished = [d for d in devices if d.vanished_at is not None]
    delays = sorted(seen_offline[d.name] - d.vanished_at for d in vanished if d.name in seen_offline)
    with viewer.lock:
        rows = viewer.model.rows(time.time())
    report = {
        "devices": args.devices, "streams_per_device": args.streams, "finals_per_stream_per_min": args.finals_per_min,
        "health_interval_s": args.health_interval, "keepalive_s": args.keepalive, "duration_s": round(elapsed, 1),
        "published": dict(counter.counts), "messages_per_s": round(sum(counter.counts.values()) / elapsed, 1),
        "broker_cpu_percent": None if cpu is None else round(cpu, 2),
        "bridges": len(brokers), "bridges_up_after_s": bridges_up_s,
        "local_brokers_cpu_percent": round(local_cpu, 2) if brokers else None,
        "finals_received_at_plant": historian.received if historian else None,
        "fleet_view_rows": len(rows), "fleet_view_flagged": sum(1 for r in rows if r.flag),
        "vanished": len(vanished), "vanish_how": args.vanish_how, "offline_shown": len(delays),
        "offline_shown_after_s": [round(d, 1) for d in delays],
    }
    print(json.dumps(report, indent=1))
    if args.report:
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    viewer.close()
    if historian is not None:
        historian.close()
    for device in devices:
        if device.vanished_at is None:  # a clean stop, as the daemon does it
            device.client.publish(device.topic("availability"), "stopped", qos=1, retain=True).wait_for_publish(5)
            device.client.disconnect()
            device.client.loop_stop()
    return 0 if len(delays) == len(vanished) else 1


if __name__ == "__main__":
    sys.exit(main())
