"""Fast minimum-norm attack (Pintor, Roli, Brendel, Biggio, NeurIPS 2021), L-inf and L2.

Each step moves the perturbation along the normalised gradient of the logit margin, then
projects it onto a ball of radius eps_k that adapts per sample: it shrinks by a factor
(1 - gamma) while the point is adversarial, grows by (1 + gamma) once an adversarial has
been seen but the point is not, and before any success jumps to the linear estimate of the
distance to the boundary -- here never by less than the factor (1 + gamma): without that
floor, iterates on ReLU nets with clipped pixels can hover just short of the boundary for
good (a departure from the paper). Step size and gamma decay with cosine annealing. The smallest
adversarial seen is returned; the base re-checks it after clipping.
"""

from __future__ import annotations

import math

import torch

from ..errors import SpecError
from ..params import Param, ParamKind, ParamSchema
from .base import Attack, Model, RunOutput
from .losses import is_success, logit_margin
from .norms import Norm, _view
from .rng import RandomSource

_DUAL = {Norm.LINF: 1.0, Norm.L2: 2.0}


class FMN(Attack):
    """Fast minimum-norm attack.

    Args:
        norm: "linf" or "l2".
        steps: iterations.
        alpha_init, alpha_final: step size (L2 length of the step in pixel units), cosine-
            annealed; defaults 1.0 and alpha_init / 100.
        gamma_init, gamma_final: relative change of the ball radius per step, annealed.
    """

    name = "fmn"
    budget_free = True
    strength = 2
    params = ParamSchema((
        Param("steps", ParamKind.INT, 100, "iterations", minimum=1, maximum=10_000),
        Param("alpha_init", ParamKind.FLOAT, 1.0, "initial step size", minimum=1e-9, maximum=100.0),
        Param("alpha_final", ParamKind.FLOAT, None, "final step size (null: alpha_init / 100)",
              minimum=1e-9, maximum=100.0, nullable=True),
        Param("gamma_init", ParamKind.FLOAT, 0.05, "initial relative radius change", minimum=1e-9, maximum=0.999),
        Param("gamma_final", ParamKind.FLOAT, 0.001, "final relative radius change", minimum=1e-9, maximum=0.999),
    ))

    def __init__(self, *, norm: str = "l2", steps: int = 100, alpha_init: float = 1.0,
                 alpha_final: float | None = None, gamma_init: float = 0.05, gamma_final: float = 0.001) -> None:
        super().__init__(norm=norm)
        if steps < 1:
            raise SpecError("fmn: steps must be >= 1")
        alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
        if not (alpha_init > 0 and alpha_final > 0 and 0 < gamma_final <= gamma_init < 1):
            raise SpecError("fmn: need alpha_init, alpha_final > 0 and 0 < gamma_final <= gamma_init < 1")
        self.steps, self.alpha_init, self.alpha_final = steps, alpha_init, alpha_final
        self.gamma_init, self.gamma_final = gamma_init, gamma_final

    def run(self, model: Model, inputs: torch.Tensor, labels: torch.Tensor, eps: float | None, *,
            targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> RunOutput:
        ops, x, n = self.norm.ops, inputs, inputs.shape[0]
        delta = torch.zeros_like(x)
        radius = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
        # the farthest any image in [0, 1] can be moved: an upper bound for the radius
        worst = ops.measure(torch.maximum(x, 1 - x))
        best_norm = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
        best = x.clone()
        first = torch.full((n,), -1, dtype=torch.long, device=x.device)
        seen = torch.zeros(n, dtype=torch.bool, device=x.device)
        for k in range(self.steps):
            cos = (1 + math.cos(math.pi * k / self.steps)) / 2
            alpha = self.alpha_final + (self.alpha_init - self.alpha_final) * cos
            gamma = self.gamma_final + (self.gamma_init - self.gamma_final) * cos
            delta.requires_grad_(True)
            logits = model(x + delta)
            # the margin is positive until the attack succeeds; we descend on it
            margin = -logit_margin(logits, labels) if targeted else logit_margin(logits, labels)
            (grad,) = torch.autograd.grad(margin.sum(), delta)
            delta = delta.detach()
            with torch.no_grad():
                if mask is not None:
                    grad = grad * mask
                adv = is_success(logits.detach(), labels, targeted=targeted)
                size = ops.measure(delta)
                better = adv & (size < best_norm)
                best[better] = (x + delta)[better]
                best_norm = torch.where(better, size, best_norm)
                first = torch.where(adv & (first < 0), torch.full_like(first, k), first)
                seen |= adv
                dual = grad.flatten(1).norm(p=_DUAL[self.norm], dim=1).clamp_min(1e-12)
                to_boundary = margin.detach().abs() / dual
                radius = torch.where(adv, torch.minimum(radius * (1 - gamma), best_norm),
                                     torch.where(seen, radius * (1 + gamma),
                                                 torch.maximum(size + to_boundary, size * (1 + gamma))))
                radius = torch.minimum(radius, worst)
                g2 = grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
                delta = delta - grad * _view(alpha / g2, grad)
                if mask is not None:
                    delta = delta * mask
                delta = ops.project(delta, radius)
                delta = (x + delta).clamp(0.0, 1.0) - x
        # the final iterate is checked too
        with torch.no_grad():
            ok = is_success(model(x + delta), labels, targeted=targeted)
            size = ops.measure(delta)
            better = ok & (size < best_norm)
            best[better] = (x + delta)[better]
            first = torch.where(ok & (first < 0), torch.full_like(first, self.steps), first)
        return RunOutput(best, first)
