"""Poisson counts from uniform draws, by exact inversion, vectorised on any device.

A rate ``lam`` splits into ``a + b``, ``a`` on a grid of rates (steps of 1/8) and ``b`` below
one step, and Poisson(lam) = Poisson(a) + Poisson(b) for independent counts. The count for
``a`` is inverted through a table of the grid rates' Poisson CDFs (a guide table, Chen and
Asau 1974, gives the starting entry, so a count costs about one lookup); the count for ``b``
by a short search up from 0 (almost every such count is 0). Both are exact inversions of the
Poisson law up to float64 rounding (a change of probability below 1e-13), and a count depends
only on its rate and its two uniforms, so each sample's seeded stream fixes its counts
whatever the batch or the device.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import torch

#: rates above this are not tabulated; such rates are refused here.
TABLE_MAX_RATE = 255
#: tabulated rates are r / GRID (a power of two, so that a rate's split is exact).
GRID = 8
#: guide entries per tabulated rate: few values need a step forward after the guide (for a rate
#: of 12, one in 44; with 128 entries, one in 12).
GUIDE_SIZE = 512
#: values per block on a CPU: at or below torch's grain size, so each operation runs on one thread.
CPU_BLOCK = 1 << 15
#: the search for the remainder's count stops here (P(Poisson(1) >= 30) is about 1e-33).
FRACTION_MAX_COUNT = 30


@functools.lru_cache(maxsize=8)
def _tables(top: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cdf, count, guide) for the rates r / GRID below top + 1, on the CPU (cached).

    ``cdf`` holds one row F(0), ..., F(L - 1) per rate, flattened, with
    L = rate + 12 sqrt(rate + 1) + 20 and the last entry an exact 1.0 (the tail beyond, below
    1e-20, is folded into the last count); ``count`` the k of each entry (float64);
    ``guide[r * GUIDE_SIZE + m]``, the flat index of
    row r's first entry whose CDF reaches m / GUIDE_SIZE. A row depends on its rate only, not
    on ``top``, so a count does not depend on the largest rate of its batch. ``top`` is one
    less than a power of two, so that few tables are built.
    """
    rows = (top + 1) * GRID
    rate = torch.arange(rows, dtype=torch.float64) / GRID
    length = (rate + 12 * (rate + 1).sqrt()).ceil().long() + 20
    k = torch.arange(int(length.max()), dtype=torch.float64).view(1, -1)
    # Log-space pmf: exp(-rate) alone underflows for large rates, the terms near the mode do not;
    # the rate-0 row (log 0 = -inf) is set apart.
    r = rate.view(-1, 1)
    cdf = (k * r.clamp_min(1e-300).log() - r - torch.lgamma(k + 1)).exp_().cumsum_(1).clamp_(max=1.0)
    cdf[0] = 1.0
    inside = k < length.view(-1, 1)
    cdf[~inside] = 2.0  # past a row's end: above every uniform, so the guide never lands there
    cdf.scatter_(1, (length - 1).view(-1, 1), 1.0)
    start = torch.cumsum(length, 0) - length
    levels = (torch.arange(GUIDE_SIZE, dtype=torch.float64) / GUIDE_SIZE).expand(rows, GUIDE_SIZE)
    guide = torch.searchsorted(cdf, levels.contiguous()) + start.view(-1, 1)
    return cdf[inside], k.expand_as(cdf)[inside], guide.view(-1)


