"""FAB-T: the targeted fast adaptive boundary attack (Croce and Hein, ICML 2020, "Minimally
distorted adversarial examples with a fast adaptive boundary attack"), L-inf and L2.

FAB linearises the decision boundary between the true class y and a target t at the current
iterate x_k: the hyperplane f(x_k) + g . (z - x_k) = 0 with f = z_y - z_t and g its gradient.
It projects both x_k and the original x_0 onto that hyperplane within the [0, 1] box (the
smallest perturbation in the threat model's norm), and steps to the convex combination
(1 - a)(x_k + eta d_k) + a (x_0 + eta d_0), a = min(|d_k| / (|d_k| + |d_0|), alpha_max): the
second term keeps the iterate close to x_0. Once an iterate is adversarial it is recorded and
pulled back towards x_0: x_k <- (1 - beta) x_0 + beta x_k.

Here FAB-T is a fixed-budget attack (as in AutoAttack): it aims at the top-k other classes of
the clean image, all (sample, target) pairs of a restart as one batch of rows (each row with
the stream of its sample, target and restart), and a sample's rows all leave as soon as one
has an adversarial inside the budget; which samples get one is what running the targets in
turn gives. It returns the smallest adversarial found over the sample's rows, which the base
projects and re-checks. With several restarts, restart r runs every target of the samples
still without one (the turn-by-turn order was targets outer, restarts inner).

The box-constrained projection onto a hyperplane has a closed form per sample: each pixel
moves towards the hyperplane as far as a common multiplier allows (L2: proportional to its
weight; L-inf: all by the same amount) until its box bound; the multiplier is found exactly by
sorting the pixels' saturation points (no inner iterations).
"""

from __future__ import annotations

import math

import torch

from ..params import Param, ParamKind, ParamSchema
from .base import Attack, Model, RunOutput, keep_rows, row_streams, select_mask
from .norms import Norm, _view
from .rng import RandomSource, subset


def box_projection(w: torch.Tensor, c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, norm: Norm
                   ) -> torch.Tensor:
    """Per row, the smallest d (in ``norm``) with w . d >= c and lo <= d <= hi (lo <= 0 <= hi).

    Where no d in the box reaches c, the d of the box that gets closest (every pixel at its
    bound in w's direction). Rows with c <= 0 get d = 0. All arguments are N x D (c: N)."""
    sign = w.sign()
    bound = torch.where(w > 0, hi, -lo).clamp_min(0)  # how far each pixel may move in w's direction
    absw = w.abs()
    rate = absw if norm is Norm.L2 else torch.ones_like(absw)  # pixel movement per unit multiplier
    # pixel i saturates at multiplier bound_i / rate_i (never, where it cannot help)
    sat = torch.where(absw > 0, bound / rate.clamp_min(1e-30), torch.full_like(bound, math.inf))
    order = sat.argsort(dim=1)
    s_sat, s_gain, s_q = sat.gather(1, order), (absw * bound).gather(1, order), (absw * rate).gather(1, order)
    s_gain = torch.where(torch.isfinite(s_sat), s_gain, torch.zeros_like(s_gain))
    gained = s_gain.cumsum(1)  # reached once pixels 0..k are saturated
    rest = s_q.flip(1).cumsum(1).flip(1) - s_q  # slope of the pixels beyond k
    reach = gained + torch.where(torch.isfinite(s_sat), s_sat, torch.zeros_like(s_sat)) * rest
    ok = reach >= c[:, None]
    k = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(c, w.shape[1] - 1, dtype=torch.long))
    before = (k - 1).clamp_min(0)
    g_prev = torch.where(k > 0, gained.gather(1, before[:, None]).squeeze(1), torch.zeros_like(c))
    slope = torch.where(k > 0, rest.gather(1, before[:, None]).squeeze(1), s_q.sum(1))
    lam = ((c - g_prev) / slope.clamp_min(1e-30)).clamp_min(0)
    lam = torch.where(ok.any(1), lam, torch.full_like(lam, math.inf))
    move = torch.where(rate > 0, torch.minimum(lam[:, None] * rate, bound), torch.zeros_like(bound))
    d = sign * move
    return torch.where((c > 0)[:, None], d, torch.zeros_like(d))


