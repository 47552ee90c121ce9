"""Auto-PGD (Croce and Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), L-inf and L2.

PGD without a step size to tune: the step starts at 2 eps and is halved at checkpoints
w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), for a
sample where either fewer than rho = 0.75 of the steps since the last checkpoint raised the
loss, or the step was not halved at the last checkpoint and the best loss has not improved
since; such a sample restarts from its best point. Steps carry momentum 0.75. Losses: cross-
entropy and the difference of logits ratio (DLR); APGD-T runs the targeted DLR towards the
top-k other classes of the clean image, all (sample, target) pairs as one batch.

Per-sample early exit: a sample leaves the batch as soon as an iterate fools the model, so
a fallen sample costs no more passes. Random starts come from the per-sample streams.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..params import Param, ParamKind, ParamSchema
from .base import Attack, Model, RunOutput, keep_rows, row_streams, select_mask
from .losses import dlr, dlr_targeted
from .rng import RandomSource, salted, subset

#: per-sample loss to maximise: (logits, true labels, target labels or None)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _ce(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(z, y, reduction="none") if t is None else -F.cross_entropy(z, t, reduction="none")


def _dlr(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    return dlr(z, y) if t is None else dlr_targeted(z, y, t)


LOSSES: dict[str, LossFn] = {"ce": _ce, "dlr": _dlr}


def checkpoints(steps: int) -> list[int]:
    """Iterations (1-based counts) after which the step size is reconsidered.

    The paper's p_j, in the integer form of the reference code: the first interval is
    0.22 N, each next one 0.03 N shorter, never shorter than 0.06 N."""
    first, shrink, floor = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, at, length = [], 0, first
    while at + length <= steps:
        at += length
        out.append(at)
        length = max(length - shrink, floor)
    return out


_COMMON = (
    Param("steps", ParamKind.INT, 100, "iterations per run", minimum=1, maximum=10_000),
    Param("restarts", ParamKind.INT, 1, "random restarts; later ones attack only what is still robust",
          minimum=1, maximum=100),
    Param("rho", ParamKind.FLOAT, 0.75, "share of loss-raising steps below which the step is halved",
          minimum=0.0, maximum=1.0),
    Param("momentum", ParamKind.FLOAT, 0.75, "weight of the new step against the previous move",
          minimum=0.0, maximum=1.0),
)


class APGD(Attack):
    """APGD with cross-entropy loss (``apgd-ce``); :class:`APGDDLR` and :class:`APGDT` share it.

    Args:
        norm: "linf" or "l2".
        steps: iterations per run (100 in AutoAttack).
        restarts: runs from fresh random starts, each on the samples still robust.
        rho: checkpoint condition; the step is halved when fewer than this share of the
            steps since the last checkpoint raised the loss.
        momentum: alpha of x_{k+1} = P(x_k + alpha (z_{k+1} - x_k) + (1 - alpha)(x_k - x_{k-1})).
    """

    name = "apgd-ce"
    strength = 3
    loss_name = "ce"
    params = ParamSchema(_COMMON)

    def __init__(self, *, norm: str = "linf", steps: int = 100, restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75) -> None:
        super().__init__(norm=norm)
        self.steps, self.restarts, self.rho, self.momentum = steps, restarts, rho, momentum

    def run(self, model: Model, inputs: torch.Tensor, labels: torch.Tensor, eps: float | None, *,
            targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> RunOutput:
        assert eps is not None
        if targeted:  # labels are targets; the model's clean class stands in for the true one
            with torch.no_grad():
                clean = model(inputs).argmax(1)
            return self._runs(model, inputs, clean, labels, labels, True, eps, mask, rng, 0)
        return self._runs(model, inputs, labels, None, labels, False, eps, mask, rng, 0)

    def _runs(self, model: Model, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None, crit: torch.Tensor,
              targeted: bool, eps: float, mask: torch.Tensor | None, rng: RandomSource, salt: int
              ) -> RunOutput:
        """Restarts of one APGD run, each on the samples not yet fooled; ``crit`` are the
        labels of the success criterion (true labels, or targets when ``targeted``)."""
        n = x.shape[0]
        best = x.clone()
        first = torch.full((n,), -1, dtype=torch.long, device=x.device)
        alive = torch.arange(n, device=x.device)
        for r in range(self.restarts):
            if not alive.numel():
                break
            m = select_mask(mask, alive)
            adv, it = self._once(model, x[alive], y[alive], None if t is None else t[alive], crit[alive], targeted,
                                 eps, m, salted(subset(rng, alive), salt + r))
            best[alive] = adv
            first[alive] = it
            alive = alive[it < 0]
        return RunOutput(best, first)

    def _constrain(self, x: torch.Tensor, cand: torch.Tensor, eps: float, mask: torch.Tensor | None) -> torch.Tensor:
        delta = cand - x
        if mask is not None:
            delta = delta * mask
        return (x + self.norm.ops.project(delta, eps)).clamp(0.0, 1.0)

    def _once(self, model: Model, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None, crit: torch.Tensor,
              targeted: bool, eps: float, mask: torch.Tensor | None, rng: RandomSource,
              group: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One run on every row: (per row, the fooling iterate or the best-loss point, and the
        iteration it fooled at, -1: never). ``group`` maps rows to samples (APGD-T: one row per
        sample and target); once a row fools the model, every row of its sample leaves, since the
        sample is broken whichever target did it. A row's trajectory depends only on its own
        sample, target and stream, never on the other rows."""
        ops, loss_fn, n = self.norm.ops, LOSSES[self.loss_name], x.shape[0]
        out = x.clone()
        first = torch.full((n,), -1, dtype=torch.long, device=x.device)
        marks = set(checkpoints(self.steps))
        last_mark = 0

        def evaluate(z: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, ts: torch.Tensor | None, cs: torch.Tensor,
                     need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
            z = z.detach().requires_grad_(need_grad)
            with torch.set_grad_enabled(need_grad):
                logits = model(z)
                loss = loss_fn(logits, ys, ts)
            grad = torch.autograd.grad(loss.sum(), z)[0] if need_grad else None
            pred = logits.detach().argmax(1)
            return loss.detach(), grad, pred.eq(cs) if targeted else pred.ne(cs)

        idx = torch.arange(n, device=x.device)
        gs = idx if group is None else group.to(x.device)
        xs, ys, ts, cs, m = x, y, t, crit, mask
        adv = self._constrain(xs, xs + ops.random(xs, eps, rng), eps, m)
        loss, grad, succ = evaluate(adv, xs, ys, ts, cs, self.steps > 0)
        eta = torch.full((n,), 2.0 * eps, dtype=x.dtype, device=x.device)
        prev = adv.clone()
        assert grad is not None
        best, best_loss, best_grad = adv.clone(), loss.clone(), grad
        rises = torch.zeros(n, dtype=torch.long, device=x.device)
        halved = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_at_mark = best_loss.clone()
        for i in range(self.steps + 1):
            if bool(succ.any()):  # fooled samples leave the batch (one host sync per step)
                out[idx[succ]] = adv[succ]
                first[idx[succ]] = i
                # the other rows of a broken sample leave with it, keeping their best point
                gone = succ if group is None else torch.isin(gs, gs[succ])
                out[idx[gone & ~succ]] = best[gone & ~succ]
                keep = ~gone
                idx = idx[keep]
                if not idx.numel():
                    break
                m = select_mask(m, keep)
                ts = None if ts is None else ts[keep]
                grad = None if grad is None else grad[keep]
                (xs, ys, cs, gs, adv, prev, loss, eta, best, best_loss, best_grad, rises, halved,
                 best_at_mark) = keep_rows(keep, xs, ys, cs, gs, adv, prev, loss, eta, best, best_loss,
                                           best_grad, rises, halved, best_at_mark)
            if i == self.steps:
                break
            assert grad is not None
            with torch.no_grad():
                z = self._constrain(xs, adv + ops.step(grad, eta), eps, m)
                a = self.momentum if i > 0 else 1.0
                z = self._constrain(xs, adv + a * (z - adv) + (1 - a) * (adv - prev), eps, m)
            prev, adv = adv, z
            # the last iterate needs no gradient: it is only checked
            new_loss, grad, succ = evaluate(adv, xs, ys, ts, cs, i + 1 < self.steps)
            rises += new_loss > loss
            loss = new_loss
            up = loss > best_loss
            best[up] = adv[up]
            if grad is not None:
                best_grad[up] = grad[up]
            best_loss = torch.where(up, loss, best_loss)
            if i + 1 in marks:
                length = i + 1 - last_mark
                last_mark = i + 1
                cut = (rises < self.rho * length) | (~halved & (best_at_mark >= best_loss))
                eta = torch.where(cut, eta / 2, eta)
                adv = torch.where(cut.view(-1, 1, 1, 1), best, adv)
                if grad is not None:
                    grad = torch.where(cut.view(-1, 1, 1, 1), best_grad, grad)
                halved, best_at_mark = cut, best_loss.clone()
                rises.zero_()
        if idx.numel():
            out[idx] = best
        return out, first


class APGDDLR(APGD):
    """APGD on the DLR loss (``apgd-dlr``); same arguments as :class:`APGD`."""

    name = "apgd-dlr"
    loss_name = "dlr"


class APGDT(APGD):
    """APGD-T: targeted DLR towards each of the top-k other classes of the clean image
    (``apgd-t``); success is still any misclassification, so a sample is broken if any target
    works (AutoAttack's rule). All (sample, target) pairs of a restart run as one batch, each
    row with its own target and its own (sample, target, restart) stream, and a sample's rows
    all leave once one of them fools the model; later restarts attack only what is still
    robust. Which samples fall is the same as running the targets one after another (rows are
    independent); the returned adversarial is that of the lowest-ranked target that fooled at
    the earliest step, and ``first_success`` counts steps of the batched run (plus ``steps``
    per earlier restart). With ``targeted=True`` the given labels are the targets and one run
    is made per restart.

    Args:
        norm, steps, restarts, rho, momentum: as for :class:`APGD` (restarts per target).
        n_targets: how many of the top other classes to aim at (9 in AutoAttack); clamped to
            the number of classes minus one.
    """

    name = "apgd-t"
    loss_name = "dlr"
    params = ParamSchema(_COMMON + (
        Param("n_targets", ParamKind.INT, 9, "top other classes aimed at, in turn (clamped to classes - 1)",
              minimum=1, maximum=1000),
    ))

    def __init__(self, *, norm: str = "linf", steps: int = 100, restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75, n_targets: int = 9) -> None:
        super().__init__(norm=norm, steps=steps, restarts=restarts, rho=rho, momentum=momentum)
        self.n_targets = n_targets

    def run(self, model: Model, inputs: torch.Tensor, labels: torch.Tensor, eps: float | None, *,
            targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> RunOutput:
        assert eps is not None
        if targeted:
            return super().run(model, inputs, labels, eps, targeted=True, mask=mask, rng=rng)
        with torch.no_grad():
            logits = model(inputs)
        k = min(self.n_targets, logits.shape[1] - 1)
        ranked = logits.scatter(1, labels[:, None], float("-inf")).argsort(dim=1, descending=True)[:, :k]
        n = inputs.shape[0]
        best = inputs.clone()
        first = torch.full((n,), -1, dtype=torch.long, device=inputs.device)
        alive = torch.arange(n, device=inputs.device)
        for r in range(self.restarts):
            if not alive.numel():
                break
            # one batch of rows = survivors x targets (sample-major), each row with the stream
            # the sequential version gave that (sample, target, restart)
            na = alive.numel()
            rows = alive.repeat_interleave(k)
            adv, it = self._once(model, inputs[rows], labels[rows], ranked[alive].reshape(-1), labels[rows], False,
                                 eps, select_mask(mask, rows),
                                 row_streams(subset(rng, alive), [100 * (j + 1) + r for j in range(k)]),
                                 group=torch.arange(na, device=inputs.device).repeat_interleave(k))
            won = (it >= 0).view(na, k)
            broken = won.any(1)
            # the adversarial of the first target (in rank order) that fooled the sample; a
            # robust sample keeps the best-loss point of its last target, as in turn-by-turn runs
            j = torch.where(broken, won.float().argmax(1), torch.full_like(alive, k - 1))
            chosen = torch.arange(na, device=inputs.device) * k + j
            best[alive] = adv[chosen]
            first[alive] = torch.where(broken, it[chosen] + r * self.steps, -1)
            alive = alive[~broken]
        return RunOutput(best, first)
