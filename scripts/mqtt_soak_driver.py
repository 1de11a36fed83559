#!/usr/bin/env python3
"""Run the real publisher (outbox + MQTT link) fed with final transcripts, as a separate process.

Used by tests/daemon/test_mqtt_resilience.py for SIGKILL tests and usable by hand to soak a
broker connection: it produces ``--count`` finals (texts from a corpus transcripts.tsv if
given) every ``--interval`` seconds, prints ``produced <seq> <utterance_id>`` once each is
durably in the outbox, then keeps draining until SIGTERM/SIGINT (clean stop: availability
``stopped``) or ``--exit-when-drained``.

    .venv/bin/python scripts/mqtt_soak_driver.py --port 1883 --device-id soak --state-dir /tmp/soak \\
        --count 100 --interval 0.5 --transcripts ../shared/corpus/en/transcripts.tsv
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgescribe.daemon.config.mqtt import MqttConfig  # noqa: E402
from edgescribe.daemon.events import Confidence, TranscriptEvent  # noqa: E402
from edgescribe.daemon.publisher import Publisher  # noqa: E402
from edgescribe.engines.errors import EdgescribeError  # noqa: E402


def texts(path: str | None) -> list[str]:
    if not path:
        return ["the press on line four is running"]
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1] for line in lines if "\t" in line] or ["(empty)"]


def final(stream: str, index: int, text: str, audio_at: float) -> TranscriptEvent:
    now = time.time()
    duration = max(1.0, len(text.split()) * 0.35)
    return TranscriptEvent(
        stream=stream, utterance_id=f"{stream}-{int(now * 1000)}-{index}", sequence=0, kind="final",
        stable_text=text, unstable_text="", audio_start=audio_at, audio_end=audio_at + duration,
        wall_start=now - duration, wall_end=now, language="en",
        confidence=Confidence(avg_logprob=-0.21, no_speech_prob=0.01, compression_ratio=1.3, temperature=0.0),
        model="tiny.en", backend="onnxruntime", latency_s=0.42,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--protocol", default="5", choices=("3.1.1", "5"))
    parser.add_argument("--device-id", default="soak")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--count", type=int, default=100, help="finals to produce (0: only drain the outbox)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between finals")
    parser.add_argument("--stream", default="line1")
    parser.add_argument("--transcripts", help="transcripts.tsv whose texts are used in turn")
    parser.add_argument("--keepalive", type=int, default=30)
    parser.add_argument("--reconnect-max", type=float, default=2.0)
    parser.add_argument("--exit-when-drained", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    config = MqttConfig(host=args.host, port=args.port, protocol=args.protocol, keepalive_s=args.keepalive,
                        reconnect_min_s=0.2, reconnect_max_s=args.reconnect_max)
    try:
        publisher = Publisher.from_config(config, args.device_id, args.state_dir)
    except EdgescribeError as error:
        print(f"mqtt_soak_driver: error: {error}", file=sys.stderr)
        return error.exit_code
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    publisher.start()
    pool = texts(args.transcripts)
    audio_at = 0.0
    for index in range(args.count):
        if stop.is_set():
            break
        event = final(args.stream, index, pool[index % len(pool)], audio_at)
        audio_at = event.audio_end + 0.5
        publisher.publish(event)
        print(f"produced {publisher.outbox.stats().next_seq - 1} {event.utterance_id}", flush=True)
        stop.wait(args.interval)
    print("done producing", flush=True)
    while not stop.wait(0.2):
        if args.exit_when_drained and publisher.outbox.stats().depth == 0:
            break
    publisher.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
