"""The vendored Sparkplug B definition, the committed generated module, and the payload codec."""

from __future__ import annotations

import re

import pytest
from google.protobuf import descriptor

from edgescribe.daemon.sparkplug import sparkplug_b_pb2 as pb
from edgescribe.daemon.sparkplug.payload import DataType, Metric, decode, encode, metric_value, to_json
from tests.fixtures.sparkplug_host import PROTO
from tests.fixtures.sparkplug_host import decode as host_decode

_FIELD = re.compile(r"^\s*(optional|repeated|required)?\s*([A-Za-z_][\w.]*)\s+(\w+)\s*=\s*(\d+)\s*;", re.M)
_SCALARS = {"string": descriptor.FieldDescriptor.TYPE_STRING, "uint32": descriptor.FieldDescriptor.TYPE_UINT32,
            "uint64": descriptor.FieldDescriptor.TYPE_UINT64, "float": descriptor.FieldDescriptor.TYPE_FLOAT,
            "double": descriptor.FieldDescriptor.TYPE_DOUBLE, "bool": descriptor.FieldDescriptor.TYPE_BOOL,
            "bytes": descriptor.FieldDescriptor.TYPE_BYTES}


def _all_fields(message: descriptor.Descriptor) -> dict[str, descriptor.FieldDescriptor]:
    fields = {f.name: f for f in message.fields}
    for nested in message.nested_types:
        for name, found in _all_fields(nested).items():
            fields[f"{nested.name}.{name}"] = found
    return fields


def test_committed_module_declares_every_field_of_the_vendored_proto():
    """A changed .proto with a stale sparkplug_b_pb2.py (or the reverse) fails here."""
    text = re.sub(r"//.*", "", PROTO.read_text())
    declared = [(m.group(2), m.group(3), int(m.group(4))) for m in _FIELD.finditer(text)]
    generated = {f.name: f for f in _all_fields(pb.Payload.DESCRIPTOR).values()}
    generated_by_number = {(f.containing_type.name, f.number): f for f in _all_fields(pb.Payload.DESCRIPTOR).values()}
    assert len(declared) == len(_all_fields(pb.Payload.DESCRIPTOR)), "field count differs from the .proto"
    for type_name, name, number in declared:
        field = generated[name] if name in generated else None
        assert field is not None, f"{name} = {number} is in the .proto but not in sparkplug_b_pb2.py"
        matches = [f for (owner, num), f in generated_by_number.items() if f.name == name and num == number]
        assert matches, f"{name} has another number in sparkplug_b_pb2.py than {number}"
        if type_name in _SCALARS:
            assert any(f.type == _SCALARS[type_name] for f in matches), f"{name}: not {type_name}"
    enum_values = dict(re.findall(r"^\s*(\w+)\s*=\s*(\d+)\s*;", text.split("message Payload")[0], re.M))
    assert {k: int(v) for k, v in enum_values.items()} == dict(pb.DataType.items())


@pytest.mark.parametrize("datatype,value", [
    (DataType.Int32, -5), (DataType.Int32, 2**31 - 1), (DataType.Int64, -(2**40)), (DataType.UInt32, 2**32 - 1),
    (DataType.UInt64, 2**64 - 1), (DataType.Double, -61.25), (DataType.Float, 41.5), (DataType.Boolean, True),
    (DataType.Boolean, False), (DataType.String, "Stopp an Presse drei, bitte"), (DataType.DateTime, 1796380222708),
    (DataType.String, None),
])
def test_metric_values_round_trip(datatype, value):
    data = encode([Metric(datatype, value, name="m", alias=7, timestamp_ms=5)], timestamp_ms=9, seq=3)
    [metric] = decode(data).metrics
    assert metric_value(metric) == value
    assert metric.datatype == datatype and metric.alias == 7 and metric.timestamp == 5
    assert metric.is_null == (value is None)


def test_seq_zero_is_on_the_wire_and_ndeath_has_none():
    """proto2 would drop an unset field; seq 0 must still be present (NBIRTH), NDEATH must have none."""
    assert host_decode(encode([], 1, seq=0)).HasField("seq")
    assert not host_decode(encode([], 1, seq=None)).HasField("seq")


def test_to_json_names_datatypes_and_flags():
    data = encode([Metric(DataType.String, "hi", alias=3, timestamp_ms=2, historical=True),
                   Metric(DataType.Double, None, name="d", alias=4)], 1, seq=4)
    assert to_json(decode(data)) == {"timestamp": 1, "seq": 4, "metrics": [
        {"alias": 3, "timestamp": 2, "is_historical": True, "value": "hi"},  # data by alias: no datatype
        {"name": "d", "alias": 4, "datatype": "Double", "is_null": True}]}
