"""Example pairs: a correctly classified crop beside a neighbour whose classification flipped."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Neighbour order for picking the flipped partner of a shift FRI (row-major around the cell).
_SHIFTS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_SHRINKS = tuple((a, b) for a in range(3) for b in range(3))


@dataclass(frozen=True)
class Pair:
    """Two crops, as (top, left, side): the correct one and the flipped one."""

    kind: str  # "shift" or "shrink"
    correct: tuple[int, int, int]
    flipped: tuple[int, int, int]


def _spread(cells: torch.Tensor, n: int) -> list[tuple[int, int]]:
    """Up to ``n`` cells evenly spaced through a row-major list (deterministic, no generator)."""
    if n <= 0 or len(cells) == 0:
        return []
    picks = torch.linspace(0, len(cells) - 1, steps=min(n, len(cells))).round().long().unique()
    return [(int(i), int(j)) for i, j in cells[picks].tolist()]


def choose_pairs(correct_l: torch.Tensor, correct_l2: torch.Tensor, loose_shift: torch.Tensor,
                 loose_shrink: torch.Tensor, side: int, n: int) -> list[Pair]:
    """Up to ``n`` pairs from the positive (correct -> incorrect) shift FRIs, then shrink FRIs."""
    rows, cols = correct_l.shape
    pairs: list[Pair] = []
    for i, j in _spread(torch.nonzero(loose_shift > 0), n):
        for di, dj in _SHIFTS:
            a, b = i + di, j + dj
            if 0 <= a < rows and 0 <= b < cols and not bool(correct_l[a, b]):
                pairs.append(Pair("shift", (i, j, side), (a, b, side)))
                break
    for i, j in _spread(torch.nonzero(loose_shrink > 0), n - len(pairs)):
        for da, db in _SHRINKS:
            if not bool(correct_l2[i + da, j + db]):
                pairs.append(Pair("shrink", (i, j, side), (i + da, j + db, side - 2)))
                break
    return pairs
