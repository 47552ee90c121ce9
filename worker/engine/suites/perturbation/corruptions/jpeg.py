"""JPEG compression on tensors: the baseline JPEG pipeline, with the entropy coding left out.

The lossy steps of JPEG are colour conversion to YCbCr, 4:2:0 chroma subsampling, the 8x8
DCT, quantisation with the IJG tables scaled by the quality, and rounding to 8 bits; the
entropy coding that follows is lossless. Running the lossy steps batched on the model's
device gives what a decoder would show (up to the codec's rounding and upsampling filter)
without a per-image round trip through a codec on the CPU.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=64)
def _block_codec(quality: int, chroma: bool, device: torch.device, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(analysis, synthesis) 64 x 64 matrices for flattened 8x8 blocks: the 2-D DCT (the
    Kronecker product of the 1-D one) with the division by the quantisation table folded into
    the first and the multiplication by it into the second."""
    d = dct_matrix(torch.device("cpu"), torch.float64)
    d2 = torch.kron(d, d)  # coef.flatten() = d2 @ block.flatten()
    q = quant_table(_CHROMA_Q if chroma else _LUMA_Q, quality).double().flatten()
    analysis = d2.T / q.view(1, 64)
    synthesis = q.view(64, 1) * d2
    return analysis.to(device, dtype), synthesis.to(device, dtype)


def _quantise_plane(p: torch.Tensor, quality: int, chroma: bool) -> torch.Tensor:
    """DCT, quantise, dequantise and inverse-DCT N x P x H x W planes (0..255 scale, H, W
    multiples of 8): every 8x8 block of the batch in two matrix products."""
    n, c, h, w = p.shape
    analysis, synthesis = _block_codec(quality, chroma, p.device, p.dtype)
    blocks = p.view(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(-1, 64)
    coef = torch.mm(blocks.sub_(128), analysis).round_()
    back = torch.mm(coef, synthesis).add_(128)
    return back.view(n, c, h // 8, w // 8, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def jpeg_quantise(x: torch.Tensor, quality: int) -> torch.Tensor:
    """x (N x C x H x W, C = 1 or 3, in [0, 1]) after lossy JPEG coding at ``quality``."""
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"JPEG takes 1 or 3 channels, got {c}")
    v = x.clamp(0, 1).mul_(255).round_()
    if c == 1:
        y = _quantise_plane(_pad_to(v, 8), quality, chroma=False)[..., :h, :w]
        return (y.round().clamp_(0, 255).div_(255)).to(x.dtype)
    v = _pad_to(v, 16)
    n, _, hp, wp = v.shape
    r, g, b = v[:, 0:1], v[:, 1:2], v[:, 2:3]
    tmp = torch.empty_like(r)
    luma = _quantise_plane(_mix([(r, 0.299), (g, 0.587), (b, 0.114)], tmp).round_(), quality, chroma=False)
    # 4:2:0: chroma averaged over 2x2 pixels, coded and upsampled back.
    chroma = torch.empty((n, 2, hp, wp), dtype=v.dtype, device=v.device)
    _mix([(r, -0.168736), (g, -0.331264), (b, 0.5)], tmp, out=chroma[:, 0:1])
    _mix([(r, 0.5), (g, -0.418688), (b, -0.081312)], tmp, out=chroma[:, 1:2])
    chroma = F.avg_pool2d(chroma.add_(128), 2).round_()
    chroma = _quantise_plane(chroma, quality, chroma=True).sub_(128)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0:1], chroma[:, 1:2]
    rgb = torch.empty_like(v)
    torch.mul(cr, 1.402, out=rgb[:, 0:1]).add_(luma)
    _mix([(cb, -0.344136), (luma, 1.0), (cr, -0.714136)], tmp, out=rgb[:, 1:2])
    torch.mul(cb, 1.772, out=rgb[:, 2:3]).add_(luma)
    rgb = rgb.round_() if (hp, wp) == (h, w) else rgb[..., :h, :w].round()
    return rgb.clamp_(0, 255).div_(255).to(x.dtype)


def _mix(terms: list[tuple[torch.Tensor, float]], tmp: torch.Tensor, out: torch.Tensor | None = None
         ) -> torch.Tensor:
    """Sum of weight x plane over ``terms``, left to right (one colour-matrix row), into ``out``."""
    (first, weight), *rest = terms
    out = torch.mul(first, weight, out=out) if out is not None else first * weight
    for plane, wt in rest:
        out += torch.mul(plane, wt, out=tmp)
    return out


def jpeg_compression(x: torch.Tensor, severity: int, rng: object = None) -> torch.Tensor:
    """JPEG artefacts at ImageNet-C's qualities (25, 18, 15, 10, 7)."""
    return jpeg_quantise(x, QUALITY[severity - 1])
