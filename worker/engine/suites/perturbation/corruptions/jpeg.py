"""JPEG compression on tensors: the baseline JPEG pipeline, with the entropy coding left out.

The lossy steps of JPEG are colour conversion to YCbCr, 4:2:0 chroma subsampling, the 8x8
DCT, quantisation with the IJG tables scaled by the quality, and rounding to 8 bits; the
entropy coding that follows is lossless. Running the lossy steps batched on the model's
device gives what a decoder would show (up to the codec's rounding and upsampling filter)
without a per-image round trip through a codec on the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

QUALITY = (25, 18, 15, 10, 7)

# ITU-T T.81 Annex K tables (luminance, chrominance), row-major.
_LUMA_Q = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
           14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
           49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA_Q = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
             47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def quant_table(base: tuple[int, ...], quality: int) -> torch.Tensor:
    """The IJG scaling of a base table for a quality in 1..100."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = [min(255, max(1, math.floor((b * scale + 50) / 100))) for b in base]
    return torch.tensor(q, dtype=torch.float32).view(8, 8)


def dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix."""
    k = torch.arange(8, dtype=torch.float64).view(8, 1)
    i = torch.arange(8, dtype=torch.float64).view(1, 8)
    m = torch.cos((2 * i + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.to(device, dtype)


def _quantise_plane(p: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """DCT, quantise, dequantise and inverse-DCT an N x H x W plane (0..255 scale, H, W multiples of 8)."""
    n, h, w = p.shape
    d = dct_matrix(p.device, p.dtype)
    blocks = (p - 128).view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coef = d @ blocks @ d.T
    q = table.to(p.device, p.dtype)
    coef = torch.round(coef / q) * q
    back = d.T @ coef @ d + 128
    return back.permute(0, 1, 3, 2, 4).reshape(n, h, w)


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def jpeg_quantise(x: torch.Tensor, quality: int) -> torch.Tensor:
    """x (N x C x H x W, C = 1 or 3, in [0, 1]) after lossy JPEG coding at ``quality``."""
    n, c, h, w = x.shape
    luma_q, chroma_q = quant_table(_LUMA_Q, quality), quant_table(_CHROMA_Q, quality)
    v = torch.round(x.clamp(0, 1) * 255)
    if c == 1:
        y = _quantise_plane(_pad_to(v, 8)[:, 0], luma_q)[:, None, :h, :w]
        return (torch.round(y).clamp(0, 255) / 255).to(x.dtype)
    if c != 3:
        raise ValueError(f"JPEG takes 1 or 3 channels, got {c}")
    v = _pad_to(v, 16)
    r, g, b = v[:, 0], v[:, 1], v[:, 2]
    yy = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    yy = _quantise_plane(torch.round(yy), luma_q)
    chroma = torch.stack([cb, cr], dim=1)
    chroma = torch.round(F.avg_pool2d(chroma, 2))
    chroma = torch.stack([_quantise_plane(chroma[:, i], chroma_q) for i in range(2)], dim=1)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0] - 128, chroma[:, 1] - 128
    rgb = torch.stack([yy + 1.402 * cr, yy - 0.344136 * cb - 0.714136 * cr, yy + 1.772 * cb], dim=1)
    return (torch.round(rgb[..., :h, :w]).clamp(0, 255) / 255).to(x.dtype)


def jpeg_compression(x: torch.Tensor, severity: int, rng: object = None) -> torch.Tensor:
    """JPEG artefacts at ImageNet-C's qualities (25, 18, 15, 10, 7)."""
    return jpeg_quantise(x, QUALITY[severity - 1])
