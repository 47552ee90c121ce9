"""Square attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020), L-inf and L2.

Score-based random search: it reads only the model's outputs (every pass runs under
``torch.no_grad``), so a model whose input gradient is zero or useless -- input
quantisation, non-differentiable preprocessing -- does not slow it down.

Each query changes one random square window of side ~sqrt(p H W) and keeps the change if the
margin loss (true logit minus the best other; targeted: best other minus the target logit)
went down. p follows the paper's schedule: p_init halved at queries 10, 50, 200, 500, 1000,
2000, 4000, 6000, 8000 of a 10,000-query run (rescaled to ``n_queries``).
- L-inf: start from vertical stripes of +-eps; a query sets the window to +-eps per channel.
- L2: start from a grid of squares of side H/5 holding the pseudo-Gaussian pattern (nested
  rectangles, opposite signs in the two halves); a query moves the perturbation mass of a
  second window into the first, with a fresh pattern, and rescales the whole to norm eps.

Per-sample early exit: a fooled sample stops querying. Window positions, signs and patterns
are drawn up front from each sample's own stream, so a sample's queries do not depend on
its batch. A draw that would leave the image unchanged (L-inf: the window already holds the
drawn signs) wastes a query; the authors' code redraws it, we flip its signs (one draw, same
effect for one channel). ART's and torchattacks' Square spend the query: on one-channel images
about half of their later queries change nothing, which is why ours is stronger at an equal
budget; ``skip_unchanged=False`` behaves like them (for comparisons).
"""

from __future__ import annotations

import math

import torch

from ..errors import SpecError
from ..params import Param, ParamKind, ParamSchema
from .base import Attack, Model, RunOutput, keep_rows, select_mask
from .norms import Norm, _view
from .rng import RandomSource, salted, uniform

#: (query count out of 10,000 after which p is halved again) -- the paper's schedule
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(query: int, n_queries: int, p_init: float) -> float:
    """Share of the image the window covers at ``query`` (0-based) of ``n_queries``."""
    at = int(query / n_queries * 10_000)
    return p_init / 2 ** sum(at > h for h in _HALVINGS)


