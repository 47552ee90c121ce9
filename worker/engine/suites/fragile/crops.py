"""Batched crop-and-resize on the model's device, equal to ``F.interpolate`` of each crop.

Every crop of side ``l`` is resized to the same output grid, so the source taps (indices
relative to the crop's origin, and their weights) are the same for all of them. We read the
taps off ``F.interpolate`` itself, by resizing one-hot rows, so they are PyTorch's own
weights including its clamping at the crop's border (which ``roi_align`` on the whole image
would not do: it blends in pixels outside the crop). A crop is then two 1-D steps: a
vertical pass shared by every crop of one row offset, and a horizontal gather per crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .params import Interpolation


@dataclass(frozen=True)
class Taps:
    """The 1-D resize from ``size_in`` to ``size_out`` samples as (index, weight) taps.

    Args:
        index: int64 (size_out, K) source offsets relative to the crop origin.
        weight: float32 (size_out, K) weights; padded taps have weight 0 and index 0.
    """

    index: torch.Tensor
    weight: torch.Tensor

    @property
    def width(self) -> int:
        return int(self.index.shape[1])


def resize_matrix(size_in: int, size_out: int, *, mode: Interpolation, antialias: bool) -> torch.Tensor:
    """The (size_out, size_in) matrix of ``F.interpolate`` along one axis, read off one-hot inputs."""
    # Two columns, not one: torch's CPU antialias kernel gives other weights for a 1-wide input.
    basis = torch.eye(size_in, dtype=torch.float32).reshape(size_in, 1, size_in, 1).expand(-1, -1, -1, 2)
    kwargs: dict[str, object] = {"mode": mode.value}
    if mode is not Interpolation.NEAREST:
        kwargs.update(align_corners=False, antialias=antialias)
    out = F.interpolate(basis.contiguous(), size=(size_out, 2), **kwargs)  # type: ignore[arg-type]
    return out[:, 0, :, 0].T.contiguous()


def taps_of(matrix: torch.Tensor) -> Taps:
    """Sparse (index, weight) form of a resize matrix; exact, because the dropped entries are 0."""
    nonzero = matrix != 0
    k = max(1, int(nonzero.sum(dim=1).max()))
    # Stable sort puts the nonzero columns first, in increasing order.
    order = torch.sort((~nonzero).to(torch.int8), dim=1, stable=True).indices[:, :k]
    weight = matrix.gather(1, order)
    index = torch.where(weight != 0, order, torch.zeros_like(order))
    return Taps(index=index, weight=weight)


class CropResizer:
    """Cuts square crops of one side from an image and resizes them to the model input size.

    Args:
        out_size: (height, width) of the model input.
        mode: interpolation mode.
        antialias: as ``F.interpolate(..., antialias=...)`` (bilinear and bicubic only).
        device: where the taps live (the model's device).
    """

    def __init__(self, out_size: tuple[int, int], *, mode: Interpolation = Interpolation.BILINEAR,
                 antialias: bool = False, device: torch.device | str = "cpu") -> None:
        if antialias and mode is Interpolation.NEAREST:
            raise ValueError("antialias applies to bilinear and bicubic resizing only")
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.mode = mode
        self.antialias = antialias
        self.device = torch.device(device)
        self._taps: dict[tuple[int, int], Taps] = {}

    def taps(self, side: int, size_out: int) -> Taps:
        key = (side, size_out)
        if key not in self._taps:
            t = taps_of(resize_matrix(side, size_out, mode=self.mode, antialias=self.antialias))
            self._taps[key] = Taps(t.index.to(self.device), t.weight.to(self.device))
        return self._taps[key]

    def crops(self, image: torch.Tensor, side: int, start: int, stop: int) -> torch.Tensor:
        """Crops ``start:stop`` of the row-major list of every ``side`` x ``side`` crop of ``image``.

        ``image`` is C x H x W on the resizer's device; crop ``q`` has its top-left corner at
        (q // (W - side + 1), q % (W - side + 1)). Returns (stop - start) x C x out_h x out_w.
        """
        c, h, w = image.shape
        n_cols = w - side + 1
        if side > min(h, w) or side < 1:
            raise ValueError(f"crop side {side} does not fit a {h}x{w} image")
        if not 0 <= start <= stop <= (h - side + 1) * n_cols:
            raise ValueError(f"crop range {start}:{stop} out of bounds")
        if start == stop:
            return image.new_zeros(0, c, *self.out_size)
        ty, tx = self.taps(side, self.out_size[0]), self.taps(side, self.out_size[1])
        first_row, last_row = start // n_cols, (stop - 1) // n_cols
        rows = torch.arange(first_row, last_row + 1, device=self.device)
        # Vertical pass for the row offsets this range touches: (R, C, out_h, W).
        vert = None
        for k in range(ty.width):
            src = image[:, rows[:, None] + ty.index[None, :, k], :]  # C, R, out_h, W
            term = src * ty.weight[None, None, :, k, None]
            vert = term if vert is None else vert + term
        assert vert is not None
        vert = vert.permute(1, 0, 2, 3)
        q = torch.arange(start, stop, device=self.device)
        r_idx = (q // n_cols - first_row).view(-1, 1, 1, 1)
        j = (q % n_cols).view(-1, 1)
        c_idx = torch.arange(c, device=self.device).view(1, c, 1, 1)
        o_idx = torch.arange(self.out_size[0], device=self.device).view(1, 1, -1, 1)
        out = None
        for k in range(tx.width):
            cols = (j + tx.index[None, :, k]).view(len(q), 1, 1, -1)
            term = vert[r_idx, c_idx, o_idx, cols] * tx.weight[:, k]
            out = term if out is None else out + term
        assert out is not None
        return out


def reference_crop(image: torch.Tensor, top: int, left: int, side: int, out_size: tuple[int, int], *,
                   mode: Interpolation = Interpolation.BILINEAR, antialias: bool = False) -> torch.Tensor:
    """One crop through ``F.interpolate``: the definition the batched path must equal."""
    crop = image[None, :, top:top + side, left:left + side]
    kwargs: dict[str, object] = {"mode": mode.value}
    if mode is not Interpolation.NEAREST:
        kwargs.update(align_corners=False, antialias=antialias)
    return F.interpolate(crop, size=out_size, **kwargs)[0]  # type: ignore[arg-type]
