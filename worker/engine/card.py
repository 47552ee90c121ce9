"""The model card: what the engine must know about a checkpoint besides its weights."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
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
MAX_LAYER_CHARS = 256  # a module name (gradcam_layer)
FLOAT32_BYTES = 4


class ModelFormat(str, Enum):
    """Checkpoint formats we accept. None of them runs Python code from the file."""

    TORCHSCRIPT = "torchscript"
    EXPORT = "export"  # torch.export program (.pt2)
    SAFETENSORS = "safetensors"  # weights for a named architecture
    STATE_DICT = "state_dict"  # torch.save(state_dict), read with weights_only=True
    ONNX = "onnx"  # an ONNX graph of standard operators, converted to a torch module
    MODULE = "module"  # an nn.Module handed to the Python API (never in a card: no file to read)


WEIGHT_FORMATS = (ModelFormat.SAFETENSORS, ModelFormat.STATE_DICT)
#: formats a model card may name (MODULE is the Python API's, for a model already in memory)
CARD_FORMATS = tuple(f for f in ModelFormat if f is not ModelFormat.MODULE)


class ArchLibrary(str, Enum):
    """Which library builds the architecture a weights card names (``arch``)."""

    TORCHVISION = "torchvision"  # "resnet18" or "torchvision:resnet18"
    TIMM = "timm"  # "timm:resnet18"
    HF = "hf"  # "hf", with the model's config.json in options.config


#: Preprocessing fields a library can supply (timm's pretrained config, an HF image processor)
#: when the card leaves them out.
PREPROCESSING_FIELDS = ("input_size", "mean", "std", "preprocess")
#: What a card that leaves out 'input_size' is given until the library fills it in.
_PLACEHOLDER_SIDE = 224
#: The keys of 'options', per library that reads them.
OPTION_KEYS: dict[ArchLibrary, frozenset[str]] = {ArchLibrary.HF: frozenset({"config", "preprocessor"})}


def arch_library(arch: str) -> tuple[ArchLibrary, str]:
    """(library, name within it) of a card's ``arch``: ``timm:resnet18`` -> (TIMM, "resnet18")."""
    if arch == ArchLibrary.HF.value:
        return ArchLibrary.HF, ""
    prefix, sep, rest = arch.partition(":")
    if sep:
        try:
            library = ArchLibrary(prefix)
        except ValueError:
            raise ModelCardError(f"model card 'arch' {short_repr(arch)} has an unknown prefix {prefix!r}; "
                                 "use 'timm:<name>', 'torchvision:<name>', 'hf' or a torchvision name") from None
        if library is ArchLibrary.HF or not rest:
            raise ModelCardError(f"model card 'arch' {short_repr(arch)}: write 'hf' (the model is described "
                                 "by options.config) or '<library>:<name>'")
        if library is ArchLibrary.TIMM:
            from .models.card_keys import check_timm_name  # (the models package imports this module)

            check_timm_name(rest, "'arch'")
        return library, rest
    return ArchLibrary.TORCHVISION, arch


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
        arch: the architecture of a weights checkpoint: a torchvision name (``resnet18``,
            ``torchvision:resnet18``), ``timm:<name>``, or ``hf`` (weight formats only).
        class_names: one name per class (defaults to "0".."n-1").
        hierarchy: optional class name -> group name.
        preprocess: resize/crop of dataset images.
        name: free-form display name.
        options: library settings (``hf``: ``config``, the model's config.json, and
            ``preprocessor``, its preprocessor_config.json).
        unset: the preprocessing fields (and, for ``hf``, the class names) the card left out; a
            timm or Hugging Face loader fills them from the library's configuration (until then
            they hold defaults).
        gradcam_layer: the module (its name in ``named_modules()``) at which the attacks suite's
            saliency part computes Grad-CAM; None: the last module with a spatial 4-D output.
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
    options: dict[str, Any] = field(default_factory=dict)
    unset: frozenset[str] = frozenset()
    gradcam_layer: str | None = None

    @property
    def channels(self) -> int:
        return self.input_size[0]

    def batch_bytes(self, n: int, *, itemsize: int = FLOAT32_BYTES) -> int:
        """Bytes a batch of ``n`` inputs takes (float32 by default), computed before allocating it."""
        return batch_bytes(self.input_size, n, itemsize=itemsize)

    @property
    def library(self) -> ArchLibrary | None:
        """The library that builds ``arch`` (weight formats), else None."""
        if self.arch is None or self.format not in WEIGHT_FORMATS:
            return None
        return arch_library(self.arch)[0]

    def filled(self, *, input_size: tuple[int, int, int] | None = None, mean: tuple[float, ...] | None = None,
               std: tuple[float, ...] | None = None, preprocess: Preprocess | None = None,
               class_names: tuple[str, ...] | None = None) -> ModelCard:
        """This card with the fields it left out taken from a library's configuration.

        A field the card gives always wins; one the library does not know keeps its default
        (input size: the placeholder is an error, mean 0 and std 1: no normalisation).
        """
        if "input_size" in self.unset and input_size is None:
            raise ModelCardError(f"model card leaves out 'input_size' and {self.arch!r} does not say it: "
                                 "give 'input_size' in the card")
        values: dict[str, Any] = {}
        size = input_size if "input_size" in self.unset else self.input_size
        assert size is not None
        _input_size(list(size))  # the library's value is bounded like a card's
        values["input_size"] = tuple(size)
        for key, value in (("mean", mean), ("std", std)):
            if key in self.unset:
                if value is not None and len(value) == 3 and size[0] == 1:
                    value = (sum(value) / 3,)  # a grey-scale model of a colour recipe
                values[key] = tuple(float(v) for v in value) if value is not None else (
                    (0.0 if key == "mean" else 1.0),) * size[0]
            elif len(getattr(self, key)) != size[0]:
                raise ModelCardError(f"model card '{key}' has {len(getattr(self, key))} values but the "
                                     f"model takes {size[0]} channels")
        if "preprocess" in self.unset and preprocess is not None:
            values["preprocess"] = preprocess
        if "class_names" in self.unset and class_names is not None:
            # The library's label names (a Hugging Face config's id2label), checked like a card's.
            values["class_names"] = tuple(_class_names({"class_names": list(class_names)}, self.num_classes))
        if any(s <= 0 for s in values.get("std", self.std)):
            raise ModelCardError(f"the std of {self.arch!r} must be positive, got {list(values['std'])}")
        return replace(self, unset=frozenset(), **values)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON data; fields it left out stay out, so that it reads back the same."""
        d = asdict(self)
        del d["unset"]
        d["format"] = self.format.value
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["class_names"] = list(self.class_names)
        for key in self.unset:
            d.pop(key, None)
        if not self.options:
            del d["options"]
        if self.gradcam_layer is None:
            del d["gradcam_layer"]
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> ModelCard:
        """Validate a card given as JSON data; every problem is a :class:`ModelCardError`."""
        if not isinstance(raw, dict):
            raise ModelCardError("model card must be a JSON object")
        known = {"format", "num_classes", "input_size", "mean", "std", "arch", "class_names",
                 "hierarchy", "preprocess", "name", "options", "gradcam_layer"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelCardError(f"model card has unknown fields {[short_repr(u) for u in unknown[:5]]}; "
                                 f"known: {sorted(known)}")
        try:
            fmt = ModelFormat(raw.get("format"))
            if fmt not in CARD_FORMATS:
                raise ValueError(fmt)
        except ValueError:
            raise ModelCardError(
                f"model card 'format' must be one of {[f.value for f in CARD_FORMATS]}, "
                f"got {short_repr(raw.get('format'))}") from None
        num_classes = raw.get("num_classes")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ModelCardError(f"model card 'num_classes' must be an integer >= 2, got {short_repr(num_classes)}")
        if num_classes > MAX_NUM_CLASSES:
            raise ModelCardError(f"model card 'num_classes' is {num_classes}, above the limit of {MAX_NUM_CLASSES}")
        arch = raw.get("arch")
        if fmt in WEIGHT_FORMATS and not isinstance(arch, str):
            raise ModelCardError(f"model card 'arch' is required for format {fmt.value!r} "
                                 "(a torchvision architecture name such as 'resnet18', 'timm:<name>' or 'hf')")
        if arch is not None and not is_bounded_name(arch):
            raise ModelCardError(f"model card 'arch' must be a string of at most {MAX_NAME_CHARS} characters "
                                 "without NUL")
        # For other formats 'arch' is a label only: the file itself holds the network.
        library = arch_library(arch)[0] if arch is not None and fmt in WEIGHT_FORMATS else None
        # timm and Hugging Face know their models' preprocessing; torchvision's builders do not.
        fillable = library in (ArchLibrary.TIMM, ArchLibrary.HF)
        unset = frozenset(k for k in PREPROCESSING_FIELDS if k not in raw) if fillable else frozenset()
        if library is ArchLibrary.HF and "class_names" not in raw and not raw.get("hierarchy"):
            unset |= {"class_names"}  # id2label may name the classes (a hierarchy needs them in the card)
        if "input_size" in raw or not fillable:
            size = _input_size(raw.get("input_size"))
        else:
            given = raw.get("mean", raw.get("std"))
            size = (len(given) if isinstance(given, list) and len(given) in (1, 3) else 3,
                    _PLACEHOLDER_SIDE, _PLACEHOLDER_SIDE)
        channels = size[0]
        mean = _floats(raw.get("mean", [0.0] * channels), "mean", channels)
        std = _floats(raw.get("std", [1.0] * channels), "std", channels)
        if any(s <= 0 for s in std):
            raise ModelCardError(f"model card 'std' must be positive, got {list(std)}")
        options = _options(raw.get("options"), library)
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
        layer = raw.get("gradcam_layer")
        if layer is not None and not (isinstance(layer, str) and layer and len(layer) <= MAX_LAYER_CHARS
                                      and is_bounded_name(layer)):
            raise ModelCardError("model card 'gradcam_layer' must be a module name (a non-empty string of at most "
                                 f"{MAX_LAYER_CHARS} characters without NUL) or null")
        return cls(format=fmt, num_classes=num_classes, input_size=(size[0], size[1], size[2]),
                   mean=mean, std=std, arch=arch, class_names=tuple(names_raw), hierarchy=dict(hierarchy),
                   preprocess=Preprocess(pre.get("resize"), pre.get("crop")), name=name, options=options,
                   unset=unset, gradcam_layer=layer)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelCard:
        return cls.from_dict(read_json(path, what="model card", error=ModelCardError))


def _options(raw: Any, library: ArchLibrary | None) -> dict[str, Any]:
    """'options' is for the libraries that read it; 'hf' needs the model's config.json in 'config'."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ModelCardError("model card 'options' must be an object")
    allowed = OPTION_KEYS.get(library, frozenset()) if library is not None else frozenset()
    extra = sorted(set(raw) - allowed)
    if extra:
        where = f"arch {library.value!r}" if library is not None else "this card (no arch)"
        raise ModelCardError(f"model card 'options' {[short_repr(k) for k in extra[:5]]} do not apply to {where}; "
                             f"it takes {sorted(allowed)}")
    if library is ArchLibrary.HF:
        config = raw.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            raise ModelCardError("model card 'options.config' must hold the model's config.json (an object with "
                                 "'model_type') for arch 'hf'")
        from .models.card_keys import check_hf_config  # (the models package imports this module)

        check_hf_config(config)  # an allow-list: nothing in it can name a repository, a path or a kernel
        pre = raw.get("preprocessor")
        if pre is not None and not isinstance(pre, dict):
            raise ModelCardError("model card 'options.preprocessor' must be an object (preprocessor_config.json)")
    return dict(raw)


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