def pseudo_gaussian(s: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The s x s L2 pattern: nested rectangles weighted 1/(k+1)^2, +1 on the top half and -1 on
    the bottom half, unit L2 norm."""
    def rectangles(a: int, b: int) -> torch.Tensor:
        rings = max(a // 2 + 1, b // 2 + 1)
        w = 1.0 / torch.arange(1, rings + 1, device=device, dtype=dtype) ** 2
        tail = w.flip(0).cumsum(0).flip(0)  # tail[d] = sum of the rings that contain distance d
        r = (torch.arange(a, device=device) - a // 2).abs()
        c = (torch.arange(b, device=device) - b // 2).abs()
        out = tail[torch.maximum(r[:, None], c[None, :])]
        return out / out.norm().clamp_min(1e-12)

    top = s // 2
    pattern = torch.cat([rectangles(top, s) if top else torch.zeros(0, s, device=device, dtype=dtype),
                         -rectangles(s - top, s)])
    return pattern / pattern.norm().clamp_min(1e-12)


def _flat_window(vh: torch.Tensor, vw: torch.Tensor, s: int, width: int) -> torch.Tensor:
    """Flat (H*W) indices of each sample's s x s window at (vh, vw): N x s*s."""
    ar = torch.arange(s, device=vh.device)
    rows, cols = vh[:, None] + ar, vw[:, None] + ar
    return (rows[:, :, None] * width + cols[:, None, :]).flatten(1)


def _positions(u: torch.Tensor, s: int, size: int) -> torch.Tensor:
    """Uniform window offsets in [0, size - s] from U[0, 1) draws."""
    return (u * (size - s + 1)).long().clamp(0, size - s)


class Square(Attack):
    """Square attack: score-based random search with square windows.

    Args:
        norm: "linf" or "l2".
        n_queries: forward passes per sample at most (5,000 in the paper and AutoAttack).
        p_init: initial share of the image a window covers (0.8, as in AutoAttack; the paper
            tunes it per dataset, e.g. 0.05 for L-inf on ImageNet).
        skip_unchanged: (L-inf) flip the signs of a draw that would not change the image.
    """

    name = "square"
    gradient_free = True
    params = ParamSchema((
        Param("n_queries", ParamKind.INT, 5000, "forward passes per sample at most (queries)",
              minimum=1, maximum=100_000),
        Param("p_init", ParamKind.FLOAT, 0.8, "initial share of the image covered by the square window",
              minimum=1e-4, maximum=1.0),
        Param("skip_unchanged", ParamKind.BOOL, True, "L-inf: flip a draw that would not change the image "
              "(false: spend the query, as ART and torchattacks do)"),
    ))

    def __init__(self, *, norm: str = "linf", n_queries: int = 5000, p_init: float = 0.8,
                 skip_unchanged: bool = True) -> None:
        super().__init__(norm=norm)
        if not (n_queries >= 1 and 0 < p_init <= 1):
            raise SpecError("square: need n_queries >= 1 and 0 < p_init <= 1")
        self.n_queries, self.p_init, self.skip_unchanged = n_queries, p_init, skip_unchanged

    @torch.no_grad()
    def run(self, model: Model, inputs: torch.Tensor, labels: torch.Tensor, eps: float | None, *,
            targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> RunOutput:
        assert eps is not None
        x, n = inputs, inputs.shape[0]
        _, c, h, w = x.shape
        linf = self.norm is Norm.LINF
        # per query: two window offsets (L2: two windows), a transpose flag, and c channel signs
        per_query = 5 + c
        draws = uniform((n, max(self.n_queries - 1, 1), per_query), salted(rng, 1), x.dtype).to(x.device)
        delta = self._init(x, eps, salted(rng, 2), linf)
        cand = self._apply(x, delta, eps, mask, linf)
        margin, succ = self._margin(model(cand), labels, targeted)
        out, first = x.clone(), torch.full((n,), -1, dtype=torch.long, device=x.device)
        idx = torch.arange(n, device=x.device)
        xs, ys, m, best, best_margin, dr = x, labels, mask, cand, margin, draws
        for q in range(self.n_queries):
            if bool(succ.any()):  # fooled samples stop querying
                out[idx[succ]] = best[succ]
                first[idx[succ]] = q
                keep = ~succ
                idx = idx[keep]
                if not idx.numel():
                    break
                m = select_mask(m, keep)
                xs, ys, best, best_margin, dr = keep_rows(keep, xs, ys, best, best_margin, dr)
            if q == self.n_queries - 1:
                break
            p = p_schedule(q, self.n_queries, self.p_init)
            u = dr[:, q]
            delta = best - xs
            new = (self._linf_step(xs, best, delta, u, p, eps, self.skip_unchanged) if linf
                   else self._l2_step(delta, u, p, eps))
            cand = self._apply(xs, new, eps, m, linf)
            margin, fooled = self._margin(model(cand), ys, targeted)
            better = margin < best_margin
            best = torch.where(better.view(-1, 1, 1, 1), cand, best)
            best_margin = torch.where(better, margin, best_margin)
            succ = fooled & better
        if idx.numel():
            out[idx] = best
        return RunOutput(out, first)

    @staticmethod
    def _margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to minimise (negative once the attack succeeds) and success by argmax."""
        chosen = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
        pred = logits.argmax(1)
        if targeted:
            return other - chosen, pred.eq(labels)
        return chosen - other, pred.ne(labels)

    def _apply(self, x: torch.Tensor, delta: torch.Tensor, eps: float, mask: torch.Tensor | None, linf: bool
               ) -> torch.Tensor:
        """The candidate image: masked perturbation, (L2) rescaled to norm eps, clipped to the box."""
        if mask is not None:
            delta = delta * mask
        if not linf:
            delta = delta * _view(eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12), delta)
        return (x + self.norm.ops.project(delta, eps)).clamp(0.0, 1.0)

    def _init(self, x: torch.Tensor, eps: float, rng: RandomSource, linf: bool) -> torch.Tensor:
        n, c, h, w = x.shape
        if linf:  # vertical stripes: one sign per channel and column
            u = uniform((n, c, w), rng, x.dtype).to(x.device)
            return torch.where(u < 0.5, -eps, eps)[:, :, None, :].expand(n, c, h, w).clone()
        s = max(min(h, w) // 5, 1)
        cells = [(i, j) for i in range(min(5, h // s)) for j in range(min(5, w // s))]
        u = uniform((n, len(cells), c + 1), rng, x.dtype).to(x.device)
        pattern = pseudo_gaussian(s, x.device, x.dtype)
        top, left = (h - s * min(5, h // s)) // 2, (w - s * min(5, w // s)) // 2
        delta = torch.zeros_like(x)
        for k, (i, j) in enumerate(cells):
            pat = torch.where(u[:, k, c, None, None] < 0.5, pattern, pattern.t())  # N x s x s
            sign = torch.where(u[:, k, :c] < 0.5, -1.0, 1.0)  # N x c
            r0, c0 = top + i * s, left + j * s
            delta[:, :, r0:r0 + s, c0:c0 + s] += sign[:, :, None, None] * pat[:, None]
        return delta

    @staticmethod
    def _linf_step(x: torch.Tensor, best: torch.Tensor, delta: torch.Tensor, u: torch.Tensor, p: float,
                   eps: float, skip_unchanged: bool) -> torch.Tensor:
        n, c, h, w = x.shape
        s = min(max(int(round(math.sqrt(p * h * w))), 1), min(h, w) - 1) if min(h, w) > 1 else 1
        vh, vw = _positions(u[:, 0], s, h), _positions(u[:, 1], s, w)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        win = (((rows >= vh[:, None]) & (rows < vh[:, None] + s))[:, :, None]
               & ((cols >= vw[:, None]) & (cols < vw[:, None] + s))[:, None, :])[:, None]  # N x 1 x H x W
        signs = torch.where(u[:, 5:] < 0.5, -eps, eps)[:, :, None, None]  # N x c x 1 x 1
        new = torch.where(win, signs, delta)
        if not skip_unchanged:
            return new
        # a draw that changes nothing would waste a query: flip its signs
        same = ((x + new).clamp(0, 1) - best).abs().flatten(1).amax(dim=1) < 1e-7
        if bool(same.any()):
            new = torch.where(win & same.view(-1, 1, 1, 1), -signs, new)
        return new

    @staticmethod
    def _l2_step(delta: torch.Tensor, u: torch.Tensor, p: float, eps: float) -> torch.Tensor:
        n, c, h, w = delta.shape
        s = max(int(round(math.sqrt(p * h * w))), 3)
        s = min(s + 1 if s % 2 == 0 else s, min(h, w))
        first = _flat_window(_positions(u[:, 0], s, h), _positions(u[:, 1], s, w), s, w)
        second = _flat_window(_positions(u[:, 2], s, h), _positions(u[:, 3], s, w), s, w)
        flat = delta.reshape(n, c, h * w)
        i1, i2 = first[:, None].expand(n, c, s * s), second[:, None].expand(n, c, s * s)
        union = torch.zeros(n, 1, h * w, dtype=delta.dtype, device=delta.device)
        union.scatter_(2, first[:, None], 1.0)
        union.scatter_(2, second[:, None], 1.0)
        in_windows = (flat * union).flatten(1).norm(dim=1)  # N
        total = flat.flatten(1).norm(dim=1)  # N
        old = flat.gather(2, i1)  # N x c x s*s
        old = old / old.norm(dim=2, keepdim=True).clamp_min(1e-12)
        pattern = pseudo_gaussian(s, delta.device, delta.dtype)
        pat = torch.where(u[:, 4, None, None] < 0.5, pattern, pattern.t()).reshape(n, 1, s * s)
        sign = torch.where(u[:, 5:] < 0.5, -1.0, 1.0)[:, :, None]
        fresh = sign * pat + old
        # the window takes its old mass, the second window's, and what is left of the budget
        mass = ((eps ** 2 - total ** 2).clamp_min(0) / c + in_windows ** 2).sqrt()
        fresh = fresh / fresh.norm(dim=2, keepdim=True).clamp_min(1e-12) * mass[:, None, None]
        out = flat.clone()
        out.scatter_(2, i2, 0.0)
        out.scatter_(2, i1, fresh)
        return out.view(n, c, h, w)
