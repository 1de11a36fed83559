#!/usr/bin/env python3
"""MQTT bytes per hour of continuous speech, against streaming the raw audio (115.2 MB/h).

Replays an hour (``--hours``) of back-to-back utterances from a real corpus (durations
from the WAVs, texts from transcripts.tsv) through the real publisher: a partial every
second of speech with the words so far, one final per utterance, a health snapshot every
30 s of audio time (with the Jetson section, read from the Orin tree). The publisher
talks to a local mosquitto through a counting TCP proxy on loopback, so the figures are
the bytes the device sends and receives on the wire (MQTT packets incl. CONNECT,
PUBACKs, PINGs; the TCP/IP headers are estimated separately per segment).

    .venv/bin/python scripts/benchmark_bandwidth.py --corpus ../shared/corpus/en
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import tempfile
import threading
import time
import wave
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgescribe.daemon.config.mqtt import HealthConfig, MqttConfig  # noqa: E402
from edgescribe.daemon.events import Confidence, TranscriptEvent  # noqa: E402
from edgescribe.daemon.health import HealthReporter, HealthSources, InferenceHealth, ServiceInfo, StreamHealth  # noqa: E402
from edgescribe.daemon.publisher import Publisher  # noqa: E402
from edgescribe.daemon.streaming import DropCounts, SpeculationCounts  # noqa: E402
from tests.fixtures.mosquitto import Mosquitto, Subscriber, free_port  # noqa: E402

RAW_AUDIO_BYTES_PER_HOUR = 16_000 * 2 * 3600  # 16 kHz, 16-bit, mono
# IPv4 20 + TCP 20 + timestamps option 12 per segment; paho sets TCP_NODELAY, so on a real
# network each MQTT packet is about one segment (bare TCP ACKs and Ethernet framing not counted).
TCP_IP_HEADER_BYTES = 52


class PacketCounter:
    """Counts MQTT control packets in one direction of a byte stream (fixed header: type + varint length)."""

    def __init__(self):
        self.packets = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            length, multiplier, index = 0, 1, 1
            while index < len(self._buffer):
                byte = self._buffer[index]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                index += 1
                if not byte & 0x80:
                    break
            else:
                return  # header incomplete
            if len(self._buffer) < index + length:
                return
            del self._buffer[: index + length]
            self.packets += 1


class CountingProxy:
    """Loopback TCP proxy counting bytes and MQTT packets each way."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.up = self.down = 0
        self.up_packets, self.down_packets = PacketCounter(), PacketCounter()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except socket.timeout:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, upward: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                with self._lock:
                    if upward:
                        self.up += len(data)
                        self.up_packets.feed(data)
                    else:
                        self.down += len(data)
                        self.down_packets.feed(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        time.sleep(0.3)  # the accept loop notices within its 0.2-s timeout
        self._server.close()


@contextmanager
def proxied_broker(workdir: Path) -> Iterator[tuple[Mosquitto, CountingProxy]]:
    """A local mosquitto and a counting proxy in front of it; the device connects to the proxy."""
    broker = Mosquitto(workdir / "broker")
    broker.start()
    proxy = CountingProxy(broker.port)
    try:
        yield broker, proxy
    finally:
        proxy.close()
        broker.stop()


@dataclass(frozen=True)
class WireTraffic:
    """What a proxy counted, scaled to one hour of speech."""

    up: float  # device -> broker MQTT bytes
    down: float  # broker -> device MQTT bytes
    packets: float  # MQTT packets both ways
    headers: float  # estimated TCP/IP header bytes of those packets

    @classmethod
    def per_hour(cls, proxy: CountingProxy, hours: float) -> WireTraffic:
        packets = (proxy.up_packets.packets + proxy.down_packets.packets) / hours
        return cls(proxy.up / hours, proxy.down / hours, packets, packets * TCP_IP_HEADER_BYTES)


def utterances(corpus: Path, max_utterance_s: float) -> list[tuple[float, str]]:
    """(duration, text) per recording; long ones cut into max_utterance_s pieces as the segmenter does."""
    texts = dict(line.split("\t", 1) for line in (corpus / "transcripts.tsv").read_text().splitlines() if "\t" in line)
    result = []
    for utterance_id, text in sorted(texts.items()):
        wav = corpus / f"{utterance_id}.wav"
        if wav.exists():
            with wave.open(str(wav)) as reader:
                duration = reader.getnframes() / reader.getframerate()
            words = text.split()
            pieces = max(1, math.ceil(duration / max_utterance_s))
            for piece in range(pieces):
                share = words[len(words) * piece // pieces: len(words) * (piece + 1) // pieces]
                result.append((duration / pieces, " ".join(share)))
    if not result:
        raise SystemExit(f"no WAV + transcript pairs in {corpus}")
    return result


def transcript(stream, index, sequence, kind, words, audio_start, audio_end, wall0) -> TranscriptEvent:
    text = " ".join(words)
    return TranscriptEvent(
        stream=stream, utterance_id=f"{stream}-{int(wall0 * 1000)}-{index}", sequence=sequence, kind=kind,
        stable_text=text if kind == "final" else " ".join(words[:-2]), unstable_text="" if kind == "final" else
        " " + " ".join(words[-2:]), audio_start=audio_start, audio_end=audio_end, wall_start=wall0 + audio_start,
        wall_end=wall0 + audio_end, language="en",
        confidence=Confidence(avg_logprob=-0.2371, no_speech_prob=0.0123, compression_ratio=1.318, temperature=0.0),
        model="tiny.en", backend="tensorrt", latency_s=0.734)


def replay(publish: Callable[[TranscriptEvent], None], health: Callable[[float], None], corpus: Path, seconds: float,
           max_utterance_s: float) -> dict[str, int]:
    """Hand an audio-time schedule to ``publish`` (transcripts) and ``health`` (called with the
    audio time of each snapshot) as fast as the device takes it; returns message counts."""
    counts = {"partial": 0, "final": 0, "health": 0}
    pool = utterances(corpus, max_utterance_s)
    wall0, audio, index, next_health = time.time(), 0.0, 0, 30.0
    while audio < seconds:
        duration, text = pool[index % len(pool)]
        words = text.split()
        for second in range(1, int(duration) + 1):  # a partial every second of speech
            shown = words[: max(1, round(len(words) * second / duration))]
            publish(transcript("line1", index, second - 1, "partial", shown, audio, audio + second, wall0))
            counts["partial"] += 1
        publish(transcript("line1", index, int(duration), "final", words, audio, audio + duration, wall0))
        counts["final"] += 1
        audio += duration
        while next_health <= audio:
            health(next_health)
            counts["health"] += 1
            next_health += 30.0
        index += 1
        time.sleep(0.002 * (int(duration) + 1))  # let the sending thread keep up (the partials queue is bounded)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus" / "en")
    parser.add_argument("--hours", type=float, default=1.0, help="hours of continuous speech to replay")
    parser.add_argument("--protocol", default="5", choices=("3.1.1", "5"), help="MQTT version (5 uses topic aliases)")
    parser.add_argument("--max-utterance", type=float, default=25.0,
                        help="longest utterance in seconds (audio.segmenter max_utterance_s default)")
    args = parser.parse_args()
    seconds = args.hours * 3600

    with tempfile.TemporaryDirectory() as workdir, proxied_broker(Path(workdir)) as (broker, proxy):
        config = MqttConfig(host="127.0.0.1", port=proxy.port, protocol=args.protocol, drain_rate=100_000,
                            inflight_window=100)
        publisher = Publisher.from_config(config, "orin-line1", Path(workdir) / "state")
        sources = HealthSources(
            service=lambda: ServiceInfo("0.1.0", "tiny.en", "tensorrt", "orin-nx-16g/trt10.3/fp16/tiny.en-3f2a9c"),
            # an hour in: counters with as many digits as a real device's (bytes are what is measured)
            streams=lambda: {"line1": StreamHealth("up", -27.4, 0, 0.0, 3605, 812,
                                                   SpeculationCounts(started=431, reused=236, discarded=195),
                                                   snr_db=13.8, dropped=DropCounts(12, 1, 27, 9), discarded_bursts=140,
                                                   length_cuts=2)},
            inference=lambda: InferenceHealth(0.083, 0.41, 0.88, 0),
            outbox=publisher.outbox.stats, mqtt=publisher.link.stats, messages=publisher.stats)
        reporter = HealthReporter(HealthConfig(sysfs_root=str(REPO / "tests" / "data" / "orin-sysfs")), "orin-line1",
                                  Path(workdir), lambda snapshot: None, sources)
        payload_bytes: dict[str, int] = {}
        tally = Subscriber(broker.port, ["edgescribe/#"]).connect()
        publisher.start()
        if not publisher.link.wait_connected(10):
            raise SystemExit(f"could not connect: {publisher.link.stats().last_error}")
        started = time.monotonic()
        counts = replay(publisher.publish, lambda _audio_s: publisher.publish_health(reporter.snapshot()),
                        args.corpus, seconds, args.max_utterance)
        deadline = time.monotonic() + 60
        while (publisher.outbox.stats().depth or publisher.stats().in_flight) and time.monotonic() < deadline:
            time.sleep(0.1)
        publisher.stop()
        elapsed = time.monotonic() - started
        time.sleep(0.5)
        tally.disconnect()
        for message in tally.messages:
            kind = message.topic.rsplit("/", 1)[1]
            payload_bytes[kind] = payload_bytes.get(kind, 0) + len(message.topic) + len(message.payload)

    stats = publisher.stats()
    per_hour = 1 / args.hours
    wire = WireTraffic.per_hour(proxy, args.hours)
    up, down, headers = wire.up, wire.down, wire.headers
    total = up + down + headers
    print(f"replayed {seconds / 3600:.2f} h of speech in {elapsed:.1f} s: {counts['partial']} partials "
          f"({stats.partials_sent} sent, {stats.partials_dropped} dropped), {counts['final']} finals, "
          f"{counts['health']} health snapshots")
    print(f"device -> broker  MQTT bytes/h: {up / 1e6:8.3f} MB")
    print(f"broker -> device  MQTT bytes/h: {down / 1e6:8.3f} MB")
    print(f"TCP/IP headers (est.)      /h: {headers / 1e6:8.3f} MB ({TCP_IP_HEADER_BYTES} B x "
          f"{wire.packets:.0f} MQTT packets)")
    for kind, size in sorted(payload_bytes.items()):
        print(f"  {kind:12s} topic+payload as subscribers see it /h: {size * per_hour / 1e6:6.3f} MB")
    mqtt_total = up + down
    print(f"raw 16 kHz 16-bit mono audio /h: {RAW_AUDIO_BYTES_PER_HOUR / 1e6:.1f} MB")
    print(f"MQTT bytes (TCP payload): {100 * mqtt_total / RAW_AUDIO_BYTES_PER_HOUR:.2f} % of raw audio (target < 1 %); "
          f"with estimated TCP/IP headers: {100 * total / RAW_AUDIO_BYTES_PER_HOUR:.2f} %")
    return 0 if stats.partials_dropped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
