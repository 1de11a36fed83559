"""Sparkplug B payloads: typed metrics in, protobuf bytes out (and back, for tools and tests).

Only the datatypes edgescribe publishes are mapped; each lives in the protobuf field the
specification assigns to it (integers up to 32 bits in ``int_value``, 64-bit ones and
DateTime in ``long_value``, Float/Double/Boolean/String in their own). Timestamps are UTC
milliseconds since the epoch, as the specification requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Optional, Union

from edgescribe.daemon.sparkplug import sparkplug_b_pb2 as pb

Value = Union[bool, int, float, str, None]


class DataType(IntEnum):
    """The Sparkplug datatype numbers (``DataType`` in sparkplug_b.proto) edgescribe uses."""

    Int32 = pb.Int32
    Int64 = pb.Int64
    UInt32 = pb.UInt32
    UInt64 = pb.UInt64
    Float = pb.Float
    Double = pb.Double
    Boolean = pb.Boolean
    String = pb.String
    DateTime = pb.DateTime


_VALUE_FIELD = {
    DataType.Int32: "int_value",
    DataType.UInt32: "int_value",
    DataType.Int64: "long_value",
    DataType.UInt64: "long_value",
    DataType.DateTime: "long_value",
    DataType.Float: "float_value",
    DataType.Double: "double_value",
    DataType.Boolean: "boolean_value",
    DataType.String: "string_value",
}


@dataclass(frozen=True)
class Metric:
    """One metric as it goes on the wire: ``name`` and datatype in births, ``alias`` (0 = none)."""

    datatype: DataType
    value: Value
    name: Optional[str] = None
    alias: int = 0
    timestamp_ms: Optional[int] = None
    historical: bool = False
    transient: bool = False


def ms(posix_seconds: float) -> int:
    return int(round(posix_seconds * 1000))


def encode(metrics: list[Metric], timestamp_ms: int, seq: Optional[int]) -> bytes:
    """A Payload; ``seq`` None only for NDEATH, which carries no sequence number."""
    payload = pb.Payload(timestamp=timestamp_ms)
    if seq is not None:
        payload.seq = seq
    for metric in metrics:
        _fill(payload.metrics.add(), metric)
    return payload.SerializeToString()


def _fill(out: "pb.Payload.Metric", metric: Metric) -> None:
    if metric.name is not None:
        out.name = metric.name
    if metric.alias:
        out.alias = metric.alias
    if metric.name is not None:  # data by alias leaves it out: the birth declared it (spec 6.4.10)
        out.datatype = int(metric.datatype)
    if metric.timestamp_ms is not None:
        out.timestamp = metric.timestamp_ms
    if metric.historical:
        out.is_historical = True
    if metric.transient:
        out.is_transient = True
    if metric.value is None:
        out.is_null = True
        return
    value = metric.value
    if metric.datatype in (DataType.Int32, DataType.Int64):
        # Signed values travel as their two's complement in the unsigned field (spec 6.4.16).
        bits = 32 if metric.datatype == DataType.Int32 else 64
        value = int(value) & ((1 << bits) - 1)
    setattr(out, _VALUE_FIELD[metric.datatype], value)


def decode(data: bytes) -> "pb.Payload":
    """Parse a Sparkplug B payload (raises ``google.protobuf.message.DecodeError`` if it is not one)."""
    payload = pb.Payload()
    payload.ParseFromString(data)
    return payload


def metric_value(metric: "pb.Payload.Metric") -> Value:
    """The Python value of a decoded metric (None when it is null or carries no value)."""
    if metric.is_null or metric.WhichOneof("value") is None:
        return None
    value = getattr(metric, metric.WhichOneof("value"))
    if metric.datatype == DataType.Int32 and value >= 1 << 31:
        return value - (1 << 32)
    if metric.datatype == DataType.Int64 and value >= 1 << 63:
        return value - (1 << 64)
    return value


def to_json(payload: "pb.Payload") -> dict:
    """A decoded payload as plain JSON-ready data (for docs, logs and tests)."""
    names = {int(value): name for name, value in pb.DataType.items()}
    out: dict = {"timestamp": payload.timestamp}
    if payload.HasField("seq"):
        out["seq"] = payload.seq
    metrics = []
    for metric in payload.metrics:
        item: dict = {}
        if metric.HasField("name"):
            item["name"] = metric.name
        if metric.HasField("alias"):
            item["alias"] = metric.alias
        if metric.HasField("timestamp"):
            item["timestamp"] = metric.timestamp
        if metric.HasField("datatype"):
            item["datatype"] = names.get(metric.datatype, metric.datatype)
        for flag in ("is_historical", "is_transient", "is_null"):
            if getattr(metric, flag):
                item[flag] = True
        if not metric.is_null:
            item["value"] = metric_value(metric)
        metrics.append(item)
    out["metrics"] = metrics
    return out
