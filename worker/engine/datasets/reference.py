"""Dataset references: which source to read and which seeded sample to draw from it.

Two forms name the same :class:`DatasetRef`:

* the object (JSON) form, canonical, used by the API and written into the report::

    {"kind": "torchvision", "name": "CIFAR10", "root": "cifar", "split": "test",
     "n_samples": 100, "seed": 0, "classes": ["cat", "dog"]}

* the short string form for the CLI, with the sampling settings given apart::

    builtin:digits[:split]  imagefolder:<path>  torchvision:<Name>:<root>[:split]  npz:<path>

Any kind may name ``label_sets`` (object form only): a JSON file of valid labels per item
(:mod:`.label_sets`), under the data roots like every path.

Validation lives here and only here; every problem is a :class:`DatasetError` whose message
names the offending key and what it accepts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..errors import DatasetError

DEFAULT_N_SAMPLES = 100
DEFAULT_SEED = 0
DEFAULT_SPLIT = "test"
MAX_SEED = 2**63 - 1


class DatasetKind(str, Enum):
    """Where the images come from."""

    BUILTIN = "builtin"
    IMAGEFOLDER = "imagefolder"
    TORCHVISION = "torchvision"
    NPZ = "npz"


#: Builtin data sets -> the splits they offer ("all" is the whole set).
BUILTIN_SPLITS: dict[str, tuple[str, ...]] = {"digits": ("train", "test", "all")}

#: torchvision data sets we read (never download) -> the splits they offer.
TORCHVISION_SPLITS: dict[str, tuple[str, ...]] = {
    "CIFAR10": ("train", "test"),
    "CIFAR100": ("train", "test"),
    "MNIST": ("train", "test"),
    "FashionMNIST": ("train", "test"),
    "SVHN": ("train", "test", "extra"),
}

_SAMPLING_KEYS = ("n_samples", "seed", "classes")
#: keys every kind takes besides its own
_COMMON_KEYS = ("label_sets",)


@dataclass(frozen=True)
class _KindSpec:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return ("kind", *self.required, *self.optional, *_COMMON_KEYS, *_SAMPLING_KEYS)


_KIND_SPECS: dict[DatasetKind, _KindSpec] = {
    DatasetKind.BUILTIN: _KindSpec(required=("name",), optional=("split",)),
    DatasetKind.IMAGEFOLDER: _KindSpec(required=("path",)),
    DatasetKind.TORCHVISION: _KindSpec(required=("name", "root"), optional=("split",)),
    DatasetKind.NPZ: _KindSpec(required=("path",)),
}

_ALL_KEYS = ("kind", "name", "path", "root", "split", *_COMMON_KEYS, *_SAMPLING_KEYS)

STRING_FORMS = ("builtin:digits[:split]", "imagefolder:<path>",
                "torchvision:<Name>:<root>[:split]", "npz:<path>")


@dataclass(frozen=True)
class DatasetRef:
    """A validated dataset reference.

    Construct it with :meth:`parse`; direct construction is validated the same way.

    Args:
        kind: the source kind.
        name: builtin set name (``"digits"``) or torchvision class name (``"CIFAR10"``).
        path: folder (imagefolder) or ``.npz`` file (npz), relative to a data root or
            absolute inside one.
        root: torchvision root folder, same rules as ``path``.
        split: builtin ``train|test|all`` or torchvision ``train|test`` (SVHN also
            ``extra``); defaults to ``"test"`` for those kinds, None for the others.
        n_samples: how many images to draw (>= 1); all of them when the set is smaller.
        seed: seed of the stratified draw.
        classes: optional class names or indices to restrict the draw to.
        label_sets: optional JSON file of valid labels per item (multi-label accuracy), a path
            under the data roots like ``path``.
    """

    kind: DatasetKind
    name: str | None = None
    path: str | None = None
    root: str | None = None
    split: str | None = None
    n_samples: int = DEFAULT_N_SAMPLES
    seed: int = DEFAULT_SEED
    classes: tuple[str | int, ...] | None = field(default=None)
    label_sets: str | None = None

    def __post_init__(self) -> None:
        kind = _coerce_kind(self.kind)
        object.__setattr__(self, "kind", kind)
        spec = _KIND_SPECS[kind]
        for key in ("name", "path", "root", "split"):
            value = getattr(self, key)
            if value is None:
                continue
            if key not in spec.required and key not in spec.optional:
                raise DatasetError(
                    f"dataset reference key '{key}' does not apply to kind '{kind.value}' "
                    f"(it takes {', '.join(spec.keys[1:])})", key=key)
            if not isinstance(value, str) or not value:
                raise DatasetError(f"dataset reference '{key}' must be a non-empty string, got {value!r}",
                                   key=key)
        if self.label_sets is not None and (not isinstance(self.label_sets, str) or not self.label_sets):
            raise DatasetError(f"dataset reference 'label_sets' must be the path of a JSON file, got "
                               f"{self.label_sets!r}", key="label_sets")
        for key in spec.required:
            if getattr(self, key) is None:
                raise DatasetError(f"dataset reference of kind '{kind.value}' needs '{key}'", key=key)
        if kind is DatasetKind.BUILTIN:
            self._check_name_and_split(BUILTIN_SPLITS, "builtin data set")
        elif kind is DatasetKind.TORCHVISION:
            self._check_name_and_split(TORCHVISION_SPLITS, "torchvision data set")
        _check_int(self.n_samples, "n_samples", minimum=1)
        _check_int(self.seed, "seed", minimum=0, maximum=MAX_SEED)
        object.__setattr__(self, "classes", _check_classes(self.classes))

    def _check_name_and_split(self, table: Mapping[str, tuple[str, ...]], what: str) -> None:
        name = self.name or ""  # a required key, present by now
        canonical = {n.lower(): n for n in table}.get(name.lower())
        if canonical is None:
            raise DatasetError(f"unknown {what} '{self.name}'; known: {', '.join(table)}", key="name")
        object.__setattr__(self, "name", canonical)
        split = self.split if self.split is not None else DEFAULT_SPLIT
        if split not in table[canonical]:
            raise DatasetError(f"{what} '{canonical}' has no split '{split}'; "
                               f"known: {', '.join(table[canonical])}", key="split")
        object.__setattr__(self, "split", split)

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | DatasetRef, *, n_samples: int | None = None,
              seed: int | None = None, classes: Any = None) -> DatasetRef:
        """Read the string or object form; explicit keyword arguments override the reference.

        A string that starts with ``{`` is read as JSON (the object form on a command line).
        """
        if isinstance(value, DatasetRef):
            fields: dict[str, Any] = value.to_dict()
        elif isinstance(value, str):
            fields = _fields_from_string(value)
        elif isinstance(value, Mapping):
            fields = dict(value)
        else:
            raise DatasetError(f"dataset reference must be a string or an object, got {type(value).__name__}")
        unknown = sorted(str(k) for k in fields if k not in _ALL_KEYS)
        if unknown:
            raise DatasetError(f"dataset reference has unknown keys {unknown}; known: {list(_ALL_KEYS)}",
                               keys=unknown)
        if "kind" not in fields:
            raise DatasetError(f"dataset reference needs 'kind' (one of {_kind_names()})", key="kind")
        overrides = {"n_samples": n_samples, "seed": seed, "classes": classes}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(fields.get("classes"), list):
            fields["classes"] = tuple(fields["classes"])
        elif fields.get("classes") is not None and not isinstance(fields["classes"], tuple):
            raise DatasetError(f"dataset reference 'classes' must be a list of class names or indices, "
                               f"got {fields['classes']!r}", key="classes")
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """The canonical object form: the keys that apply to the kind, sampling settings last."""
        out: dict[str, Any] = {"kind": self.kind.value}
        for key in ("name", "path", "root", "split"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.label_sets is not None:
            out["label_sets"] = self.label_sets
        out["n_samples"] = self.n_samples
        out["seed"] = self.seed
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out

    def __str__(self) -> str:
        """The short string form (without the sampling settings and label sets)."""
        parts = {
            DatasetKind.BUILTIN: [self.name, self.split],
            DatasetKind.IMAGEFOLDER: [self.path],
            DatasetKind.TORCHVISION: [self.name, self.root, self.split],
            DatasetKind.NPZ: [self.path],
        }[self.kind]
        return ":".join([self.kind.value, *(p for p in parts if p is not None)])


def _kind_names() -> str:
    return ", ".join(k.value for k in DatasetKind)


def _coerce_kind(kind: Any) -> DatasetKind:
    try:
        return DatasetKind(kind)
    except ValueError:
        raise DatasetError(f"unknown dataset kind {kind!r}; known kinds: {_kind_names()}",
                           key="kind") from None


def _fields_from_string(text: str) -> dict[str, Any]:
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            raw = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"dataset reference is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise DatasetError("dataset reference JSON must be an object")
        return raw
    kind_text, sep, rest = stripped.partition(":")
    if not sep or not rest:
        raise DatasetError(f"dataset reference {text!r} is not valid; expected one of "
                           f"{', '.join(STRING_FORMS)}")
    kind = _coerce_kind(kind_text)
    if kind in (DatasetKind.IMAGEFOLDER, DatasetKind.NPZ):
        return {"kind": kind.value, "path": rest}  # the path may itself contain ':'
    if kind is DatasetKind.BUILTIN:
        name, _, split = rest.partition(":")
        return {"kind": kind.value, "name": name, **({"split": split} if split else {})}
    name, sep, root = rest.partition(":")
    if not sep or not root:
        raise DatasetError(f"dataset reference {text!r} is not valid; expected "
                           "torchvision:<Name>:<root>[:split]")
    head, sep, last = root.rpartition(":")
    splits = {s for ss in TORCHVISION_SPLITS.values() for s in ss}
    if sep and head and last in splits:
        return {"kind": kind.value, "name": name, "root": head, "split": last}
    return {"kind": kind.value, "name": name, "root": root}


def _check_int(value: Any, key: str, *, minimum: int, maximum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DatasetError(f"dataset reference '{key}' must be an integer, got {value!r}", key=key)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise DatasetError(f"dataset reference '{key}' must be {bound}, got {value}", key=key)


def _check_classes(classes: Any) -> tuple[str | int, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, list):
        classes = tuple(classes)
    if not isinstance(classes, tuple) or not classes:
        raise DatasetError(f"dataset reference 'classes' must be a non-empty list of class names or "
                           f"indices, got {classes!r}", key="classes")
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (str, int)) or c == "":
            raise DatasetError(f"dataset reference 'classes' entries must be class names or integer "
                               f"indices, got {c!r}", key="classes")
    if len(set(classes)) != len(classes):
        raise DatasetError(f"dataset reference 'classes' has duplicates: {list(classes)}", key="classes")
    return classes
