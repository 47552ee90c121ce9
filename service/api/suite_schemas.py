"""Marshmallow schemas of suite parameters, built from the engine's ``Param`` definitions.

One definition (``Suite.params``) serves the engine's validation, ``robustaudit suites`` and
these schemas, so the OpenAPI document describes exactly what the engine accepts. Suites
come from the registry: a suite added to ``SUITES`` appears here without a change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from marshmallow import Schema, ValidationError, fields, pre_load, validate

from worker.engine.params import Param, ParamKind, ParamSchema
from worker.engine.suites import SUITES


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _bounds(p: Param) -> list[validate.Validator]:
    if p.minimum is None and p.maximum is None:
        return []
    return [validate.Range(min=p.minimum, max=p.maximum)]


def _int_bounds(p: Param) -> list[validate.Validator]:
    """An integer parameter without its own bounds still fits an int64 (torch, the store), and the
    OpenAPI document says so."""
    low = INT64_MIN if p.minimum is None else max(INT64_MIN, math.ceil(p.minimum))
    high = INT64_MAX if p.maximum is None else min(INT64_MAX, math.floor(p.maximum))
    return [validate.Range(min=low, max=high)]


def _items(p: Param) -> list[validate.Validator]:
    return [validate.Length(min=p.min_items, max=p.max_items)]


_FIELD_BUILDERS: dict[ParamKind, Callable[[Param, str], fields.Field]] = {
    ParamKind.INT: lambda p, _: fields.Integer(strict=True, validate=_int_bounds(p)),
    ParamKind.FLOAT: lambda p, _: fields.Float(validate=_bounds(p)),
    ParamKind.BOOL: lambda p, _: fields.Boolean(truthy={True}, falsy={False}),
    ParamKind.STR: lambda p, _: fields.String(validate=validate.Length(min=1)),
    ParamKind.CHOICE: lambda p, _: fields.String(validate=validate.OneOf(p.choices)),
    ParamKind.INT_LIST: lambda p, _: fields.List(fields.Integer(strict=True, validate=_int_bounds(p)),
                                                 validate=_items(p)),
    ParamKind.FLOAT_LIST: lambda p, _: fields.List(fields.Float(validate=_bounds(p)), validate=_items(p)),
    ParamKind.CHOICE_LIST: lambda p, _: fields.List(fields.String(validate=validate.OneOf(p.choices)),
                                                    validate=_items(p)),
    ParamKind.STR_LIST: lambda p, _: fields.List(fields.String(validate=validate.Length(min=1)), validate=_items(p)),
    ParamKind.JSON: lambda p, _: fields.Raw(),
    ParamKind.OBJECT: lambda p, name: fields.Nested(params_schema(p.schema or ParamSchema(), name)),
}


def _field(p: Param, owner: str) -> fields.Field:
    f = _FIELD_BUILDERS[p.kind](p, f"{owner}{_camel(p.name)}")
    f.allow_none = p.nullable
    doc: dict[str, Any] = {"description": p.help}
    if p.default is not None or p.nullable:
        doc["default"] = p.default
    f.metadata = {**f.metadata, **doc}
    return f


def params_schema(schema: ParamSchema, name: str, prefix: str = "") -> type[Schema]:
    """A marshmallow schema class for one parameter schema; unknown keys are refused, and a
    parameter of an older shape (``schema.moved``) is refused naming its new place."""
    attrs: dict[str, Any] = {p.name: _field(p, name) for p in schema.params}
    base = _refusing_moved(schema, prefix) if schema.moved else Schema
    return base.from_dict(attrs, name=f"{name}Params")  # unknown keys: marshmallow's default RAISE


def _refusing_moved(schema: ParamSchema, prefix: str) -> type[Schema]:
    class RefusingMoved(Schema):
        @pre_load
        def refuse_moved(self, data: Any, **_: Any) -> Any:
            found = schema.moved_errors(data, prefix=prefix) if isinstance(data, Mapping) else {}
            if found:
                raise ValidationError({k[len(prefix):]: [v] for k, v in found.items()})
            return data

    return RefusingMoved


def suites_schema() -> type[Schema]:
    """``{suite name: params}`` with one optional, nullable field per registered suite."""
    attrs: dict[str, Any] = {}
    for name, suite in sorted(SUITES.items()):
        nested = params_schema(suite.params, _camel(name), prefix=f"{name}.")
        attrs[name] = fields.Nested(nested, allow_none=True, metadata={"description": suite.description})
    return Schema.from_dict(attrs, name="Suites")
