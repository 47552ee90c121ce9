"""FRI maps from correctness maps, with tensor operations only (docs/suites/fragile.md, steps 4-5).

A map holds +1 where a correct cell is fragile (correct -> incorrect), -1 where an
incorrect cell is (incorrect -> correct), and 0 elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .params import FriType


def _box3(x: torch.Tensor, *, padding: int) -> torch.Tensor:
    """3x3 window sums of a 2-D integer map: nine shifted views added (a loop over offsets, not cells)."""
    if padding:
        x = F.pad(x, (padding,) * 4)
    h, w = x.shape
    total = torch.zeros(h - 2, w - 2, dtype=torch.int32, device=x.device)
    for a in range(3):
        for b in range(3):
            total += x[a:h - 2 + a, b:w - 2 + b]
    return total


def _signed(cell: torch.Tensor, fragile: torch.Tensor) -> torch.Tensor:
    """+1 / -1 by the cell's own correctness where ``fragile``, else 0; int8."""
    sign = cell.to(torch.int8) * 2 - 1
    return torch.where(fragile, sign, torch.zeros_like(sign))


def shift_maps(correct_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loose, strict) shift FRI maps of a 0/1 map C_l; only neighbours inside the map count."""
    c = correct_l.to(torch.int32)
    neighbours = _box3(torch.ones_like(c), padding=1) - 1  # zero padding: missing cells add nothing
    correct_neighbours = _box3(c, padding=1) - c
    cell = correct_l.bool()
    differing = torch.where(cell, neighbours - correct_neighbours, correct_neighbours)
    loose = differing > 0
    strict = loose & (differing == neighbours)
    return _signed(cell, loose), _signed(cell, strict)


def shrink_maps(correct_l: torch.Tensor, correct_l2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loose, strict) shrink FRI maps: each l-region against the nine (l-2)-regions inside it."""
    h, w = correct_l.shape
    if tuple(correct_l2.shape) != (h + 2, w + 2):
        raise ValueError(f"C_(l-2) must be {(h + 2, w + 2)} for a {(h, w)} C_l, got {tuple(correct_l2.shape)}")
    inner = _box3(correct_l2.to(torch.int32), padding=0)
    cell = correct_l.bool()
    differing = torch.where(cell, 9 - inner, inner)
    loose = differing > 0
    strict = differing == 9
    return _signed(cell, loose), _signed(cell, strict)


def fri_maps(correct_l: torch.Tensor, correct_l2: torch.Tensor) -> dict[FriType, torch.Tensor]:
    """All four FRI maps, int8 with values in {-1, 0, +1}."""
    loose_shift, strict_shift = shift_maps(correct_l)
    loose_shrink, strict_shrink = shrink_maps(correct_l, correct_l2)
    return {FriType.LOOSE_SHIFT: loose_shift, FriType.STRICT_SHIFT: strict_shift,
            FriType.LOOSE_SHRINK: loose_shrink, FriType.STRICT_SHRINK: strict_shrink}


def sign_counts(fri_map: torch.Tensor) -> tuple[int, int]:
    """(cells with +1, cells with -1) of an FRI map."""
    return int((fri_map > 0).sum()), int((fri_map < 0).sum())
