"""The Sparkplug B bookkeeping of one edge node: topics, bdSeq, seq, aliases, births, data, deaths.

No I/O and no threads: the edge node (edge_node.py) tells it what happened and sends the
messages it returns, in the order returned, on one MQTT connection. The rules it keeps
are the specification's (Eclipse Sparkplug 3.0):

* every message but NDEATH carries ``seq``: 0 on NBIRTH, then one more per message,
  255 wrapping to 0;
* NBIRTH declares every node metric by name with an alias, the session's ``bdSeq`` (the
  same number as the NDEATH registered as the connection's will) and
  ``Node Control/Rebirth`` = false; DBIRTH does the same for one device (one stream);
* NDATA and DDATA carry only metrics whose value changed, by alias alone; a device gets
  data only between its DBIRTH and its DDEATH, and only after the NBIRTH of the session;
* births, data and device deaths go at QoS 0, not retained; NDEATH at QoS 1.

Aliases are unique across the node and all its devices and never reused for another
name while the process lives, so a host that cached them is never misled.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from edgescribe.daemon.events import TranscriptEvent
from edgescribe.daemon.mqtt_link import Message
from edgescribe.daemon.sparkplug.payload import DataType, Metric, Value, decode, encode, metric_value, ms

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"

# Node metrics: name -> datatype. Temperatures are added per zone the device reports.
NODE_METRICS = {
    "Properties/Model": DataType.String,
    "Properties/Backend": DataType.String,
    "Uptime (s)": DataType.Double,
    "Performance/Real-Time Factor": DataType.Double,
    "Performance/Latency p95 (s)": DataType.Double,
    "Outbox Depth": DataType.UInt32,
}
TEMPERATURE_PREFIX = "Temperature/"  # + zone + " (C)", Float

# Device (stream) metrics: name -> datatype.
FINAL_TEXT = "Transcript/Final"
PARTIAL_TEXT = "Transcript/Partial"
DEVICE_METRICS = {
    FINAL_TEXT: DataType.String,
    "Transcript/Utterance ID": DataType.String,
    "Transcript/Language": DataType.String,
    "Transcript/Duration (s)": DataType.Double,
    "Transcript/Latency (s)": DataType.Double,
    "Confidence/Avg Logprob": DataType.Double,
    "Confidence/No Speech Prob": DataType.Double,
    "Confidence/Compression Ratio": DataType.Double,
    PARTIAL_TEXT: DataType.String,
    "Level (dBFS)": DataType.Double,
    "State": DataType.String,
}


@dataclass(frozen=True)
class NodeStatus:
    """The node figures a birth declares and NDATA updates (None: not known yet)."""

    model: Optional[str] = None
    backend: Optional[str] = None
    uptime_s: float = 0.0
    real_time_factor: Optional[float] = None
    latency_p95_s: Optional[float] = None
    outbox_depth: int = 0
    temperatures_c: dict[str, float] = field(default_factory=dict)

    def values(self) -> dict[str, Value]:
        values: dict[str, Value] = {
            "Properties/Model": self.model,
            "Properties/Backend": self.backend,
            "Uptime (s)": round(self.uptime_s, 1),
            "Performance/Real-Time Factor": self.real_time_factor,
            "Performance/Latency p95 (s)": self.latency_p95_s,
            "Outbox Depth": self.outbox_depth,
        }
        for zone, celsius in sorted(self.temperatures_c.items()):
            values[f"{TEMPERATURE_PREFIX}{zone} (C)"] = celsius
        return values


@dataclass(frozen=True)
class Final:
    """A final transcript as the Sparkplug outbox keeps it until the broker has it."""

    stream: str
    utterance_id: str
    text: str
    language: str
    wall_start: float
    wall_end: float
    latency_s: float
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float

    @classmethod
    def from_event(cls, event: TranscriptEvent) -> "Final":
        return cls(event.stream, event.utterance_id, event.text, event.language, event.wall_start, event.wall_end,
                   event.latency_s, event.confidence.avg_logprob, event.confidence.no_speech_prob,
                   event.confidence.compression_ratio)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Final":
        return cls(**json.loads(data))

    def values(self) -> dict[str, Value]:
        return {
            FINAL_TEXT: self.text,
            "Transcript/Utterance ID": self.utterance_id,
            "Transcript/Language": self.language,
            "Transcript/Duration (s)": round(self.wall_end - self.wall_start, 3),
            "Transcript/Latency (s)": round(self.latency_s, 3),
            "Confidence/Avg Logprob": round(self.avg_logprob, 4),
            "Confidence/No Speech Prob": round(self.no_speech_prob, 4),
            "Confidence/Compression Ratio": round(self.compression_ratio, 4),
        }


def rebirth_requested(payload: bytes) -> bool:
    """True if an NCMD payload asks for ``Node Control/Rebirth`` = true (by name; hosts send names)."""
    try:
        decoded = decode(payload)
    except Exception:  # protobuf raises DecodeError, or ValueError for bad UTF-8
        return False
    return any(metric.name == REBIRTH and metric_value(metric) is True for metric in decoded.metrics)


class EdgeSession:
    def __init__(self, group_id: str, edge_node_id: str, streams: list[str]):
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.streams = list(streams)
        self._seq = 0
        self._node_born = False
        self._born_devices: set[str] = set()
        self._aliases: dict[str, int] = {}  # "<stream>/<metric>" or "<metric>" (node) -> alias
        self._last: dict[str, Value] = {}  # same keys -> last value sent this session
        self._node_names: list[str] = []  # node metrics declared by the current NBIRTH

    # -- topics ------------------------------------------------------------------------------

    def node_topic(self, kind: str) -> str:
        return f"{NAMESPACE}/{self.group_id}/{kind}/{self.edge_node_id}"

    def device_topic(self, kind: str, stream: str) -> str:
        return f"{NAMESPACE}/{self.group_id}/{kind}/{self.edge_node_id}/{stream}"

    # -- state ---------------------------------------------------------------------------------

    @property
    def node_born(self) -> bool:
        return self._node_born

    def device_born(self, stream: str) -> bool:
        return stream in self._born_devices

    @property
    def born_devices(self) -> set[str]:
        return set(self._born_devices)

    def declares(self, status: NodeStatus) -> bool:
        """Whether the current NBIRTH declared every node metric of ``status`` (a temperature zone
        first seen after it needs a rebirth: data may only carry metrics the birth declared)."""
        return set(status.values()) <= set(self._node_names)

    def end(self) -> None:
        """The MQTT session ended: nothing is born any more (the next connection births again)."""
        self._node_born = False
        self._born_devices.clear()

    # -- messages -------------------------------------------------------------------------------

    def death(self, bd_seq: int) -> Message:
        """NDEATH: the will registered at CONNECT, and what a clean stop publishes; no seq."""
        payload = encode([Metric(DataType.Int64, bd_seq, name=BDSEQ)], ms(time.time()), seq=None)
        return Message(self.node_topic("NDEATH"), payload, qos=1, retain=False)

    def node_birth(self, bd_seq: int, status: NodeStatus, now: float) -> Message:
        """NBIRTH (seq 0): every node metric by name and alias. Also used for a rebirth,
        with the same ``bd_seq``: devices must then be born again."""
        self._seq = 0
        self._node_born = True
        self._born_devices.clear()
        stamp = ms(now)
        metrics = [Metric(DataType.Int64, bd_seq, name=BDSEQ, timestamp_ms=stamp),
                   Metric(DataType.Boolean, False, name=REBIRTH, timestamp_ms=stamp)]
        values = status.values()
        self._node_names = list(values)
        for name, value in values.items():
            metrics.append(Metric(_node_datatype(name), value, name=name, alias=self._alias(name), timestamp_ms=stamp))
            self._last[name] = value
        return self._message(self.node_topic("NBIRTH"), metrics, now)

    def node_data(self, status: NodeStatus, now: float) -> Optional[Message]:
        """NDATA with the node metrics that changed since they were last sent (None if none did)."""
        self._require_node()
        stamp = ms(now)
        metrics = []
        for name, value in status.values().items():
            if name not in self._node_names or self._last.get(name) == value:
                continue  # a zone that appeared after the birth is declared by a rebirth first
            metrics.append(Metric(_node_datatype(name), value, alias=self._aliases[name], timestamp_ms=stamp))
            self._last[name] = value
        return self._message(self.node_topic("NDATA"), metrics, now) if metrics else None

    def device_birth(self, stream: str, level_dbfs: Optional[float], now: float) -> Message:
        self._require_node()
        stamp = ms(now)
        values: dict[str, Value] = {name: None for name in DEVICE_METRICS}
        values.update({"Level (dBFS)": level_dbfs, "State": "up"})
        metrics = []
        for name, value in values.items():
            key = f"{stream}/{name}"
            metrics.append(Metric(DEVICE_METRICS[name], value, name=name, alias=self._alias(key), timestamp_ms=stamp))
            self._last[key] = value
        self._born_devices.add(stream)
        return self._message(self.device_topic("DBIRTH", stream), metrics, now)

    def device_death(self, stream: str, now: float) -> Message:
        self._require_device(stream)
        self._born_devices.discard(stream)
        return self._message(self.device_topic("DDEATH", stream), [], now)

    def final(self, final: Final, historical: bool, now: float) -> Message:
        """DDATA with one final transcript, stamped with the time its speech began; ``historical``
        for finals kept while the broker or the primary host was away."""
        self._require_device(final.stream)
        stamp = ms(final.wall_start)
        metrics = []
        for name, value in final.values().items():
            key = f"{final.stream}/{name}"
            metrics.append(Metric(DEVICE_METRICS[name], value, alias=self._aliases[key], timestamp_ms=stamp,
                                  historical=historical))
            if not historical:
                self._last[key] = value
        return self._message(self.device_topic("DDATA", final.stream), metrics, now)

    def device_data(self, stream: str, values: dict[str, Value], now: float) -> Optional[Message]:
        """DDATA with those of ``values`` (device metric names) that changed; None if none did.
        Partial text is always sent: each partial is news even when its text repeats."""
        self._require_device(stream)
        stamp = ms(now)
        metrics = []
        for name, value in values.items():
            key = f"{stream}/{name}"
            if name != PARTIAL_TEXT and self._last.get(key) == value:
                continue
            metrics.append(Metric(DEVICE_METRICS[name], value, alias=self._aliases[key], timestamp_ms=stamp))
            self._last[key] = value
        return self._message(self.device_topic("DDATA", stream), metrics, now) if metrics else None

    # -- helpers -----------------------------------------------------------------------------------

    def _message(self, topic: str, metrics: list[Metric], now: float) -> Message:
        payload = encode(metrics, ms(now), seq=self._seq)
        self._seq = (self._seq + 1) % 256
        return Message(topic, payload, qos=0, retain=False)

    def _alias(self, key: str) -> int:
        if key not in self._aliases:
            self._aliases[key] = len(self._aliases) + 1
        return self._aliases[key]

    def _require_node(self) -> None:
        if not self._node_born:
            raise RuntimeError(f"{self.edge_node_id}: no NBIRTH in this session yet")

    def _require_device(self, stream: str) -> None:
        self._require_node()
        if stream not in self._born_devices:
            raise RuntimeError(f"{self.edge_node_id}/{stream}: no DBIRTH in this session")


def _node_datatype(name: str) -> DataType:
    return DataType.Float if name.startswith(TEMPERATURE_PREFIX) else NODE_METRICS[name]

