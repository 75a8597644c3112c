"""Conversions between JSON-like Python values and ``google.protobuf.Struct``.

A ``Struct`` carries every number as a double. Integral numbers come back as ``int`` (as the Rust
side does), so a schema with ``"type": "integer"`` and a handler annotated ``int`` both accept
them. A ``Struct`` must be an object: any other value travels wrapped as ``{"value": v}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

_MAX_SAFE = 2**53


def to_value(v: Any) -> struct_pb2.Value:
    """A JSON-like value as a protobuf ``Value``."""
    out = struct_pb2.Value()
    if v is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, (int, float)):
        out.number_value = float(v)
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, Mapping):
        out.struct_value.CopyFrom(to_struct(v))
    elif isinstance(v, (list, tuple)):
        out.list_value.values.extend(to_value(x) for x in v)
    else:
        raise TypeError(f"{type(v).__name__} is not JSON: {v!r}")
    return out


def to_struct(obj: Any) -> struct_pb2.Struct:
    """A mapping as a ``Struct``; any other value is wrapped as ``{"value": obj}``."""
    if not isinstance(obj, Mapping):
        obj = {"value": obj}
    s = struct_pb2.Struct()
    for k, v in obj.items():
        if not isinstance(k, str):
            raise TypeError(f"object keys must be strings, not {type(k).__name__}: {k!r}")
        s.fields[k].CopyFrom(to_value(v))
    return s


def from_value(v: struct_pb2.Value) -> Any:
    """A protobuf ``Value`` as a JSON-like Python value."""
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        n = v.number_value
        if math.isfinite(n) and n == int(n) and abs(n) < _MAX_SAFE:
            return int(n)
        return n
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return from_struct(v.struct_value)
    if kind == "list_value":
        return [from_value(x) for x in v.list_value.values]
    return None


def from_struct(s: struct_pb2.Struct | None) -> dict[str, Any]:
    """A ``Struct`` as a dict (``{}`` for None)."""
    if s is None:
        return {}
    return {k: from_value(v) for k, v in s.fields.items()}


def unwrap(obj: dict[str, Any]) -> Any:
    """A result as the handler returned it: ``{"value": v}`` (a non-object result) gives ``v``."""
    if len(obj) == 1 and "value" in obj:
        return obj["value"]
    return obj
