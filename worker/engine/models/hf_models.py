"""``arch: "hf"``: a Hugging Face transformers image classifier built from its config.json.

The card carries the model's ``config.json`` content in ``options.config`` (and, optionally,
its ``preprocessor_config.json`` in ``options.preprocessor``); the checkpoint holds the
weights. transformers builds the network from the config with its own classes only: a config
that asks for remote code (``auto_map``) or for a quantisation backend is refused, and the
class is one of transformers' image-classification classes (``AutoModelForImageClassification``
or the one ``architectures`` names). The network is first built on the meta device, so a config
that describes a far larger model than the checkpoint holds is refused before memory is spent.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..card import ModelCard, Preprocess
from ..errors import ModelCardError, ModelLoadError

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
    """The class ``architectures`` names (one of transformers' image classifiers), else the auto class."""
    transformers = _transformers()
    names = card.options["config"].get("architectures") or []
    if not names:
        return transformers.AutoModelForImageClassification
    allowed = set(_image_classes().values())
    name = names[0]
    if not isinstance(name, str) or name not in allowed or not hasattr(transformers, name):
        raise ModelCardError(f"model card 'options.config' architectures {names[:3]!r}: not an image "
                             "classification class of transformers")
    return getattr(transformers, name)


def _build(cls: Any, config: Any) -> nn.Module:
    if hasattr(cls, "from_config"):  # the auto class
        return cls.from_config(config, trust_remote_code=False)
    return cls(config)


def library_preprocessing(card: ModelCard, config: Any) -> dict[str, Any]:
    """Card fields from the image-processor config (or, without one, the model config's image size).

    Our images are in [0, 1]; a processor that rescales by ``rescale_factor`` (1/255 usually)
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
    return out


def build_hf(card: ModelCard, weights: dict[str, torch.Tensor]) -> tuple[nn.Module, ModelCard]:
    """The untrained network the card's config describes and the filled card (wrap it in :class:`HFLogits`).

    Raises:
        ModelCardError: the config is not an image classifier's or does not fit the card.
        ModelLoadError: it asks for remote code, or describes a model larger than the checkpoint.
    """
    config = hf_config(card)
    cls = _model_class(card, config)
    try:
        with torch.device("meta"):  # sizes only: no memory is spent on what a config claims
            shape_only = _build(cls, config)
        expected = sum(t.numel() for t in shape_only.state_dict().values())
        held = sum(t.numel() for t in weights.values())
        if expected > held * _SLACK + 1024:
            raise ModelLoadError(f"model card 'options.config' describes a model of {expected} values but the "
                                 f"checkpoint holds {held}: the weights do not fit the config")
        model = _build(cls, config)
    except (TypeError, ValueError, RuntimeError, AttributeError, ImportError) as exc:
        raise ModelCardError(f"transformers cannot build {cls.__name__} from options.config: "
                             f"{str(exc)[:300]}") from None
    filled = card.filled(**library_preprocessing(card, config))
    return model.float().eval(), filled