class FABT(Attack):
    """Targeted FAB over the top-k other classes, at a fixed budget.

    Args:
        norm: "linf" or "l2".
        steps: iterations per target and restart (100 in AutoAttack).
        restarts: runs per target; the first starts at the clean image, later ones at a random
            point at half the smaller of eps and the best norm so far.
        n_targets: top other classes aimed at, together (9 in AutoAttack; clamped to classes - 1).
        alpha_max: largest weight of the step from the original image.
        eta: overshoot of the projections (> 1 lands beyond the linearised boundary).
        beta: pull-back towards the original image after a success.
    """

    name = "fab-t"
    strength = 3
    params = ParamSchema((
        Param("steps", ParamKind.INT, 100, "iterations per target and restart", minimum=1, maximum=10_000),
        Param("restarts", ParamKind.INT, 1, "runs per target (the first from the clean image)", minimum=1,
              maximum=100),
        Param("n_targets", ParamKind.INT, 9, "top other classes aimed at, in turn (clamped to classes - 1)",
              minimum=1, maximum=1000),
        Param("alpha_max", ParamKind.FLOAT, 0.1, "largest weight of the step from the original image",
              minimum=0.0, maximum=1.0),
        Param("eta", ParamKind.FLOAT, 1.05, "overshoot of the projections", minimum=1.0, maximum=10.0),
        Param("beta", ParamKind.FLOAT, 0.9, "pull-back towards the original image after a success",
              minimum=0.0, maximum=1.0),
    ))

    def __init__(self, *, norm: str = "linf", steps: int = 100, restarts: int = 1, n_targets: int = 9,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9) -> None:
        super().__init__(norm=norm)
        self.steps, self.restarts, self.n_targets = steps, restarts, n_targets
        self.alpha_max, self.eta, self.beta = alpha_max, eta, beta

    def run(self, model: Model, inputs: torch.Tensor, labels: torch.Tensor, eps: float | None, *,
            targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> RunOutput:
        assert eps is not None
        x, n = inputs, inputs.shape[0]
        with torch.no_grad():
            logits = model(x)
        if targeted:  # the given labels are the targets; the clean class is the one to leave
            true, targets = logits.argmax(1), labels[:, None]
        else:
            true = labels
            k = min(self.n_targets, logits.shape[1] - 1)
            targets = logits.scatter(1, labels[:, None], float("-inf")).argsort(dim=1, descending=True)[:, :k]
        best = x.clone()
        best_norm = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        first = torch.full((n,), -1, dtype=torch.long, device=x.device)
        alive = torch.arange(n, device=x.device)
        k = targets.shape[1]
        for r in range(self.restarts):
            if not alive.numel():
                break
            # one batch of rows = survivors x targets (sample-major); row (i, j) keeps the stream
            # of (sample i, target j, restart r) and starts from sample i's best norm so far
            na = alive.numel()
            rows = alive.repeat_interleave(k)
            adv, size, it = self._once(model, x[rows], true[rows], targets[alive].reshape(-1), labels[rows], targeted,
                                       eps, select_mask(mask, rows), best_norm[rows],
                                       row_streams(subset(rng, alive), [100 * j + r for j in range(k)]),
                                       random_start=r > 0, group=torch.arange(na, device=x.device).repeat_interleave(k))
            # per sample, the smallest adversarial over its targets (ties: the higher-ranked target)
            pick = size.view(na, k).argmin(1)
            chosen = torch.arange(na, device=x.device) * k + pick
            better = size[chosen] < best_norm[alive]
            best[alive[better]] = adv[chosen][better]
            best_norm[alive[better]] = size[chosen][better]
            its = it.view(na, k)
            at = torch.where(its >= 0, its, self.steps + 1).amin(1)
            inside = best_norm[alive] <= eps
            hit = inside & (first[alive] < 0) & (at <= self.steps)
            first[alive[hit]] = at[hit] + r * self.steps
            alive = alive[~inside]
        return RunOutput(best, first)

    def _once(self, model: Model, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, crit: torch.Tensor,
              targeted: bool, eps: float, mask: torch.Tensor | None, best_so_far: torch.Tensor,
              rng: RandomSource, *, random_start: bool, group: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One FAB run towards targets ``t``, per row: (smallest adversarial, its norm (inf:
        none), the iteration at which one inside eps was found (-1: none)). ``group`` maps rows
        to samples: once a row has an adversarial inside eps, every row of its sample leaves."""
        ops, n = self.norm.ops, x0.shape[0]
        out, size = x0.clone(), torch.full((n,), math.inf, dtype=x0.dtype, device=x0.device)
        first = torch.full((n,), -1, dtype=torch.long, device=x0.device)
        xk = x0.clone()
        if random_start:
            radius = torch.minimum(best_so_far, torch.full_like(best_so_far, eps)) / 2
            start = ops.random(x0, radius, rng)
            xk = (x0 + (start if mask is None else start * mask)).clamp(0, 1)
        idx = torch.arange(n, device=x0.device)
        gs = idx if group is None else group.to(x0.device)
        xs, ys, ts, cs, m = x0, y, t, crit, mask
        for i in range(self.steps):
            z = xk.detach().requires_grad_(True)
            logits = model(z)
            f = logits.gather(1, ys[:, None]).squeeze(1) - logits.gather(1, ts[:, None]).squeeze(1)
            (g,) = torch.autograd.grad(f.sum(), z)
            with torch.no_grad():
                if m is not None:
                    g = g * m
                f, g2 = f.detach(), g.flatten(1)
                step_k = self._project(xk, g2, f, m)
                # the same hyperplane, seen from the original image
                f0 = f + (g2 * (xs - xk).flatten(1)).sum(1)
                step_0 = self._project(xs, g2, f0, m)
                nk, n0 = ops.measure(step_k), ops.measure(step_0)
                a = (nk / (nk + n0).clamp_min(1e-12)).clamp(0, self.alpha_max)
                xk = ((1 - _view(a, xk)) * (xk + self.eta * step_k) + _view(a, xk) * (xs + self.eta * step_0)
                      ).clamp(0, 1)
                pred = model(xk).argmax(1)
                adv = pred.eq(cs) if targeted else pred.ne(cs)
                dist = ops.measure(xk - xs)
                better = adv & (dist < size[idx])
                out[idx[better]] = xk[better]
                size[idx[better]] = dist[better]
                first[idx[better & (dist <= eps) & (first[idx] < 0)]] = i + 1
                xk = torch.where(adv.view(-1, 1, 1, 1), (1 - self.beta) * xs + self.beta * xk, xk)
                # a sample with an adversarial inside the budget is done, all its rows with it
                done = size[idx] <= eps
                if bool(done.any()):
                    keep = ~(done if group is None else torch.isin(gs, gs[done]))
                    idx = idx[keep]
                    if not idx.numel():
                        break
                    m = select_mask(m, keep)
                    xs, ys, ts, cs, gs, xk = keep_rows(keep, xs, ys, ts, cs, gs, xk)
        return out, size, first

    def _project(self, point: torch.Tensor, g: torch.Tensor, f: torch.Tensor, mask: torch.Tensor | None
                 ) -> torch.Tensor:
        """Smallest step from ``point`` to the side f + g . d <= 0 of the hyperplane, in the box."""
        flat = point.flatten(1)
        lo, hi = -flat, 1 - flat
        if mask is not None:  # pixels outside the mask cannot move
            keep = mask.expand_as(point).flatten(1) > 0
            lo, hi = lo * keep, hi * keep
        return box_projection(-g, f, lo, hi, self.norm).view_as(point)
