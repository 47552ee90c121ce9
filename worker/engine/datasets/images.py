"""Decoded pixels -> the engine's image tensors: float32, C x H x W, values in [0, 1].

uint8 is divided by 255 (16-bit grey by 65535); floats must already lie in [0, 1]. Grey
stays one channel, everything else becomes RGB; a set that mixes both is made RGB.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import DatasetError
from ..samples import match_channels

if TYPE_CHECKING:  # numpy and Pillow are imported where images are decoded: the engine runs on torch alone
    import numpy as np
    from PIL import Image

_GREY_MODES = {"1", "L", "LA", "La"}
_WIDE_GREY_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def array_to_tensor(arr: np.ndarray, shown: str) -> torch.Tensor:
    """H x W or H x W x C (C in 1, 3) uint8 or float in [0, 1] -> C x H x W float32.

    Args:
        arr: the pixels.
        shown: what to call the image in an error message (file name, sample id).
    """
    import numpy as np

    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise DatasetError(f"image {shown} must be H x W or H x W x C with C in (1, 3), "
                           f"got shape {tuple(arr.shape)}")
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # PIL hands out read-only buffers; torch wants to own one
        arr = arr.copy()
    t = torch.from_numpy(arr).permute(2, 0, 1)
    return _scale(t, shown)


def chw_to_float(t: torch.Tensor, shown: str) -> torch.Tensor:
    """An already C x H x W uint8 or float tensor -> float32 in [0, 1]."""
    return _scale(t, shown)


def _scale(t: torch.Tensor, shown: str) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0).contiguous()
    if t.dtype.is_floating_point:
        out = t.to(torch.float32).contiguous()
        if not bool(torch.isfinite(out).all()) or float(out.min()) < 0.0 or float(out.max()) > 1.0:
            raise DatasetError(f"image {shown} has float pixels outside [0, 1] "
                               f"(min {float(t.min()):g}, max {float(t.max()):g}); "
                               "give uint8 or floats scaled to [0, 1]")
        return out
    raise DatasetError(f"image {shown} has dtype {str(t.dtype).removeprefix('torch.')}; "
                       "expected uint8 or float in [0, 1]")


def pil_to_tensor(img: Image.Image, shown: str) -> torch.Tensor:
    """A PIL image -> 1 x H x W (grey modes) or 3 x H x W (everything else)."""
    import numpy as np

    mode = img.mode
    if mode in _GREY_MODES:
        return array_to_tensor(np.asarray(img.convert("L")), shown)
    if mode in _WIDE_GREY_MODES:
        arr = np.asarray(img).astype(np.float64)
        if arr.min() < 0 or arr.max() > 65535:
            raise DatasetError(f"image {shown} ({mode}) has values outside 0..65535")
        return array_to_tensor((arr / 65535.0).astype(np.float32), shown)
    if mode == "F":
        return array_to_tensor(np.asarray(img), shown)
    if mode != "RGB":
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        img = img.convert("RGB")
    return array_to_tensor(np.asarray(img), shown)


def read_image_file(path: str | os.PathLike[str], shown: str) -> torch.Tensor:
    """Decode one image file; a file PIL cannot read is a :class:`DatasetError` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_tensor(img, shown)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot read image {shown}: {exc}", file=shown) from None


def unify_channels(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """All grey, or all RGB: grey images of a mixed set are replicated to 3 channels."""
    if any(img.shape[0] == 3 for img in images):
        return [match_channels(img, 3) for img in images]
    return list(images)
