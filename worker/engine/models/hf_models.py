"""``arch: "hf"``: a Hugging Face transformers image classifier built from its config.json.

The card carries the model's ``config.json`` content in ``options.config`` (and, optionally,
its ``preprocessor_config.json`` in ``options.preprocessor``); the checkpoint holds the
weights (``model.safetensors`` as ``save_pretrained`` writes it). transformers builds the
network from the config with its own classes only: a config that asks for remote code
(``auto_map``) or for a quantisation backend is refused, and the class is one of transformers'
image-classification classes (the one ``model_type`` maps to, or the one ``architectures``
names). The network is first built on the meta device, so a config that describes a far larger
model than the checkpoint holds is refused before memory is spent.

The weights, already read by our safe readers, are handed to ``from_pretrained(None,
state_dict=...)``: transformers renames the keys of older checkpoints to its current modules
(its checkpoint conversion mapping), and a missing, unexpected or misshapen key is an error
here, never a random initialisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..card import ModelCard, Preprocess
from ..errors import ModelCardError, ModelLoadError
from .weights import _check_head

#: config keys that would make transformers run code or load a backend we do not audit
_REFUSED_KEYS = {"auto_map": "asks for remote code (trust_remote_code), which is never used here",
                 "quantization_config": "asks for a quantisation backend; give float weights"}
#: a meta-device model may hold this many more values than the checkpoint (tied or absent buffers)
_SLACK = 1.05


class HFLogits(nn.Module):
    """A transformers classifier as a plain ``x -> logits`` module (its output is a ModelOutput).

    Args:
        model: an ``...ForImageClassification`` module.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ModelLoadError("model card 'arch' is 'hf', and transformers is not installed here: "
                             "pip install 'robustaudit[hf]'") from None
    return transformers


