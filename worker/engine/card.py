"""The model card: what the engine must know about a checkpoint besides its weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import ModelCardError
from .jsonfile import read_json


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
            raise ModelCardError(f"model card has unknown fields {unknown}; known: {sorted(known)}")
        try:
            fmt = ModelFormat(raw.get("format"))
        except ValueError:
            raise ModelCardError(
                f"model card 'format' must be one of {[f.value for f in ModelFormat]}, "
                f"got {raw.get('format')!r}") from None
        num_classes = raw.get("num_classes")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ModelCardError(f"model card 'num_classes' must be an integer >= 2, got {num_classes!r}")
        size = raw.get("input_size")
        if (not isinstance(size, list) or len(size) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise ModelCardError(f"model card 'input_size' must be [C, H, W] of positive integers, got {size!r}")
        channels = size[0]
        if channels not in (1, 3):
            raise ModelCardError(f"model card 'input_size' must have 1 or 3 channels, got {channels}")
        mean = _floats(raw.get("mean", [0.0] * channels), "mean", channels)
        std = _floats(raw.get("std", [1.0] * channels), "std", channels)
        if any(s <= 0 for s in std):
            raise ModelCardError(f"model card 'std' must be positive, got {list(std)}")
        arch = raw.get("arch")
        if fmt in WEIGHT_FORMATS and not isinstance(arch, str):
            raise ModelCardError(f"model card 'arch' is required for format {fmt.value!r} "
                                 "(a torchvision architecture name such as 'resnet18')")
        if arch is not None and not isinstance(arch, str):
            raise ModelCardError("model card 'arch' must be a string")
        names_raw = raw.get("class_names", [str(i) for i in range(num_classes)])
        if (not isinstance(names_raw, list) or not all(isinstance(n, str) and n for n in names_raw)):
            raise ModelCardError("model card 'class_names' must be a list of non-empty strings")
        if len(names_raw) != num_classes:
            raise ModelCardError(f"model card has {len(names_raw)} class_names but num_classes is {num_classes}")
        if len(set(names_raw)) != len(names_raw):
            raise ModelCardError("model card 'class_names' must be unique")
        hierarchy = raw.get("hierarchy") or {}
        if not isinstance(hierarchy, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in hierarchy.items()):
            raise ModelCardError("model card 'hierarchy' must map class names to group names")
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
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ModelCardError(f"model card 'preprocess.{key}' must be a positive integer")
        name = raw.get("name")
        if name is not None and not isinstance(name, str):
            raise ModelCardError("model card 'name' must be a string")
        return cls(format=fmt, num_classes=num_classes, input_size=(size[0], size[1], size[2]),
                   mean=mean, std=std, arch=arch, class_names=tuple(names_raw), hierarchy=dict(hierarchy),
                   preprocess=Preprocess(pre.get("resize"), pre.get("crop")), name=name)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelCard:
        return cls.from_dict(read_json(path, what="model card", error=ModelCardError))


def _floats(value: Any, name: str, channels: int) -> tuple[float, ...]:
    if (not isinstance(value, list) or len(value) != channels
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ModelCardError(f"model card '{name}' must be a list of {channels} numbers, got {value!r}")
    return tuple(float(v) for v in value)


def default_card_path(checkpoint: str | Path) -> Path:
    """The card beside a checkpoint: ``model.pt`` -> ``model.card.json``."""
    p = Path(checkpoint)
    return p.with_name(p.name.split(".")[0] + ".card.json")
