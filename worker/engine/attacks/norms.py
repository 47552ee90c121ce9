"""Threat models: the L-inf and L2 balls in [0, 1] pixel space, and what each needs.

Each norm has one small operations object (measure, project, steepest-ascent step, random
start), picked from a registry by the :class:`Norm` enum, so attacks never branch on names.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol

import torch

from .rng import RandomSource, normal, uniform


class Norm(str, Enum):
    """A threat model's norm; coerce request strings with ``Norm("linf")``."""

    LINF = "linf"
    L2 = "l2"

    @property
    def ops(self) -> NormOps:
        return _OPS[self]


def _view(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A per-sample value (or scalar) shaped to broadcast over N x C x H x W."""
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return t.view(-1, *([1] * (like.dim() - 1))) if t.dim() else t


class NormOps(Protocol):
    def measure(self, delta: torch.Tensor) -> torch.Tensor: ...

    def project(self, delta: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor: ...

    def step(self, grad: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor: ...

    def random(self, like: torch.Tensor, eps: torch.Tensor | float, source: RandomSource
               ) -> torch.Tensor: ...


class _Linf:
    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(dim=1)

    def project(self, delta: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
        e = _view(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)

    def step(self, grad: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
        return grad.sign() * _view(alpha, grad)

    def random(self, like: torch.Tensor, eps: torch.Tensor | float, source: RandomSource) -> torch.Tensor:
        u = uniform(like.shape, source, like.dtype).to(like.device)
        return (2 * u - 1) * _view(eps, like)


class _L2:
    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(p=2, dim=1)

    def project(self, delta: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
        n = self.measure(delta)
        e = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device)
        factor = torch.minimum(torch.ones_like(n), e / n.clamp_min(1e-12))
        return delta * _view(factor, delta)

    def step(self, grad: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
        n = self.measure(grad).clamp_min(1e-12)
        return grad * _view(torch.as_tensor(alpha, dtype=grad.dtype, device=grad.device) / n, grad)

    def random(self, like: torch.Tensor, eps: torch.Tensor | float, source: RandomSource) -> torch.Tensor:
        # Uniform in the ball: a Gaussian direction, radius eps * u^(1/d).
        n, d = like.shape[0], like[0].numel()
        g = normal(like.shape, source, like.dtype).to(like.device)
        r = uniform((n, 1), source, like.dtype).view(n).to(like.device) ** (1.0 / d)
        direction = g / _view(self.measure(g).clamp_min(1e-12), g)
        return direction * _view(r, g) * _view(eps, like)


_OPS: dict[Norm, NormOps] = {Norm.LINF: _Linf(), Norm.L2: _L2()}