def _image_classes() -> dict[str, str]:
    """model_type -> the class name transformers maps it to for image classification."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    out: dict[str, str] = {}
    for model_type, names in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items():
        out[model_type] = names if isinstance(names, str) else names[0]
    return out


def hf_config(card: ModelCard) -> Any:
    """The transformers config object of ``options.config``, checked; num_labels follows the card."""
    transformers = _transformers()
    raw = dict(card.options.get("config") or {})
    for key, why in _REFUSED_KEYS.items():
        if raw.get(key):
            raise ModelLoadError(f"model card 'options.config' has {key!r}: it {why}; refused")
    model_type = raw.get("model_type")
    classes = _image_classes()
    if model_type not in classes:
        raise ModelCardError(f"model card 'options.config' model_type {model_type!r} is not an image "
                             f"classifier of transformers {transformers.__version__}; known: {sorted(classes)[:50]}")
    labels = raw.get("id2label")
    if isinstance(labels, dict) and len(labels) != card.num_classes:
        raise ModelCardError(f"num_classes in the card is {card.num_classes} but options.config has "
                             f"{len(labels)} labels (id2label)")
    if not isinstance(labels, dict):
        raw.pop("label2id", None)
        raw["num_labels"] = card.num_classes
    try:
        config = transformers.CONFIG_MAPPING[model_type].from_dict(raw)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ModelCardError(f"model card 'options.config' is not a valid {model_type} config: "
                             f"{str(exc)[:300]}") from None
    config.return_dict = True
    return config


def _model_class(card: ModelCard, config: Any) -> Any:
    """The class ``architectures`` names (one of transformers' image classifiers), else model_type's."""
    transformers = _transformers()
    names = card.options["config"].get("architectures") or [_image_classes()[config.model_type]]
    allowed = set(_image_classes().values())
    name = names[0]
    if not isinstance(name, str) or name not in allowed or not hasattr(transformers, name):
        raise ModelCardError(f"model card 'options.config' architectures {names[:3]!r}: not an image "
                             "classification class of transformers")
    return getattr(transformers, name)


@contextmanager
def _quiet() -> Iterator[None]:
    """transformers reports a load with progress bars and a table; our errors say what matters."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(cls: Any, config: Any, weights: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """``from_pretrained`` on tensors we read; any key it could not place is refused."""
    try:
        with _quiet():
            model, info = cls.from_pretrained(None, config=config, state_dict=weights, local_files_only=True,
                                              trust_remote_code=False, output_loading_info=True)
    # RuntimeError: shape mismatches ("ignore_mismatched_sizes"); the others: an attention backend or
    # setting of the config that this machine cannot provide.
    except (RuntimeError, ValueError, TypeError, ImportError, OSError) as exc:
        raise ModelLoadError(f"{path.name} does not fit the model options.config describes: "
                             f"{str(exc).splitlines()[0][:300]}") from None
    problems = []
    for key, what in (("missing_keys", "missing keys"), ("unexpected_keys", "unexpected keys"),
                      ("mismatched_keys", "shape mismatches")):
        found = sorted(str(k) for k in info.get(key) or ())
        if found:
            problems.append(f"{what} {found[:5]}{' ...' if len(found) > 5 else ''}")
    if problems or info.get("error_msgs"):
        problems += [str(m)[:200] for m in info.get("error_msgs") or []][:3]
        raise ModelLoadError(f"{path.name} does not fit the model options.config describes: {'; '.join(problems)}")
    return model


def library_preprocessing(card: ModelCard, config: Any) -> dict[str, Any]:
    """Card fields from the image-processor config (or, without one, the model config's image size).

    Class names come from the config's ``id2label`` unless they are transformers' ``LABEL_<i>``
    placeholders. Our images are in [0, 1]; a processor that rescales by ``rescale_factor`` (1/255 usually)
    and then normalises is the same as normalising [0, 1] images by ``mean / (255 * factor)``.
    """
    pre = card.options.get("preprocessor") or {}
    out: dict[str, Any] = {}
    channels = int(getattr(config, "num_channels", 3) or 3)
    side = getattr(config, "image_size", None)
    if isinstance(side, int):
        out["input_size"] = (channels, side, side)
    elif isinstance(side, (list, tuple)) and len(side) == 2:
        out["input_size"] = (channels, int(side[0]), int(side[1]))
    size, crop = pre.get("size"), pre.get("crop_size")
    if pre.get("do_center_crop") and isinstance(crop, dict) and {"height", "width"} <= set(crop):
        out["input_size"] = (channels, int(crop["height"]), int(crop["width"]))
        if isinstance(size, dict) and isinstance(size.get("shortest_edge"), int):
            out["preprocess"] = Preprocess(resize=size["shortest_edge"], crop=min(out["input_size"][1:]))
    elif isinstance(size, dict) and {"height", "width"} <= set(size):
        out["input_size"] = (channels, int(size["height"]), int(size["width"]))
    if pre.get("do_normalize", True) and "image_mean" in pre and "image_std" in pre:
        scale = 255.0 * float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 255.0
        mean, std = pre["image_mean"], pre["image_std"]
        if not (isinstance(mean, list) and isinstance(std, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in mean + std)):
            raise ModelCardError("model card 'options.preprocessor' image_mean and image_std must be lists of numbers")
        out["mean"] = tuple(float(v) / scale for v in mean)
        out["std"] = tuple(float(v) / scale for v in std)
    labels = getattr(config, "id2label", None) or {}
    names = [str(labels.get(i, "")) for i in range(len(labels))]
    # transformers names unnamed labels LABEL_0, LABEL_1, ...: those say nothing the indices do not
    if names and not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        out["class_names"] = tuple(names)
    return out


def build_hf(card: ModelCard, weights: dict[str, torch.Tensor], path: Path) -> tuple[nn.Module, ModelCard]:
    """The network the card's config describes with the checkpoint's weights, as an ``x -> logits``
    module, and the card with the preprocessing filled in.

    Raises:
        ModelCardError: the config is not an image classifier's or does not fit the card.
        ModelLoadError: it asks for remote code, or describes a model larger than the checkpoint.
    """
    config = hf_config(card)
    cls = _model_class(card, config)
    try:
        with torch.device("meta"):  # sizes only: no memory is spent on what a config claims
            shape_only = cls(config)
    except (TypeError, ValueError, RuntimeError, AttributeError, ImportError) as exc:
        raise ModelCardError(f"transformers cannot build {cls.__name__} from options.config: "
                             f"{str(exc)[:300]}") from None
    expected = shape_only.state_dict()
    size = sum(t.numel() for t in expected.values())
    held = sum(t.numel() for t in weights.values())
    if size > held * _SLACK + 1024:
        raise ModelLoadError(f"model card 'options.config' describes a model of {size} values but the "
                             f"checkpoint holds {held}: the weights do not fit the config")
    _check_head(expected, weights, card, path)  # the usual culprit, named in the card's terms
    filled = card.filled(**library_preprocessing(card, config))
    model = _load(cls, config, weights, path)
    return HFLogits(model.float().eval()), filled
