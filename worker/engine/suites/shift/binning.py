"""Accuracy per uncertainty bin, the naive and the controlled drop, and their bootstrap intervals.

Everything here works on two lists of (uncertainty, correct) per image, one per dataset, and is
deterministic: the same lists (in the same order) and seed give the same numbers, bit for bit.

* **Bins** are fixed on the reference: with K bins and the reference's uncertainties sorted,
  s_0 <= ... <= s_{n-1}, the edges are e_k = s_{ceil(k n / K) - 1} for k = 1..K-1, and an image
  falls in bin #{k : u > e_k} (bin 0 the most certain). Each bin then holds about n / K reference
  images; ties share a bin, so a bin may be empty when many images have the same uncertainty.
* **Naive drop**: accuracy(reference) − accuracy(other).
* **Controlled drop**: reference accuracy minus the other set's per-bin accuracies reweighted to
  the reference's bin shares, Σ_k w_k (r_k − a_k) with w_k = n_ref,k / Σ_S n_ref,j. S is the set of
  bins that hold images of both sets: a bin the other set leaves empty has no accuracy to weigh, so
  it is left out of both terms (``coverage`` = the reference share in S; 1 when every bin is
  shared, and then the controlled drop is exactly acc(reference) − Σ_k w_k a_k).
* **Intervals**: percentile bootstrap (2.5% and 97.5%), resampling each set with replacement,
  independently, ``resamples`` times, with the bin edges held fixed; a resample in which no bin is
  shared is left out. Drawn from a generator seeded by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: resamples drawn at once (memory: chunk x images int64)
_CHUNK = 100


def edges(reference: Sequence[float], bins: int) -> list[float]:
    """The K − 1 inner edges of ``bins`` quantile bins of the reference uncertainties (none if empty)."""
    s = sorted(reference)
    n = len(s)
    if n == 0:
        return []
    return [s[math.ceil(k * n / bins) - 1] for k in range(1, bins)]


def assign(values: torch.Tensor, inner: Sequence[float]) -> torch.Tensor:
    """Bin index of each value: the number of edges strictly below it."""
    if not inner:
        return torch.zeros(values.shape, dtype=torch.long)
    return torch.searchsorted(torch.tensor(inner, dtype=torch.float64), values.to(torch.float64), side="left")


@dataclass(frozen=True)
class Table:
    """Per-bin counts of both sets, and the numbers computed from them."""

    count_ref: list[int]
    correct_ref: list[int]
    count_other: list[int]
    correct_other: list[int]

    @property
    def n_ref(self) -> int:
        return sum(self.count_ref)

    @property
    def n_other(self) -> int:
        return sum(self.count_other)

    def accuracy_ref(self) -> float | None:
        return sum(self.correct_ref) / self.n_ref if self.n_ref else None

    def accuracy_other(self) -> float | None:
        return sum(self.correct_other) / self.n_other if self.n_other else None

    def drop(self) -> float | None:
        a, b = self.accuracy_ref(), self.accuracy_other()
        return None if a is None or b is None else a - b

    def shared(self) -> list[int]:
        """The bins that hold images of both sets."""
        return [k for k in range(len(self.count_ref)) if self.count_ref[k] and self.count_other[k]]

    def coverage(self) -> float | None:
        return sum(self.count_ref[k] for k in self.shared()) / self.n_ref if self.n_ref else None

    def controlled_drop(self) -> float | None:
        shared = self.shared()
        total = sum(self.count_ref[k] for k in shared)
        if not total:
            return None
        return math.fsum(self.count_ref[k] / total * (self.correct_ref[k] / self.count_ref[k]
                                                      - self.correct_other[k] / self.count_other[k])
                         for k in shared)


def table(u_ref: torch.Tensor, c_ref: torch.Tensor, u_other: torch.Tensor, c_other: torch.Tensor,
          inner: Sequence[float]) -> Table:
    k = len(inner) + 1
    b_ref, b_other = assign(u_ref, inner), assign(u_other, inner)
    return Table(torch.bincount(b_ref, minlength=k).tolist(),
                 torch.bincount(b_ref, weights=c_ref.double(), minlength=k).long().tolist(),
                 torch.bincount(b_other, minlength=k).tolist(),
                 torch.bincount(b_other, weights=c_other.double(), minlength=k).long().tolist())


def _resampled_counts(bins: torch.Tensor, correct: torch.Tensor, k: int, reps: int,
                      gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(reps x k counts, reps x k correct) of ``reps`` resamples with replacement."""
    n = bins.numel()
    idx = torch.randint(n, (reps, n), generator=gen)
    flat = (bins[idx] + k * torch.arange(reps)[:, None]).flatten()
    counts = torch.bincount(flat, minlength=reps * k).view(reps, k).double()
    hits = torch.bincount(flat, weights=correct.double()[idx].flatten(), minlength=reps * k).view(reps, k)
    return counts, hits


def bootstrap(u_ref: torch.Tensor, c_ref: torch.Tensor, u_other: torch.Tensor, c_other: torch.Tensor,
              inner: Sequence[float], resamples: int, gen: torch.Generator
              ) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """95% percentile intervals of (naive drop, controlled drop); None where undefined."""
    if not u_ref.numel() or not u_other.numel():
        return None, None
    k = len(inner) + 1
    b_ref, b_other = assign(u_ref, inner), assign(u_other, inner)
    naive: list[torch.Tensor] = []
    controlled: list[torch.Tensor] = []
    for start in range(0, resamples, _CHUNK):
        reps = min(_CHUNK, resamples - start)
        n_r, h_r = _resampled_counts(b_ref, c_ref, k, reps, gen)
        n_o, h_o = _resampled_counts(b_other, c_other, k, reps, gen)
        naive.append(h_r.sum(1) / n_r.sum(1) - h_o.sum(1) / n_o.sum(1))
        both = (n_r > 0) & (n_o > 0)
        w = torch.where(both, n_r, torch.zeros_like(n_r))
        gap = torch.where(both, h_r / n_r.clamp(min=1) - h_o / n_o.clamp(min=1), torch.zeros_like(n_r))
        total = w.sum(1)
        controlled.append(torch.where(total > 0, (w * gap).sum(1) / total.clamp(min=1), torch.nan))
    return _percentile(torch.cat(naive)), _percentile(torch.cat(controlled))


def _percentile(values: torch.Tensor) -> tuple[float, float] | None:
    kept = values[torch.isfinite(values)]
    if not kept.numel():
        return None
    q = torch.quantile(kept, torch.tensor([0.025, 0.975], dtype=kept.dtype))
    return float(q[0]), float(q[1])
