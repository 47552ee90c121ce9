"""The reference implementations the corruption tests compare with (test-only dependencies).

imagecorruptions 1.1.2 is the reference. Its glass_blur fails under current scikit-image
(``multichannel``), so glass_blur comes from corrupt-tta 0.1.7, which takes only H x W x 3
uint8 (a grey image is replicated to three channels and its first channel taken back). Its
fog fails under NumPy 2 only for the removed alias ``np.float_``; with that alias restored
for the call it is the true reference. (corrupt-tta's fog is not: it ignores ImageNet-C's
per-severity fractal decay and always uses 3, which gives a smoother, brighter haze.)
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

CORRUPT_TTA = ("glass_blur",)


def reference(name: str, image: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    """The reference corruption of one C x H x W image in [0, 1], as a C x H x W tensor in [0, 1]."""
    arr = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    grey = arr.shape[2] == 1
    np.random.seed(seed)
    if name in CORRUPT_TTA:
        tta = pytest.importorskip("corrupt_tta")
        inp = np.repeat(arr, 3, axis=2) if grey else arr
        out = np.asarray(tta.corrupt(inp, severity=severity, corruption_name=name), dtype=np.float64)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ic = pytest.importorskip("imagecorruptions")
        restore = not hasattr(np, "float_")
        if restore:
            np.float_ = np.float64  # type: ignore[attr-defined]
        try:
            out = np.asarray(ic.corrupt(arr[..., 0] if grey else arr, corruption_name=name, severity=severity),
                             dtype=np.float64)
        finally:
            if restore:
                del np.float_
    if out.ndim == 2:
        out = out[..., None]
    if grey:
        # Grey input comes back as three channels from some functions, each corrupted on its own
        # (noise) or identically; one channel is what a grey image would have got.
        out = out[..., :1]
    return torch.from_numpy(np.clip(out, 0, 255) / 255.0).permute(2, 0, 1).float()


def picture(channels: int = 3, size: int = 64) -> torch.Tensor:
    """A deterministic picture with smooth shading, hard edges and texture (C x H x W in [0, 1])."""
    g = torch.Generator().manual_seed(7)
    t = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    r = 0.25 + 0.5 * xx
    gch = 0.3 + 0.4 * yy
    b = 0.6 - 0.3 * xx * yy
    img = torch.stack([r, gch, b])
    for cy, cx, rad, col in ((0.3, 0.35, 0.18, (0.9, 0.2, 0.1)), (0.7, 0.65, 0.22, (0.1, 0.3, 0.85)),
                             (0.25, 0.75, 0.1, (0.95, 0.9, 0.2))):
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2) < rad ** 2
        for ch in range(3):
            img[ch][disk] = col[ch]
    stripes = ((xx * size / 4).floor() % 2 == 0) & (yy > 0.85)
    img[:, stripes] *= 0.4
    img = (img + 0.03 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    if channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        img = (img * w).sum(0, keepdim=True)
    return img
