"""What a model card may tell a library: an allow-list per architecture family, checked when the
card is read (at upload, before anything loads).

A Hugging Face ``options.config`` may hold only the keys its family's config class defines
(the parameters of its ``__init__`` and what a default instance writes to config.json), the
generic keys every config.json carries, and the label maps; nested configs only as the family
declares them (``sub_configs``), checked the same way. Keys that can name a Hub repository, a
local path or a kernel are refused by name even where a family defines them (unless empty:
``"_name_or_path": ""`` names nothing), and every string
value outside the label names must be a plain token (letters, digits, ``_ . -``): no ``/``, no
``:``, so no ``hf-hub:org/repo``, ``local-dir:/etc`` or ``kernels-community/...``.

``timm_wrapper`` (transformers' wrapper around a timm model) names a bare timm architecture, and
its ``model_args`` may hold only a few numeric or plain keyword arguments of timm's
``create_model``. A card's ``timm:<name>`` is a bare timm name too.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from ..errors import ModelCardError, ModelLoadError

#: keys refused wherever they appear, with why (the allow-list alone would refuse most; these say why)
REFUSED: Mapping[str, str] = {
    **dict.fromkeys(("attn_implementation", "_attn_implementation", "_attn_implementation_internal",
                     "_attn_implementation_autoset", "experts_implementation", "_experts_implementation"),
                    "can name a kernel repository on the Hugging Face Hub"),
    **dict.fromkeys(("_name_or_path", "name_or_path", "pretrained_model_name_or_path", "checkpoint_path",
                     "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "file", "hf_hub_id", "url"),
                    "names a Hub repository or a file"),
    **dict.fromkeys(("backbone", "backbone_config", "backbone_kwargs", "use_timm_backbone",
                     "use_pretrained_backbone"), "can name a backbone on the Hub"),
    "auto_map": "asks for remote code (trust_remote_code), which is never used here",
    "quantization_config": "asks for a quantisation backend; give float weights",
    "pretrained": "would download weights",
}
#: the keys every transformers config.json may carry (data only: they name nothing to load)
COMMON_KEYS = frozenset({
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "num_labels", "problem_type",
    "return_dict", "output_hidden_states", "output_attentions", "use_return_dict", "chunk_size_feed_forward",
    "is_encoder_decoder", "is_decoder", "add_cross_attention", "tie_word_embeddings", "torchscript",
    "use_bfloat16", "pruned_heads", "tie_encoder_decoder", "finetuning_task", "bos_token_id", "eos_token_id",
    "pad_token_id", "sep_token_id", "decoder_start_token_id", "cross_attention_hidden_size", "task_specific_params",
    "prefix", "tf_legacy_loss", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "initializer_range"})
#: label maps and names: any text (class names), bounded by the card's own checks
LABEL_KEYS = frozenset({"id2label", "label2id", "label_names"})
#: keyword arguments of timm's create_model a timm_wrapper config may pass (numbers and plain words)
TIMM_MODEL_ARGS = frozenset({"drop_rate", "drop_path_rate", "drop_block_rate", "global_pool", "proj_drop_rate",
                             "attn_drop_rate", "pos_drop_rate", "patch_drop_rate", "class_token", "no_embed_class",
                             "qkv_bias", "qk_norm", "init_values", "layer_scale_init_value"})
_TOKEN = re.compile(r"^[A-Za-z0-9_.\-]{0,100}$")
#: a timm architecture (and pretrained tag) as timm's registry names them
TIMM_NAME = re.compile(r"^[A-Za-z0-9_]{1,100}(\.[A-Za-z0-9_]{1,100})?$")
MAX_DEPTH = 6


def check_timm_name(name: str, where: str) -> None:
    """A bare timm name (``resnet18``, ``resnet18.a1_in1k``): never a ``hf-hub:`` or ``local-dir:`` source."""
    if not TIMM_NAME.match(name):
        raise ModelCardError(f"model card {where} {name[:80]!r} is not a timm architecture name: only names from "
                             "timm's own registry ('resnet18', 'resnet18.a1_in1k') are accepted, never a Hub or "
                             "local source")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ModelLoadError("model card 'arch' is 'hf', and transformers is not installed here: "
                             "pip install 'robustaudit[hf]'") from None
    return transformers


@cache
def _family_keys(config_class: type) -> frozenset[str]:
    """The keys a family's config class defines: its ``__init__`` parameters and what a default
    instance writes to config.json."""
    params = {name for name, p in inspect.signature(config_class).parameters.items()
              if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"}
    try:
        params |= set(config_class().to_dict())
    except Exception:  # a config that cannot be built with defaults: its parameters only
        pass
    return frozenset(params)


def _refuse(where: str, why: str) -> ModelCardError:
    return ModelCardError(f"model card {where}: {why}; refused before anything is loaded")


def _check_value(value: Any, where: str, depth: int = 0) -> None:
    """Numbers, booleans, null, plain tokens, and lists of those; an empty object."""
    if depth > MAX_DEPTH:
        raise _refuse(where, "nests too deep")
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        if not _TOKEN.match(value):
            raise _refuse(where, f"{value[:80]!r} is not a plain value (letters, digits, '_', '.', '-'): a value "
                                 "here cannot name a repository, a path or a kernel")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict) and not value:
        return
    raise _refuse(where, "an object is not accepted here")


def _check_labels(value: Any, where: str) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        if all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value.values()):
            return
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        return
    raise _refuse(where, "must map labels to names (or names to indices)")


def _check_timm_args(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _refuse(where, "must be an object of timm keyword arguments")
    for key, item in value.items():
        if key in REFUSED:
            raise _refuse(f"{where}.{key}", REFUSED[key])
        if key not in TIMM_MODEL_ARGS:
            raise _refuse(f"{where}.{key}", f"not an accepted timm argument (accepted: {sorted(TIMM_MODEL_ARGS)})")
        _check_value(item, f"{where}.{key}", 1)


def check_hf_config(config: Mapping[str, Any], where: str = "'options.config'", depth: int = 0) -> None:
    """Raise :class:`ModelCardError` for any key or value of a Hugging Face config outside the
    allow-list of its family (``model_type``)."""
    transformers = _transformers()
    model_type = config.get("model_type")
    mapping = transformers.CONFIG_MAPPING
    if not isinstance(model_type, str) or model_type not in mapping:
        raise _refuse(f"{where}.model_type", f"{str(model_type)[:80]!r} is not a model type of transformers "
                                             f"{transformers.__version__}")
    if depth == 0:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as classes

        if model_type not in classes:
            raise ModelCardError(f"model card 'options.config' model_type {model_type!r} is not an image "
                                 f"classifier of transformers {transformers.__version__}; "
                                 f"known: {sorted(classes)[:50]}")
    config_class = mapping[model_type]
    allowed = _family_keys(config_class) | COMMON_KEYS | LABEL_KEYS
    nested = dict(getattr(config_class, "sub_configs", None) or {})
    for key, value in config.items():
        at = f"{where}.{key}"
        if not isinstance(key, str):
            raise _refuse(where, "keys must be strings")
        if key in REFUSED:
            if value is None or value is False or value in ("", {}):  # saved configs say "none" so
                continue
            raise _refuse(at, REFUSED[key])
        if "implementation" in key:
            raise _refuse(at, "can choose a kernel, which may come from the Hub")
        if key not in allowed and key not in nested:
            raise _refuse(at, f"not a key of a {model_type!r} config")
        if key in LABEL_KEYS:
            _check_labels(value, at)
        elif key in nested and isinstance(value, dict):
            sub = nested[key]
            sub_type = getattr(sub, "model_type", "")
            if depth >= 2 or not sub_type or value.get("model_type", sub_type) != sub_type:
                raise _refuse(at, "a nested config of another model type is not accepted")
            check_hf_config({**value, "model_type": sub_type}, at, depth + 1)
        elif model_type == "timm_wrapper" and key == "architecture":
            if not isinstance(value, str):
                raise _refuse(at, "must be a timm architecture name")
            check_timm_name(value, at)
        elif model_type == "timm_wrapper" and key == "model_args":
            _check_timm_args(value, at)
        else:
            _check_value(value, at)
