"""The model card: what the engine must know about a checkpoint besides its weights."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import ModelCardError
from .jsonfile import read_json

# Bounds on what a card may ask for, checked before anything is built from it (a card is client input).
MAX_NUM_CLASSES = 100_000
MAX_INPUT_SIDE = 4096
MAX_INPUT_ELEMENTS = 50_000_000  # C x H x W of one input
MAX_NAME_CHARS = 1000  # one class, group or display name
MAX_CLASS_NAMES_CHARS = 4_000_000  # all class names together
FLOAT32_BYTES = 4


class ModelFormat(str, Enum):
    """Checkpoint formats we accept. None of them runs Python code from the file."""

    TORCHSCRIPT = "torchscript"
    EXPORT = "export"  # torch.export program (.pt2)
    SAFETENSORS = "safetensors"  # weights for a named architecture
    STATE_DICT = "state_dict"  # torch.save(state_dict), read with weights_only=True


WEIGHT_FORMATS = (ModelFormat.SAFETENSORS, ModelFormat.STATE_DICT)


@dataclass(frozen=True)
class Preprocess:
    """How a dataset image is brought to the model's input size.

    Args:
        resize: shorter side is resized to this many pixels first (None: straight to the
            input size when the image is not already that size).
        crop: centre crop side; defaults to the input size.
    """

    resize: int | None = None
    crop: int | None = None


@dataclass(frozen=True)
class ModelCard:
    """Everything about a model that is not its weights.

    Args:
        format: checkpoint format.
        num_classes: length of the model's output vector.
        input_size: [C, H, W] the model takes.
        mean, std: per-channel normalisation applied inside the wrapper.
        arch: torchvision architecture name (weight formats only).
        class_names: one name per class (defaults to "0".."n-1").
        hierarchy: optional class name -> group name.
        preprocess: resize/crop of dataset images.
        name: free-form display name.
    """

    format: ModelFormat
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    arch: str | None = None
    class_names: tuple[str, ...] = ()
    hierarchy: dict[str, str] = field(default_factory=dict)
    preprocess: Preprocess = field(default_factory=Preprocess)
    name: str | None = None

    @property
    def channels(self) -> int:
        return self.input_size[0]

    def batch_bytes(self, n: int, *, itemsize: int = FLOAT32_BYTES) -> int:
        """Bytes a batch of ``n`` inputs takes (float32 by default), computed before allocating it."""
        return batch_bytes(self.input_size, n, itemsize=itemsize)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = self.format.value
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> ModelCard:
        """Validate a card given as JSON data; every problem is a :class:`ModelCardError`."""
        if not isinstance(raw, dict):
            raise ModelCardError("model card must be a JSON object")
        known = {"format", "num_classes", "input_size", "mean", "std", "arch", "class_names",
                 "hierarchy", "preprocess", "name"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelCardError(f"model card has unknown fields {[short_repr(u) for u in unknown[:5]]}; "
                                 f"known: {sorted(known)}")
        try:
            fmt = ModelFormat(raw.get("format"))
        except ValueError:
            raise ModelCardError(
                f"model card 'format' must be one of {[f.value for f in ModelFormat]}, "
                f"got {short_repr(raw.get('format'))}") from None
        num_classes = raw.get("num_classes")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ModelCardError(f"model card 'num_classes' must be an integer >= 2, got {short_repr(num_classes)}")
        if num_classes > MAX_NUM_CLASSES:
            raise ModelCardError(f"model card 'num_classes' is {num_classes}, above the limit of {MAX_NUM_CLASSES}")
        size = _input_size(raw.get("input_size"))
        channels = size[0]
        mean = _floats(raw.get("mean", [0.0] * channels), "mean", channels)
        std = _floats(raw.get("std", [1.0] * channels), "std", channels)
        if any(s <= 0 for s in std):
            raise ModelCardError(f"model card 'std' must be positive, got {list(std)}")
        arch = raw.get("arch")
        if fmt in WEIGHT_FORMATS and not isinstance(arch, str):
            raise ModelCardError(f"model card 'arch' is required for format {fmt.value!r} "
                                 "(a torchvision architecture name such as 'resnet18')")
        if arch is not None and not is_bounded_name(arch):
            raise ModelCardError(f"model card 'arch' must be a string of at most {MAX_NAME_CHARS} characters "
                                 "without NUL")
        names_raw = _class_names(raw, num_classes)
        hierarchy = raw.get("hierarchy") or {}
        if not isinstance(hierarchy, dict) or len(hierarchy) > num_classes or not all(
                is_bounded_name(k) and is_bounded_name(v) for k, v in hierarchy.items()):
            raise ModelCardError("model card 'hierarchy' must map class names to group names (at most one "
                                 f"entry per class, names of at most {MAX_NAME_CHARS} characters without NUL)")
        unknown_classes = sorted(set(hierarchy) - set(names_raw))
        if unknown_classes:
            raise ModelCardError(f"model card 'hierarchy' names unknown classes {unknown_classes[:5]}")
        if hierarchy and len(hierarchy) != num_classes:
            raise ModelCardError("model card 'hierarchy' must give a group for every class")
        pre = raw.get("preprocess") or {}
        if not isinstance(pre, dict) or set(pre) - {"resize", "crop"}:
            raise ModelCardError("model card 'preprocess' must be an object with 'resize' and/or 'crop'")
        for key in ("resize", "crop"):
            v = pre.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= MAX_INPUT_SIDE):
                raise ModelCardError(f"model card 'preprocess.{key}' must be a positive integer of at most "
                                     f"{MAX_INPUT_SIDE}")
        name = raw.get("name")
        if name is not None and not is_bounded_name(name):
            raise ModelCardError(f"model card 'name' must be a string of at most {MAX_NAME_CHARS} characters "
                                 "without NUL")
        return cls(format=fmt, num_classes=num_classes, input_size=(size[0], size[1], size[2]),
                   mean=mean, std=std, arch=arch, class_names=tuple(names_raw), hierarchy=dict(hierarchy),
                   preprocess=Preprocess(pre.get("resize"), pre.get("crop")), name=name)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelCard:
        return cls.from_dict(read_json(path, what="model card", error=ModelCardError))


def batch_bytes(input_size: tuple[int, ...], n: int, *, itemsize: int = FLOAT32_BYTES) -> int:
    """Bytes of an ``n`` x C x H x W batch; pure arithmetic, so it can refuse a size before torch allocates."""
    return n * math.prod(input_size) * itemsize


def require_batch_fits(input_size: tuple[int, ...], n: int, *, limit_bytes: int, what: str = "a batch") -> None:
    """Raise :class:`ModelCardError` when ``n`` inputs of ``input_size`` would take more than ``limit_bytes``."""
    need = batch_bytes(input_size, n)
    if need > limit_bytes:
        raise ModelCardError(f"{what} of {n} inputs of size {list(input_size)} needs {need / 2**20:.0f} MiB, "
                             f"above the {limit_bytes / 2**20:.0f} MiB allowed; check 'input_size' in the model card",
                             need_bytes=need, limit_bytes=limit_bytes)


def _input_size(size: Any) -> tuple[int, int, int]:
    """[C, H, W]: C 1 or 3, each side at most MAX_INPUT_SIDE, C*H*W at most MAX_INPUT_ELEMENTS."""
    if (not isinstance(size, list) or len(size) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ModelCardError(f"model card 'input_size' must be [C, H, W] of positive integers, got {short_repr(size)}")
    if size[0] not in (1, 3):
        raise ModelCardError(f"model card 'input_size' must have 1 or 3 channels, got {size[0]}")
    if max(size[1:]) > MAX_INPUT_SIDE:
        raise ModelCardError(f"model card 'input_size' {size} has a side above the limit of {MAX_INPUT_SIDE}")
    if math.prod(size) > MAX_INPUT_ELEMENTS:
        raise ModelCardError(f"model card 'input_size' {size} has {math.prod(size)} values per input, above "
                             f"the limit of {MAX_INPUT_ELEMENTS}")
    return size[0], size[1], size[2]


def _class_names(raw: dict[str, Any], num_classes: int) -> list[str]:
    """The card's names, or "0".."n-1" built only when it gives none (num_classes is bounded by now)."""
    if "class_names" not in raw:
        return [str(i) for i in range(num_classes)]
    names = raw["class_names"]
    # Length first: a list of a million names is refused before each name is looked at.
    if not isinstance(names, list):
        raise ModelCardError("model card 'class_names' must be a list of non-empty strings")
    if len(names) != num_classes:
        raise ModelCardError(f"model card has {len(names)} class_names but num_classes is {num_classes}")
    if not all(isinstance(n, str) and n and is_bounded_name(n) for n in names):
        raise ModelCardError("model card 'class_names' must be a list of non-empty strings, each of at most "
                             f"{MAX_NAME_CHARS} characters without NUL")
    if sum(len(n) for n in names) > MAX_CLASS_NAMES_CHARS:
        raise ModelCardError(f"model card 'class_names' total more than {MAX_CLASS_NAMES_CHARS} characters")
    if len(set(names)) != len(names):
        raise ModelCardError("model card 'class_names' must be unique")
    return names


def is_bounded_name(value: Any) -> bool:
    """A bounded string without NUL and without lone surrogates (which no database or file name takes)."""
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS or "\0" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def short_repr(value: Any) -> str:
    """A repr that cannot grow a message without bound (a client may send megabytes)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _floats(value: Any, name: str, channels: int) -> tuple[float, ...]:
    if (not isinstance(value, list) or len(value) != channels
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in value)):
        raise ModelCardError(f"model card '{name}' must be a list of {channels} finite numbers, "
                             f"got {short_repr(value)}")
    return tuple(float(v) for v in value)


def default_card_path(checkpoint: str | Path) -> Path:
    """The card beside a checkpoint: ``model.pt`` -> ``model.card.json``."""
    p = Path(checkpoint)
    return p.with_name(p.name.split(".")[0] + ".card.json")
