"""Parameters of the fragile suite, and the few enums its parameters are coerced to."""

from __future__ import annotations

from enum import StrEnum

from ...params import Param, ParamKind, ParamSchema
from ..keys import metric_key


class FriType(StrEnum):
    """The four kinds of fragile recognition image (docs/suites/fragile.md, steps 4 and 5)."""

    LOOSE_SHIFT = "loose_shift"
    STRICT_SHIFT = "strict_shift"
    LOOSE_SHRINK = "loose_shrink"
    STRICT_SHRINK = "strict_shrink"


class Interpolation(StrEnum):
    """How a crop is resized to the model's input size (``F.interpolate`` modes)."""

    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    NEAREST = "nearest"


class Precision(StrEnum):
    """Arithmetic of the model's forward pass; correctness is always judged on float32 logits."""

    AUTO = "auto"  # bfloat16 autocast on CUDA (float16 where bf16 is unsupported), float32 on the CPU
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


FRI_TYPES = tuple(t.value for t in FriType)
DEFAULT_MAX_CROPS = 10_000_000

PARAMS = ParamSchema((
    Param("region_fractions", ParamKind.FLOAT_LIST, [0.2, 0.4, 0.6, 0.8],
          "region side as a fraction r of the image's shorter side; l = 2*floor(r*min(H,W)/2)+1",
          minimum=0.01, maximum=0.99, max_items=16),
    Param("top_k", ParamKind.INT, None, "a crop is correct when the true label is in the top k "
          "(null: 5 for models with >= 100 classes, else 1)", minimum=1, maximum=1000, nullable=True),
    Param("interpolation", ParamKind.CHOICE, Interpolation.BILINEAR.value,
          "resize of a crop to the model input (align_corners=False)", enum=Interpolation),
    Param("antialias", ParamKind.BOOL, False, "antialiased resize (bilinear/bicubic only), as F.interpolate"),
    Param("fri_types", ParamKind.CHOICE_LIST, list(FRI_TYPES),
          "FRI map types to compute, report and draw", enum=FriType, max_items=len(FRI_TYPES)),
    Param("example_pairs", ParamKind.INT, 3, "example pairs (correct crop beside its flipped neighbour) "
          "drawn per image and r; 0: none", minimum=0, maximum=32),
    Param("pngs", ParamKind.BOOL, True, "draw PNG maps and example pairs (the NPZ arrays are always written)"),
    Param("max_crops", ParamKind.INT, DEFAULT_MAX_CROPS, "refuse an audit whose images need more crops than "
          "this in total (C_l and C_{l-2} over every image and r)", minimum=1, maximum=10**10),
    Param("batch_size", ParamKind.INT, None, "crops per forward pass (null: the model's automatic batch size)",
          minimum=1, maximum=65536, nullable=True),
    Param("precision", ParamKind.CHOICE, Precision.AUTO.value, "forward-pass arithmetic; auto: bfloat16 "
          "autocast on CUDA, float32 on the CPU", enum=Precision),
    Param("channels_last", ParamKind.BOOL, True, "on CUDA, run the model in channels_last memory format "
          "when it accepts it"),
    Param("bootstrap", ParamKind.INT, 1000, "bootstrap resamples over images for the 95% intervals",
          minimum=100, maximum=100_000),
))


def region_side(r: float, height: int, width: int) -> int:
    """Odd region side l = 2*floor(r*min(H, W)/2) + 1 (docs/suites/fragile.md, step 1)."""
    # Rounded first so that e.g. 0.58 * 50 (28.999999999999996 in floating point) counts as 29.
    return 2 * int(round(r * min(height, width), 9) / 2) + 1


def r_key(r: float) -> str:
    """Metric key of a region fraction: 0.2 -> "r_0p2", 0.125 -> "r_0p125" (the one rule of suites/keys.py)."""
    return metric_key("r", r)
