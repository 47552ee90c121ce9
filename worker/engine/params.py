"""Parameter schemas for suites and attacks: one definition, validated in one place.

The engine validates request parameters with these; the service builds its marshmallow
request schema from :meth:`ParamSchema.describe` so that the two never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from .errors import SpecError

E = TypeVar("E", bound=Enum)


class ParamKind(str, Enum):
    INT = "integer"
    FLOAT = "number"
    BOOL = "boolean"
    STR = "string"
    CHOICE = "choice"
    INT_LIST = "integer_list"
    FLOAT_LIST = "number_list"
    CHOICE_LIST = "choice_list"
    STR_LIST = "string_list"
    OBJECT = "object"
    #: any JSON value, passed through as is; the owning suite checks it (e.g. a model card or its path)
    JSON = "json"


@dataclass(frozen=True)
class Param:
    """One parameter.

    Args:
        name: key in the request.
        kind: value type.
        default: used when the request leaves it out (``None`` allowed only if ``nullable``).
        help: one line for docs, ``robustaudit suites`` and the OpenAPI document.
        minimum, maximum: inclusive bounds for numbers and list items.
        choices: allowed values for CHOICE / CHOICE_LIST.
        min_items, max_items: list length bounds.
        nullable: ``null`` is a legal value (meaning "automatic").
        schema: nested schema for OBJECT.
        enum: for CHOICE / CHOICE_LIST, the enum whose members the validated value holds (its
            values are the choices when ``choices`` is not given); the default stays a plain value.
    """

    name: str
    kind: ParamKind
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    min_items: int = 1
    max_items: int = 64
    nullable: bool = False
    schema: ParamSchema | None = None
    enum: type[Enum] | None = None

    def __post_init__(self) -> None:
        if self.enum is not None and not self.choices:
            object.__setattr__(self, "choices", tuple(str(m.value) for m in self.enum))

    def validate(self, value: Any) -> Any:
        """Return the value coerced to its type, or raise ``ValueError`` saying why not."""
        if value is None:
            if self.nullable:
                return None
            raise ValueError("must not be null")
        kind = self.kind
        if kind is ParamKind.BOOL:
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
            return value
        if kind is ParamKind.INT:
            return self._number(value, integer=True)
        if kind is ParamKind.FLOAT:
            return self._number(value, integer=False)
        if kind is ParamKind.STR:
            if not isinstance(value, str) or not value:
                raise ValueError("must be a non-empty string")
            return value
        if kind is ParamKind.CHOICE:
            return self._choice(value)
        if kind is ParamKind.JSON:
            return value
        if kind is ParamKind.OBJECT:
            assert self.schema is not None
            if not isinstance(value, Mapping):
                raise ValueError("must be an object")
            return self.schema.validate(value, prefix=f"{self.name}.")
        # lists
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be a list")
        if not self.min_items <= len(value) <= self.max_items:
            raise ValueError(f"must have {self.min_items} to {self.max_items} items")
        items: list[Any]
        if kind is ParamKind.CHOICE_LIST:
            items = [self._choice(v) for v in value]
        elif kind is ParamKind.STR_LIST:
            if not all(isinstance(v, str) and v for v in value):
                raise ValueError("must be a list of non-empty strings")
            items = list(value)
        else:
            items = [self._number(v, integer=kind is ParamKind.INT_LIST) for v in value]
        if len(set(items)) != len(items):
            raise ValueError("must not repeat items")
        return items

    def _number(self, value: Any, *, integer: bool) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be an integer" if integer else "must be a number")
        if integer and not float(value).is_integer():
            raise ValueError("must be an integer")
        if not math.isfinite(value):
            raise ValueError("must be finite")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be >= {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be <= {self.maximum}")
        return int(value) if integer else float(value)

    def _choice(self, value: Any) -> Any:
        if isinstance(value, Enum):
            value = value.value
        if value not in self.choices:
            raise ValueError(f"must be one of {list(self.choices)}")
        return self.enum(value) if self.enum is not None else str(value)

    def default_value(self) -> Any:
        """The default as :meth:`validate` returns values (enum members for an enum choice)."""
        if self.enum is not None and self.default is not None:
            return self.validate(self.default)
        return self.default

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.kind.value, "default": self.default,
                             "help": self.help, "nullable": self.nullable}
        for key in ("minimum", "maximum"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.choices:
            d["choices"] = list(self.choices)
        if self.kind in (ParamKind.INT_LIST, ParamKind.FLOAT_LIST, ParamKind.CHOICE_LIST, ParamKind.STR_LIST):
            d["min_items"], d["max_items"] = self.min_items, self.max_items
        if self.schema is not None:
            d["fields"] = self.schema.describe()
        return d


@dataclass(frozen=True)
class ParamSchema:
    """An ordered set of parameters; validates a request's dict and fills in defaults.

    ``moved`` lists (old name, new place) of parameters an older shape had: a request that
    still uses one is refused with the new place named, never silently read.
    """

    params: tuple[Param, ...] = field(default_factory=tuple)
    moved: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in {names}")

    def defaults(self) -> dict[str, Any]:
        return {p.name: (p.schema.defaults() if p.kind is ParamKind.OBJECT and p.schema and p.default is None
                         and not p.nullable else p.default_value()) for p in self.params}

    def validate(self, raw: Mapping[str, Any] | None, *, prefix: str = "") -> dict[str, Any]:
        """Validated parameters with defaults filled; all problems reported at once."""
        raw = dict(raw or {})
        known = {p.name: p for p in self.params}
        errors: dict[str, str] = {}
        errors.update(self.moved_errors(raw, prefix=prefix))
        for key in sorted(set(raw) - set(known) - set(errors_keys(errors, prefix))):
            errors[prefix + key] = f"unknown parameter; known: {sorted(known)}"
        out: dict[str, Any] = {}
        for p in self.params:
            if prefix + p.name in errors:  # an old shape's value under a current name: reported above
                continue
            if p.name not in raw:
                out[p.name] = self.defaults()[p.name]
                continue
            try:
                out[p.name] = p.validate(raw[p.name])
            except SpecError as exc:  # a nested object's errors: keyed under this schema's prefix too
                nested = exc.details.get("errors", {p.name: exc.message})
                errors.update({prefix + k: v for k, v in nested.items()})
            except ValueError as exc:
                errors[prefix + p.name] = str(exc)
        if errors:
            summary = "; ".join(f"{k}: {v}" for k, v in errors.items())
            raise SpecError(f"invalid parameters: {summary}", errors=errors)
        return out

    def moved_errors(self, raw: Mapping[str, Any], *, prefix: str = "") -> dict[str, str]:
        """The parameters of an older shape in ``raw``, each with its new place. An old name that is
        now an object's name is fine when the value is an object (``"targeted": {...}``)."""
        return {prefix + old: moved_message(prefix, new) for old, new in self.moved
                if old in raw and not (old == new.split(".")[0] and isinstance(raw[old], Mapping))}

    def describe(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self.params]


def moved_message(prefix: str, new: str) -> str:
    """What a request that uses a parameter of the older shape is told (docs/parameters.md has the table)."""
    return f"moved: write {prefix}{new} (see docs/parameters.md)"


def errors_keys(errors: Mapping[str, str], prefix: str) -> list[str]:
    return [k[len(prefix):] for k in errors if k.startswith(prefix)]


def as_choice(enum: type[E], value: Any, where: str) -> E:
    """``enum(value)``, or a SpecError at ``where`` listing the choices (the one place for that idiom)."""
    try:
        return enum(value)
    except ValueError:
        choices = [m.value for m in enum]
        raise SpecError(f"{where}: must be one of {choices}, got {value!r}",
                        errors={where: f"must be one of {choices}"}) from None
