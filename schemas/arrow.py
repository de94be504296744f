"""Derive a pyarrow schema from a pydantic model, so each record format is written once.

Python types map to Arrow types (int -> int64, float -> float64, str -> string, bytes -> binary,
bool -> bool, list[X] -> list<X>, a nested model -> struct, X | None -> nullable X). A field can
pick a narrower Arrow type with `Annotated[int, ArrowType(pa.int32())]`.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel


@dataclass(frozen=True)
class ArrowType:
    """Annotation metadata choosing the Arrow type of a field."""

    type: pa.DataType


_SCALARS: dict[type, pa.DataType] = {
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
    bytes: pa.binary(),
    bool: pa.bool_(),
}


def _arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) of a Python type annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        chosen = next((e.type for e in extras if isinstance(e, ArrowType)), None)
        inner, nullable = _arrow_type(base)
        return (chosen or inner), nullable
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"only X | None unions map to Arrow, not {annotation}")
        inner, _ = _arrow_type(args[0])
        return inner, True
    if origin is list:
        (item,) = typing.get_args(annotation)
        inner, nullable = _arrow_type(item)
        return pa.list_(pa.field("item", inner, nullable=nullable)), False
    if origin is typing.Literal:  # a closed set of strings: stored as strings
        if not all(isinstance(v, str) for v in typing.get_args(annotation)):
            raise TypeError(f"only string literals map to Arrow, not {annotation}")
        return pa.string(), False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(arrow_fields(annotation)), False
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    raise TypeError(f"no Arrow type for {annotation!r}")


def arrow_fields(model: type[BaseModel]) -> list[pa.Field]:
    hints = typing.get_type_hints(model, include_extras=True)
    fields = []
    for name, info in model.model_fields.items():
        arrow, nullable = _arrow_type(hints[name])
        metadata = {b"description": info.description.encode()} if info.description else None
        fields.append(pa.field(name, arrow, nullable=nullable, metadata=metadata))
    return fields


def arrow_schema(model: type[BaseModel], metadata: dict[str, str] | None = None) -> pa.Schema:
    return pa.schema(arrow_fields(model), metadata={k.encode(): v.encode() for k, v in (metadata or {}).items()})
