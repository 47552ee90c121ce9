"""Carlini-Wagner L2 (2017): Adam in tanh space on distance plus c times the logit margin.

A minimum-norm attack: it runs once, keeps the smallest successful perturbation per sample,
and the base evaluates that at every budget (projecting it in when it is too large).
"""

from __future__ import annotations

import math

import torch

from ..errors import SpecError
from ..params import Param, ParamKind, ParamSchema
from .base import Attack, Model, RunOutput
from .losses import is_success, logit_margin
from .norms import Norm
from .rng import RandomSource


class CarliniWagnerL2(Attack):
    """CW-L2 with a per-sample binary search over the trade-off constant c.

    Args:
        norm: must be "l2".
        steps: Adam steps per search round.
        c: initial trade-off constant (margin weight).
        lr: Adam learning rate in tanh space.
        kappa: confidence: the margin must pass -kappa.
        binary_search_steps: rounds; c is raised tenfold while no adversarial is found and
            bisected once one is.
        abort_early: end a round when the total loss has not fallen by 0.1% over the last
            tenth of its steps (as in Carlini and Wagner's code).
    """

    name = "cw"
    supported_norms = frozenset({Norm.L2})
    budget_free = True
    strength = 2
    params = ParamSchema((
        Param("steps", ParamKind.INT, 100, "Adam steps per search round", minimum=1, maximum=10_000),
        Param("c", ParamKind.FLOAT, 1.0, "initial trade-off constant", minimum=1e-6, maximum=1e6),
        Param("lr", ParamKind.FLOAT, 0.01, "Adam learning rate in tanh space", minimum=1e-6, maximum=10.0),
        Param("kappa", ParamKind.FLOAT, 0.0, "confidence margin", minimum=0.0, maximum=1e6),
        Param("binary_search_steps", ParamKind.INT, 3, "rounds of search over c", minimum=1, maximum=20),
        Param("abort_early", ParamKind.BOOL, True, "end a round when the loss stalls"),
    ))

    def __init__(self, *, norm: str = "l2", steps: int = 100, c: float = 1.0, lr: float = 0.01,
                 kappa: float = 0.0, binary_search_steps: int = 3, abort_early: bool = True) -> None:
        super().__init__(norm=norm)
        if steps < 1 or binary_search_steps < 1:
            raise SpecError("cw: steps and binary_search_steps must be >= 1")
        if not (c > 0 and lr > 0 and kappa >= 0):
            raise SpecError("cw: c and lr must be > 0, kappa >= 0")
        self.steps, self.c, self.lr, self.kappa = steps, c, lr, kappa
        self.binary_search_steps = binary_search_steps
        self.abort_early = abort_early

    def run(self, model: Model, inputs: torch.Tensor, labels: torch.Tensor, eps: float | None, *,
            targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> RunOutput:
        x = inputs
        n = x.shape[0]
        best = x.clone()
        best_norm = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
        c = torch.full((n,), self.c, device=x.device, dtype=x.dtype)
        lower = torch.zeros_like(c)
        upper = torch.full_like(c, math.inf)
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
        for _ in range(self.binary_search_steps):
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            every = max(1, self.steps // 10)
            previous = math.inf
            for step in range(self.steps):
                adv = (torch.tanh(w) + 1) / 2
                if mask is not None:
                    adv = x + (adv - x) * mask
                logits = model(adv)
                # margin > 0 while the attack has not succeeded (true label still wins / target loses)
                margin = -logit_margin(logits, labels) if targeted else logit_margin(logits, labels)
                dist = (adv - x).flatten(1).pow(2).sum(dim=1)
                loss = (dist + c * (margin + self.kappa).clamp_min(0)).sum()
                with torch.no_grad():
                    ok = is_success(logits, labels, targeted=targeted)
                    norm = dist.sqrt()
                    better = ok & (norm < best_norm)
                    best[better] = adv.detach()[better]
                    best_norm = torch.where(better, norm, best_norm)
                    found |= ok
                if self.abort_early and step % every == 0:
                    current = float(loss.detach())
                    if current > 0.999 * previous:
                        break
                    previous = current
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            upper = torch.where(found, torch.minimum(upper, c), upper)
            lower = torch.where(found, lower, torch.maximum(lower, c))
            c = torch.where(torch.isinf(upper), c * 10, (lower + upper) / 2)
        return RunOutput(best)
