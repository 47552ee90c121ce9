"""Tensor building blocks shared by the corruptions: filters, zoom, shifts, colour, fractals.

Every function takes and returns N x C x H x W float tensors on any device.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .rng import SampleRandom

#: ITU-R 601 luma weights (what OpenCV's RGB2GRAY uses).
LUMA = (0.299, 0.587, 0.114)


def gray(x: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W luma (a single-channel image is returned as it is)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _pad(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """Pad H by ph and W by pw; reflection falls back to edge replication on tiny images."""
    if ph == 0 and pw == 0:
        return x
    if mode == "reflect" and (ph >= x.shape[-2] or pw >= x.shape[-1]):
        mode = "replicate"
    return F.pad(x, (pw, pw, ph, ph), mode=mode)


def fft_size(n: int) -> int:
    """The smallest 5-smooth length >= n (2^a 3^b 5^c): FFTs of such lengths are fast, while a
    length with a large prime factor (254 = 2 x 127) can be ten times slower."""
    best = next_power_of_two(n)
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def filter2d(x: torch.Tensor, kernel: torch.Tensor, *, mode: str = "reflect") -> torch.Tensor:
    """Correlate every channel with one odd-sized 2-D kernel (the same for the whole batch).

    A 1-D kernel runs as a sum of shifted copies (accumulated in place), a 2-D one as a product
    of FFTs of the padded image, zero-padded to a fast FFT length (the valid part of the
    circular convolution is unchanged): on a CPU both are an order of magnitude faster than a
    one-channel ``conv2d``.
    """
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    k = kernel.to(x.device, x.dtype)
    y = _pad(x.reshape(n * c, h, w)[:, None], kh // 2, kw // 2, mode)[:, 0]
    if kh == 1 or kw == 1:
        taps = kernel.flatten().tolist()
        dim = -1 if kh == 1 else -2
        size = w if kh == 1 else h
        out = y.narrow(dim, 0, size) * taps[0]
        for i in range(1, len(taps)):
            out.add_(y.narrow(dim, i, size), alpha=taps[i])
        return out.view(n, c, h, w)
    ph, pw = y.shape[-2:]
    fast = (fft_size(ph), fft_size(pw))
    spectrum = torch.fft.rfft2(y, s=fast)
    spectrum *= torch.fft.rfft2(k.flip(0, 1), s=fast)
    full = torch.fft.irfft2(spectrum, s=fast)
    return full[:, kh - 1:kh - 1 + h, kw - 1:kw - 1 + w].reshape(n, c, h, w)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised Gaussian taps with radius int(truncate * sigma + 0.5) (scipy's convention)."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(x: torch.Tensor, sigma: float | tuple[float, float], *, truncate: float = 4.0,
                  mode: str = "replicate") -> torch.Tensor:
    """Separable Gaussian blur; ``sigma`` may differ per axis (H, W)."""
    sh, sw = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    kh = gaussian_kernel1d(sh, truncate)
    kw = gaussian_kernel1d(sw, truncate)
    y = filter2d(x, kh.view(-1, 1), mode=mode)
    return filter2d(y, kw.view(1, -1), mode=mode)


@functools.lru_cache(maxsize=16)
def disk_kernel(radius: int, alias_blur: float) -> torch.Tensor:
    """ImageNet-C's defocus kernel: an aliased disk, lightly Gaussian-blurred (3x3, or 5x5 above r=8).

    Cached (one per severity); callers must not modify it.
    """
    half = max(8, radius)
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).double()
    disk /= disk.sum()
    size = 3 if radius <= 8 else 5
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / alias_blur) ** 2)
    g /= g.sum()
    blurred = filter2d(disk.view(1, 1, *disk.shape), torch.outer(g, g), mode="reflect")
    return blurred[0, 0].float()


def clipped_zoom(x: torch.Tensor, factor: float, *, crop: bool = True) -> torch.Tensor:
    """Zoom into the centre by ``factor`` >= 1 (bilinear, corners aligned) and keep the input size.

    The zoomed centre is round(ceil(size / factor) * factor) pixels, one or two more than
    the input at some factors; ``crop=False`` returns it whole (snow blurs it before cropping).
    """
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    # One-channel planes: torch's CPU bilinear kernel is about three times faster on them.
    centre = x.reshape(-1, 1, *x.shape[-2:])[..., top:top + ch, left:left + cw]
    size = (max(h, round(ch * factor)), max(w, round(cw * factor)))
    out = F.interpolate(centre, size=size, mode="bilinear", align_corners=True).view(*x.shape[:-2], *size)
    return out[..., :h, :w] if crop else out


def shift_gather(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Shift each sample by its own integer (dx, dy), repeating the edge: out[y, x] = in[y - dy, x - dx]."""
    n, c, h, w = x.shape
    ys = (torch.arange(h, device=x.device).view(1, h) - dy.view(n, 1)).clamp(0, h - 1)
    xs = (torch.arange(w, device=x.device).view(1, w) - dx.view(n, 1)).clamp(0, w - 1)
    flat = (ys[:, :, None] * w + xs[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(x.reshape(n, c, h * w), 2, flat).view(n, c, h, w)


#: images at least this large (shorter side) are motion-blurred through FFTs instead of shifts.
MOTION_FFT_MIN_SIDE = 64


def motion_taps(n: int, h: int, w: int, radius: int, sigma: float,
                angle_deg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ImageNet-C's motion-blur taps per sample: (weights, dy, dx), each (width, N).

    Tap i shifts by i pixels along the angle with a half-Gaussian weight; a tap and all later
    ones are dropped (weight 0, not renormalised) once a shift leaves the image, as in the reference.
    """
    width = 2 * radius + 1
    steps = torch.arange(width, dtype=torch.float64).view(width, 1)
    weights = torch.exp(-steps ** 2 / (2 * sigma ** 2))
    weights = weights / weights.sum()
    rad = torch.deg2rad(angle_deg.double().cpu()).view(1, n)
    dys = -torch.ceil(steps * torch.sin(rad) - 0.5).long()
    dxs = -torch.ceil(steps * torch.cos(rad) - 0.5).long()
    alive = ((dys.abs() < h) & (dxs.abs() < w)).long().cumprod(dim=0).bool()
    return weights * alive, dys, dxs


def motion_blur(x: torch.Tensor, radius: int, sigma: float, angle_deg: torch.Tensor) -> torch.Tensor:
    """A half-Gaussian-weighted sum of edge-replicated shifts along each sample's angle.

    Small images sum shifted copies; large ones multiply FFTs of the edge-padded image and of
    each sample's line kernel (the same numbers, an order of magnitude fewer passes).
    """
    n, _, h, w = x.shape
    weights, dys, dxs = motion_taps(n, h, w, radius, sigma, angle_deg)
    if min(h, w) >= MOTION_FFT_MIN_SIDE:
        return _motion_fft(x, weights, dys, dxs)
    tap_w = weights.to(x.device, x.dtype)
    dys, dxs = dys.to(x.device), dxs.to(x.device)
    out = torch.zeros_like(x)
    for i in range(int((weights > 0).any(dim=1).sum())):
        out = out + tap_w[i].view(n, 1, 1, 1) * shift_gather(x, dxs[i], dys[i])
    return out


def _motion_fft(x: torch.Tensor, weights: torch.Tensor, dys: torch.Tensor, dxs: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    live = weights > 0
    if not live.any():
        return torch.zeros_like(x)
    r = int(torch.maximum(dys.abs()[live].max(), dxs.abs()[live].max()))
    kernel = torch.zeros(n, 2 * r + 1, 2 * r + 1, dtype=torch.float64)
    sample = torch.arange(n).view(1, n).expand_as(dys)
    kernel.index_put_((sample[live], dys[live] + r, dxs[live] + r), weights[live], accumulate=True)
    # Edge-pad straight to a fast FFT length: what lies beyond h + 2r only reaches outputs
    # that the crop below drops, so it need not be zeros.
    size = (fft_size(h + 2 * r), fft_size(w + 2 * r))
    padded = F.pad(x.reshape(n * c, 1, h, w), (r, size[1] - w - r, r, size[0] - h - r), mode="replicate")
    spectrum = torch.fft.rfft2(padded.view(n, c, *size))
    spectrum *= torch.fft.rfft2(kernel.to(x.device, x.dtype), s=size)[:, None]
    full = torch.fft.irfft2(spectrum, s=size)
    return full[..., 2 * r:2 * r + h, 2 * r:2 * r + w]


def plasma_fractal(rng: SampleRandom, size: int, decay: float) -> torch.Tensor:
    """Diamond-square height maps (N x size x size, values in [0, 1]); ``size`` a power of two.

    Each sample's random numbers for every level are drawn in one call (a flat block that the
    levels slice), which keeps the per-sample streams and avoids a draw per level and sample.
    """
    if size & (size - 1):
        raise ValueError(f"plasma size must be a power of two, got {size}")
    n = len(rng)
    levels = []
    step = size
    while step >= 2:
        levels.append(step)
        step //= 2
    counts = [(size // s) ** 2 for s in levels]
    noise = rng.uniform((3 * sum(counts),), -1.0, 1.0).cpu().double()
    # Every point is written before it is read except the first corner, which starts at 0.
    grid = torch.empty(n, size, size, dtype=torch.float64)
    grid[:, 0, 0] = 0
    wibble, offset = 100.0, 0

    def jitter(t: torch.Tensor, into: torch.Tensor) -> None:
        """into = t / 4 + u * wibble * wibble, u the next block of this level's noise."""
        nonlocal offset
        count = t.shape[1] * t.shape[2]
        u = noise[:, offset:offset + count].view(t.shape)
        offset += count
        torch.div(t, 4, out=into).add_(torch.mul(u, wibble).mul_(wibble))

    for step in levels:
        half = step // 2
        corners = grid[:, 0::step, 0::step]
        square = _plus_rolled(_plus_rolled(corners, corners, -1, 1), None, -1, 2)
        jitter(square, grid[:, half::step, half::step])
        centres = grid[:, half::step, half::step]
        top = _plus_rolled(centres, centres, 1, 1)
        top += corners
        jitter(_add_rolled_(top, corners, -1, 2), grid[:, 0::step, half::step])
        left = _plus_rolled(centres, centres, 1, 2)
        left += corners
        jitter(_add_rolled_(left, corners, -1, 1), grid[:, half::step, 0::step])
        wibble /= decay
    flat = grid.view(n, -1)
    grid -= flat.amin(dim=1).view(n, 1, 1)
    hi = flat.amax(dim=1).clamp_min(1e-12).view(n, 1, 1)
    return grid.div_(hi).float().to(rng.device)


def _plus_rolled(a: torch.Tensor, b: torch.Tensor | None, shift: int, dim: int) -> torch.Tensor:
    """a + b.roll(shift, dim) (b = a when None) without materialising the roll."""
    src = a if b is None else b
    size = src.shape[dim]
    s = shift % size
    if s == 0:
        return a + src
    out = torch.empty_like(a)
    torch.add(a.narrow(dim, s, size - s), src.narrow(dim, 0, size - s), out=out.narrow(dim, s, size - s))
    torch.add(a.narrow(dim, 0, s), src.narrow(dim, size - s, s), out=out.narrow(dim, 0, s))
    return out


def _add_rolled_(out: torch.Tensor, src: torch.Tensor, shift: int, dim: int) -> torch.Tensor:
    """out += src.roll(shift, dim), in place (``out`` must not overlap ``src``)."""
    size = src.shape[dim]
    s = shift % size
    if s == 0:
        return out.add_(src)
    out.narrow(dim, s, size - s).add_(src.narrow(dim, 0, size - s))
    out.narrow(dim, 0, s).add_(src.narrow(dim, size - s, s))
    return out


def next_power_of_two(v: int) -> int:
    return 1 if v <= 1 else 2 ** (v - 1).bit_length()
