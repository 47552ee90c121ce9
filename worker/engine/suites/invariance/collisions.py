"""Colliding partners: per image x, a large δ with W(δ / std) = 0 and x + δ inside [0, 1].

The card's normalisation z = (x − mean) / std is affine per channel: the mean cancels in
z' − z, and dividing by std is invertible, so δ collides exactly when u = δ / std lies in
null(W); the [0, 1] box of x is the box [−x / std, (1 − x) / std] of u. Work is in u.

The search, per image (batched; every image has its own seeded stream):

1. start: a random direction in null(W) (a Gaussian projected), scaled to the largest multiple
   that stays in the box;
2. ``steps`` times: an ascent step on the objective (``l2``: ‖std·u‖₂, whose gradient points
   along std²·u; ``linf``: std·|u| at the start's largest coordinate), scaled so that the
   coordinate moving most moves ``STEP`` of its box width; then back onto null(W) ∩ box by
   Dykstra's alternating projections (``DYKSTRA_ITERATIONS`` rounds of: onto null(W), then
   clipping to the box with Dykstra's correction);
3. each candidate is made exactly feasible (projected onto null(W) once more, then scaled by the
   largest factor ≤ 1 that keeps it in the box) and kept when its objective is the best so far.

The result is always in null(W) to rounding and in the box exactly; the steps only make it larger.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch

from .nullspace import Projector

#: an ascent step moves the coordinate that moves most by this share of its box width
STEP = 0.5
#: rounds of alternating projections per step
DYKSTRA_ITERATIONS = 20


class Objective(StrEnum):
    L2 = "l2"
    LINF = "linf"


def fit_in_box(u: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``t * u`` with the largest t in [0, 1] (per image) such that lo <= t * u <= hi (lo <= 0 <= hi)."""
    flat, lo_f, hi_f = u.reshape(u.shape[0], -1), lo.reshape(u.shape[0], -1), hi.reshape(u.shape[0], -1)
    inf = torch.full_like(flat, float("inf"))
    room = torch.where(flat > 0, hi_f / flat.where(flat > 0, 1.0), inf)
    room = torch.minimum(room, torch.where(flat < 0, lo_f / flat.where(flat < 0, 1.0), inf))
    t = room.amin(dim=1).clamp(min=0.0, max=1.0)
    return u * t.view(-1, *([1] * (u.dim() - 1)))


def dykstra(y: torch.Tensor, project: Projector, lo: torch.Tensor, hi: torch.Tensor, rounds: int) -> torch.Tensor:
    """Approximately the nearest point to ``y`` in null(W) ∩ box (a subspace needs no correction term)."""
    x, q = y, torch.zeros_like(y)
    for _ in range(rounds):
        a = project(x)
        x = torch.minimum(torch.maximum(a + q, lo), hi)
        q = a + q - x
    return x


def _value(u: torch.Tensor, std: torch.Tensor, objective: Objective) -> torch.Tensor:
    d = (u * std).reshape(u.shape[0], -1)
    return d.norm(dim=1) if objective is Objective.L2 else d.abs().amax(dim=1)


def colliding_perturbations(x: torch.Tensor, std: torch.Tensor, in_shape: Sequence[int], project: Projector,
                            generators: Sequence[torch.Generator], *, objective: Objective, steps: int
                            ) -> torch.Tensor:
    """δ (float64, shaped like ``x``) for images ``x`` (B x C x H x W in [0, 1]); ``std`` per channel.

    ``in_shape`` is the layout W reads (the image reshaped, element order kept); ``project`` the
    projection onto null(W) in that layout; one generator per image.
    """
    b = x.shape[0]
    shape = (b, *in_shape)
    s = std.to(torch.float64).view(1, -1, 1, 1).expand_as(x).reshape(shape)
    xs = x.to(torch.float64).reshape(shape)
    lo, hi = -xs / s, (1.0 - xs) / s
    noise = torch.stack([torch.randn(tuple(in_shape), generator=g, dtype=torch.float64) for g in generators])
    u = fit_in_box(project(noise.to(x.device)), lo, hi)
    best, best_value = u, _value(u, s, objective)
    width = hi - lo
    # linf: push the start's largest coordinate further, in its own direction
    flat = (u * s).reshape(b, -1)
    pick = flat.abs().argmax(dim=1)
    lin = torch.zeros_like(flat)
    lin[torch.arange(b), pick] = torch.sign(flat[torch.arange(b), pick])
    lin = lin.reshape(shape) * s
    for _ in range(steps):
        grad = u * s * s if objective is Objective.L2 else lin
        move = grad.abs().reshape(b, -1).amax(dim=1).clamp(min=1e-300).view(-1, *([1] * len(in_shape)))
        y = u + STEP * width * grad / move
        u = dykstra(y, project, lo, hi, DYKSTRA_ITERATIONS)
        candidate = fit_in_box(project(u), lo, hi)
        value = _value(candidate, s, objective)
        better = value > best_value
        best = torch.where(better.view(-1, *([1] * len(in_shape))), candidate, best)
        best_value = torch.maximum(value, best_value)
    return (best * s).reshape(x.shape)