def poisson_from_uniforms(rates: torch.Tensor, u_whole: torch.Tensor, u_frac: torch.Tensor) -> torch.Tensor:
    """Poisson(rates) counts (float64, rates' shape and device) from two uniforms on [0, 1) per value.

    Raises:
        ValueError: a rate is negative, not finite, or above :data:`TABLE_MAX_RATE`.
    """
    lam = rates.detach().double().reshape(-1)
    if lam.numel() == 0:
        return lam.clone().view(rates.shape)
    lo, hi = float(lam.min()), float(lam.max())
    if not (lo >= 0 and hi <= TABLE_MAX_RATE):
        raise ValueError(f"Poisson rates must lie in [0, {TABLE_MAX_RATE}], got [{lo}, {hi}]")
    top = (1 << int(hi).bit_length()) - 1
    _tables(top)  # built once here, before any worker thread asks for it
    u_whole = u_whole.to(lam.device, torch.float64).reshape(-1)
    u_frac = u_frac.to(lam.device, torch.float64).reshape(-1)
    counts = torch.empty_like(lam)

    def run(part: slice) -> None:
        # GRID is a power of two: lam * GRID, its floor and row / GRID are exact, so 0 <= b < 1 / GRID.
        rate = lam[part]
        row = rate.mul(GRID).floor_()
        got = _invert_table(row, u_whole[part], top)
        _add_fraction_counts(got, rate - row.div_(GRID), u_frac[part])
        counts[part] = got

    # Each count depends on its own value only, so the split cannot change the result. On a CPU,
    # blocks small enough for torch to run each operation on one thread, spread over the
    # threads, keep every core busy; one pass of large operations spends its time waiting for
    # the slowest thread at each of its many small steps.
    n = lam.numel()
    workers = torch.get_num_threads()
    if lam.device.type != "cpu" or n <= CPU_BLOCK:
        run(slice(None))
    else:
        blocks = [slice(i, i + CPU_BLOCK) for i in range(0, n, CPU_BLOCK)]
        if workers <= 1:
            for block in blocks:
                run(block)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(run, blocks))
    return counts.view(rates.shape)


def _invert_table(row: torch.Tensor, u: torch.Tensor, top: int) -> torch.Tensor:
    """min{k : F_rate(k) >= u} per value (flat float64 tensors) for tabulated rates, by the guide.

    (index_select and index_add_ rather than ``t[i]``: on a CPU they are several times faster.)
    """
    cdf, count, guide = (t.to(row.device) for t in _tables(top))
    # u * GUIDE_SIZE < GUIDE_SIZE exactly (a power of two times u < 1), so m < GUIDE_SIZE; the
    # key is a whole number below 2^53, exact in float64.
    key = torch.mul(u, GUIDE_SIZE).floor_().add_(row, alpha=GUIDE_SIZE).long()
    index = guide.index_select(0, key)
    # The guide entry never overshoots (its CDF level m / GUIDE_SIZE <= u); step forward while
    # the CDF is still below u, on the few values that need it. Each row ends with 1.0 > u.
    todo = (cdf.index_select(0, index) < u).nonzero().view(-1)
    at, uu = index.index_select(0, todo), u.index_select(0, todo)
    while todo.numel():
        at += 1
        index.index_add_(0, todo, torch.ones_like(todo))
        more = (cdf.index_select(0, at) < uu).nonzero().view(-1)
        todo, at, uu = todo.index_select(0, more), at.index_select(0, more), uu.index_select(0, more)
    return count.index_select(0, index)


def _add_fraction_counts(counts: torch.Tensor, b: torch.Tensor, u: torch.Tensor) -> None:
    """counts += min{k : F_b(k) >= u} per value for small rates b in [0, 1), searching up from 0.

    F_b(0) = exp(-b) >= 1 - b, so u <= 1 - b means a count of 0 without an exponential; only the
    other values (a fraction b of them, below 1/GRID) are searched, on their own.
    """
    todo = (u + b > 1).nonzero().view(-1)
    bb, uu = b.index_select(0, todo), u.index_select(0, todo)
    p = torch.exp(bb.neg())
    f = p.clone()
    k = 0
    while todo.numel() and k < FRACTION_MAX_COUNT:
        more = (f < uu).nonzero().view(-1)
        todo, p, f, bb, uu = (t.index_select(0, more) for t in (todo, p, f, bb, uu))
        counts.index_add_(0, todo, torch.ones_like(f))
        k += 1
        p.mul_(bb).div_(k)
        f += p
