"""Projected gradient descent (Madry et al. 2018), L-inf and L2, with early exit.

Samples leave the batch as soon as an iterate (already projected and clipped) is
adversarial, so no gradient step is spent on a sample that has fallen; restarts only
re-run the samples that are still robust.
"""

from __future__ import annotations

import torch

from ..errors import SpecError
from ..params import Param, ParamKind, ParamSchema
from .base import Attack, Model, RunOutput, select_mask
from .losses import Loss, is_success
from .rng import RandomSource, salted, subset


class PGD(Attack):
    """Iterative signed (L-inf) or normalised (L2) gradient ascent with projection.

    Args:
        norm: "linf" or "l2".
        steps: gradient steps per restart.
        rel_stepsize: step size as a fraction of eps (default 2.5 / steps, Madry's choice);
            ignored when ``abs_stepsize`` is given.
        abs_stepsize: step size in pixel units, the same at every budget.
        random_start: start from a uniform random point of the ball.
        restarts: independent runs; each later run attacks only what is still robust.
        loss: "ce" (cross-entropy) or "margin" (CW logit margin).
        check_every: test for success every this many steps (1 = every step). Larger values
            avoid a host sync per step on a GPU at the price of a few extra steps.
        early_exit: drop samples from the batch once they succeed, and attack larger budgets
            and later restarts only on what is still robust. False runs every step on every
            sample (same results, for benchmarks).
    """

    name = "pgd"
    strength = 2
    params = ParamSchema((
        Param("steps", ParamKind.INT, 20, "gradient steps per restart", minimum=1, maximum=10_000),
        Param("rel_stepsize", ParamKind.FLOAT, None, "step size as a fraction of eps (null: 2.5 / steps)",
              minimum=1e-6, maximum=10.0, nullable=True),
        Param("abs_stepsize", ParamKind.FLOAT, None, "step size in pixel units (overrides rel_stepsize)",
              minimum=1e-6, maximum=100.0, nullable=True),
        Param("random_start", ParamKind.BOOL, True, "start from a uniform random point of the ball"),
        Param("restarts", ParamKind.INT, 1, "restarts; later ones attack only what is still robust",
              minimum=1, maximum=100),
        Param("loss", ParamKind.CHOICE, "ce", "cross-entropy or logit margin", choices=tuple(x.value for x in Loss)),
        Param("check_every", ParamKind.INT, 1, "test for success every this many steps", minimum=1, maximum=1000),
        Param("early_exit", ParamKind.BOOL, True, "drop fallen samples (false: fixed cost, same results)"),
    ))

    def __init__(self, *, norm: str = "linf", steps: int = 20, rel_stepsize: float | None = None,
                 abs_stepsize: float | None = None, random_start: bool = True, restarts: int = 1,
                 loss: Loss | str = "ce", check_every: int = 1, early_exit: bool = True) -> None:
        super().__init__(norm=norm, early_exit=early_exit)
        if steps < 1 or restarts < 1 or check_every < 1:
            raise SpecError("pgd: steps, restarts and check_every must be >= 1")
        for label, v in (("rel_stepsize", rel_stepsize), ("abs_stepsize", abs_stepsize)):
            if v is not None and not v > 0:
                raise SpecError(f"pgd: {label} must be > 0")
        try:
            self.loss = Loss(loss)
        except ValueError:
            raise SpecError(f"pgd: unknown loss {loss!r}; use one of {[x.value for x in Loss]}") from None
        self.steps, self.restarts, self.check_every = steps, restarts, check_every
        self.rel_stepsize = rel_stepsize if rel_stepsize is not None else 2.5 / steps
        self.abs_stepsize, self.random_start = abs_stepsize, random_start

    def run(self, model: Model, inputs: torch.Tensor, labels: torch.Tensor, eps: float | None, *,
            targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> RunOutput:
        assert eps is not None
        n = inputs.shape[0]
        best = inputs.clone()
        first = torch.full((n,), -1, dtype=torch.long, device=inputs.device)
        alive = torch.arange(n, device=inputs.device)
        for r in range(self.restarts):
            if not alive.numel():
                break
            m = select_mask(mask, alive)
            # The last restart leaves its final iterate to the base's re-check: one forward saved.
            adv, it = self._once(model, inputs[alive], labels[alive], eps, targeted, m,
                                 salted(subset(rng, alive), r), check_last=r < self.restarts - 1)
            unfound = first[alive] < 0  # (all of them, with early exit)
            best[alive[unfound]] = adv[unfound]
            fresh = unfound & (it >= 0)
            first[alive[fresh]] = it[fresh]
            if self.early_exit:
                alive = alive[first[alive] < 0]
        return RunOutput(best, first, last_iteration=self.steps)

    def _once(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, targeted: bool,
              mask: torch.Tensor | None, rng: RandomSource, *, check_last: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
        ops = self.norm.ops
        alpha = self.abs_stepsize if self.abs_stepsize is not None else self.rel_stepsize * eps
        n = x.shape[0]
        out = x.clone()
        first = torch.full((n,), -1, dtype=torch.long, device=x.device)
        delta = ops.random(x, eps, rng) if self.random_start else torch.zeros_like(x)
        delta = self._constrain(x, delta, eps, mask)
        idx = torch.arange(n, device=x.device)
        xa, ya, ma = x, y, mask
        for t in range(self.steps + 1):
            last = t == self.steps
            if last and not check_last:
                rest = first[idx] < 0
                out[idx[rest]] = (xa + delta.detach())[rest]
                break
            delta.requires_grad_(not last)
            with torch.set_grad_enabled(not last):  # the last iterate is only checked
                logits = model(xa + delta)
            keep: torch.Tensor | None = None
            if t % self.check_every == 0 or last:
                succ = is_success(logits.detach(), ya, targeted=targeted)
                if not self.early_exit:  # fixed steps: remember the first success, keep stepping
                    new = succ & (first[idx] < 0)
                    out[idx[new]] = (xa + delta.detach())[new]
                    first[idx[new]] = t
                elif bool(succ.any()):  # one host sync per check: the price of early exit
                    hit = idx[succ]
                    out[hit] = (xa + delta.detach())[succ]
                    first[hit] = t
                    keep = ~succ
                    idx, xa, ya, logits = idx[keep], xa[keep], ya[keep], logits[keep]
                    if ma is not None and ma.shape[0] > 1:
                        ma = ma[keep]
                    if not idx.numel():
                        return out, first
            current = delta.detach() if keep is None else delta.detach()[keep]
            if last:
                rest = first[idx] < 0
                out[idx[rest]] = (xa + current)[rest]
                break
            loss = self.loss(logits, ya, targeted=targeted).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            if keep is not None:
                grad = grad[keep]
            if ma is not None:
                grad = grad * ma
            delta = self._constrain(xa, current + ops.step(grad, alpha), eps, ma)
        return out, first

    def _constrain(self, x: torch.Tensor, delta: torch.Tensor, eps: float, mask: torch.Tensor | None
                   ) -> torch.Tensor:
        if mask is not None:
            delta = delta * mask
        delta = self.norm.ops.project(delta, eps)
        return (x + delta).clamp(0.0, 1.0) - x
