#!/usr/bin/env python3
"""Sparkplug B bytes per hour of continuous speech, beside the JSON tree's (benchmark_bandwidth.py).

The same workload as scripts/benchmark_bandwidth.py (an hour of back-to-back corpus
utterances, a partial every second, one final per utterance, a health snapshot every 30 s
of audio time) goes through the real Sparkplug edge node to a local mosquitto through the
same counting TCP proxy: the figures are the bytes the node's own connection sends and
receives (births, DDATA, NDATA, the barrier SUBSCRIBEs, PINGs).

    .venv/bin/python scripts/benchmark_sparkplug_bandwidth.py --corpus ../shared/corpus/en
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchmark_bandwidth import RAW_AUDIO_BYTES_PER_HOUR, WireTraffic, proxied_broker, replay  # noqa: E402
from edgescribe.daemon.config.mqtt import MqttConfig  # noqa: E402
from edgescribe.daemon.config.sparkplug import SparkplugConfig  # noqa: E402
from edgescribe.daemon.sparkplug.edge_node import SparkplugEdgeNode  # noqa: E402
from tests.fixtures.mosquitto import Subscriber  # noqa: E402

HEALTH = {"uptime_s": 0.0, "service": {"model": "tiny.en", "backend": "tensorrt"},
          "inference": {"real_time_factor": 0.083, "latency_p95_s": 0.88},
          "streams": {"line1": {"level_dbfs": -27.4}},
          "jetson": {"temperatures_c": {"cpu": 48.3, "gpu": 47.1, "soc0": 47.9, "soc1": 48.0, "soc2": 46.8,
                                        "tj": 48.3}}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus" / "en")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--max-utterance", type=float, default=25.0)
    args = parser.parse_args()
    seconds = args.hours * 3600
    with tempfile.TemporaryDirectory() as workdir, proxied_broker(Path(workdir)) as (broker, proxy):
        node = SparkplugEdgeNode.from_config(SparkplugConfig(enabled=True, group_id="plant"),
                                             MqttConfig(host="127.0.0.1", port=proxy.port), "orin-line1", ["line1"],
                                             Path(workdir) / "state")
        tally = Subscriber(broker.port, ["spBv1.0/#"]).connect()
        node.start()
        deadline = time.monotonic() + 10
        while node.stats().state != "born" and time.monotonic() < deadline:
            time.sleep(0.05)
        counts = replay(node.submit, lambda audio_s: node.on_health({**HEALTH, "uptime_s": audio_s}),
                        args.corpus, seconds, args.max_utterance)
        deadline = time.monotonic() + 60
        while node.outbox.stats().depth and time.monotonic() < deadline:
            time.sleep(0.1)
        node.stop()
        time.sleep(0.5)
        tally.disconnect()
    per_hour = 1 / args.hours
    wire = WireTraffic.per_hour(proxy, args.hours)
    mqtt_total, headers = wire.up + wire.down, wire.headers
    print(f"replayed {seconds / 3600:.2f} h: {counts['partial']} partials, {counts['final']} finals, "
          f"{counts['health']} health snapshots (as NDATA/DDATA)")
    seen: dict[str, list[int]] = {}
    for message in tally.messages:
        kind = message.topic.split("/")[2]
        seen.setdefault(kind, [0, 0])
        seen[kind][0] += 1
        seen[kind][1] += len(message.topic) + len(message.payload)
    for kind, (number, size) in sorted(seen.items()):
        print(f"  {kind:7s} {number:6d} messages, topic+payload as subscribers see them /h: "
              f"{size * per_hour / 1e6:6.3f} MB")
    print(f"device -> broker  MQTT bytes/h: {wire.up / 1e6:8.3f} MB")
    print(f"broker -> device  MQTT bytes/h: {wire.down / 1e6:8.3f} MB")
    print(f"MQTT bytes (TCP payload): {100 * mqtt_total / RAW_AUDIO_BYTES_PER_HOUR:.2f} % of raw audio; with "
          f"estimated TCP/IP headers: {100 * (mqtt_total + headers) / RAW_AUDIO_BYTES_PER_HOUR:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
