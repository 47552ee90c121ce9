"""Unbounded iterative attacks that differ only in their objective (docs/suites/attacks.md, 2f).

Ozbulak et al. (PRL 2020) compare the loss an attack follows at an equal step size and
iteration cap: cross-entropy with an L2 penalty (the L-BFGS objective), the sign of the
cross-entropy gradient (iterative FGSM) and the CW logit margin. :class:`IterativeLoss`
runs one of them with no budget (only the [0, 1] box), records each sample's iteration of
first success and stops stepping a sample once it has fallen, so the perturbation norms
are those at first success.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch

from ..errors import SpecError
from ..params import Param, ParamKind, ParamSchema
from .base import Attack, Model, RunOutput
from .losses import Loss, is_success
from .norms import Norm
from .rng import RandomSource


class Objective(str, Enum):
    """What the iterative attack ascends, and how it steps."""

    CE_L2 = "ce_l2"  # cross-entropy minus c * ||delta||_2^2 (L-BFGS-style), scaled gradient step
    SIGN_CE = "sign_ce"  # cross-entropy, sign of the gradient (iterative FGSM)
    MARGIN = "margin"  # CW logit margin, scaled gradient step


Objectives = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, float], torch.Tensor]

#: per-sample objective to maximise: (logits, labels, delta, targeted, penalty c)
OBJECTIVES: dict[Objective, Objectives] = {
    Objective.CE_L2: lambda z, y, d, t, c: Loss.CE(z, y, targeted=t) - c * d.flatten(1).pow(2).sum(dim=1),
    Objective.SIGN_CE: lambda z, y, d, t, c: Loss.CE(z, y, targeted=t),
    Objective.MARGIN: lambda z, y, d, t, c: Loss.MARGIN(z, y, targeted=t),
}


def _scaled(grad: torch.Tensor, alpha: float) -> torch.Tensor:
    """The gradient scaled so that its largest pixel moves by ``alpha``."""
    top = grad.flatten(1).abs().amax(dim=1).clamp_min(1e-12)
    return grad * (alpha / top).view(-1, *([1] * (grad.dim() - 1)))


#: step of size ``alpha``: every step moves the largest-moving pixel by exactly alpha
STEPS: dict[Objective, Callable[[torch.Tensor, float], torch.Tensor]] = {
    Objective.CE_L2: _scaled,
    Objective.SIGN_CE: lambda g, a: g.sign() * a,
    Objective.MARGIN: _scaled,
}


class IterativeLoss(Attack):
    """Gradient ascent on one objective, at most ``steps`` steps of size ``step_size``.

    Budget-free: the base clips to [0, 1] and re-checks; call it with the budget ``[1.0]``
    under L-inf (the whole box) to get the verified images and iterations of first success.

    Args:
        norm: the norm the base measures (the step rule does not depend on it).
        objective: "ce_l2", "sign_ce" or "margin".
        step_size: largest per-pixel change per step, in [0, 1] pixel units.
        steps: iteration cap.
        penalty: c of the CE + L2 objective (ignored by the others).
    """

    name = "iterative"
    budget_free = True
    params = ParamSchema((
        Param("objective", ParamKind.CHOICE, "sign_ce", "objective ascended",
              choices=tuple(o.value for o in Objective)),
        Param("step_size", ParamKind.FLOAT, 0.01, "largest per-pixel change per step", minimum=1e-9, maximum=1.0),
        Param("steps", ParamKind.INT, 50, "iteration cap", minimum=1, maximum=10_000),
        Param("penalty", ParamKind.FLOAT, 0.01, "c of the CE + L2 objective", minimum=0.0, maximum=1e6),
    ))

    def __init__(self, *, norm: Norm | str = Norm.LINF, objective: Objective | str = "sign_ce",
                 step_size: float = 0.01, steps: int = 50, penalty: float = 0.01) -> None:
        super().__init__(norm=norm)
        try:
            self.objective = Objective(objective)
        except ValueError:
            raise SpecError(f"iterative: unknown objective {objective!r}; use one of "
                            f"{[o.value for o in Objective]}") from None
        if not (step_size > 0 and steps >= 1 and penalty >= 0):
            raise SpecError("iterative: step_size must be > 0, steps >= 1, penalty >= 0")
        self.step_size, self.steps, self.penalty = step_size, steps, penalty

    def run(self, model: Model, inputs: torch.Tensor, labels: torch.Tensor, eps: float | None, *,
            targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> RunOutput:
        n = inputs.shape[0]
        out = inputs.clone()
        first = torch.full((n,), -1, dtype=torch.long, device=inputs.device)
        idx = torch.arange(n, device=inputs.device)
        x, y, m = inputs, labels, mask
        delta = torch.zeros_like(inputs)
        objective, step = OBJECTIVES[self.objective], STEPS[self.objective]
        for t in range(self.steps + 1):
            delta.requires_grad_(t < self.steps)
            with torch.set_grad_enabled(t < self.steps):
                logits = model(x + delta)
            succ = is_success(logits.detach(), y, targeted=targeted)
            if t == self.steps:
                succ = torch.ones_like(succ)  # the final iterate: the base re-checks it
            if bool(succ.any()):
                out[idx[succ]] = (x + delta.detach())[succ]
                first[idx[succ]] = -1 if t == self.steps else t
            keep = ~succ
            if not bool(keep.any()):
                break
            loss = objective(logits, y, delta, targeted, self.penalty).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            idx, x, y, grad, current = idx[keep], x[keep], y[keep], grad[keep], delta.detach()[keep]
            if m is not None and m.shape[0] > 1:
                m = m[keep]
            if m is not None:
                grad = grad * m
            delta = (x + current + step(grad, self.step_size)).clamp(0.0, 1.0) - x
            if m is not None:
                delta = delta * m
        return RunOutput(out, first, last_iteration=self.steps)
