"""Seeded, class-stratified sampling of dataset indices.

One random permutation of the whole set (``torch.randperm`` with a seeded generator) fixes
the order in which items of each class are taken, so the same labels, size and seed always
give the same sample, and restricting to a class subset keeps the same items of the
remaining classes. Sizes per class follow the class proportions (largest remainder);
when the sample is at least as large as the number of classes, every class gets one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import DatasetError

_MAX_LISTED = 30


def resolve_classes(wanted: Sequence[str | int] | None, class_names: Sequence[str]) -> list[int] | None:
    """Class names or indices -> sorted class indices (None: every class).

    A string is looked up among the names; an integer is an index.
    """
    if wanted is None:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    out: set[int] = set()
    unknown: list[str | int] = []
    for c in wanted:
        if isinstance(c, str) and c in index:
            out.add(index[c])
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(class_names):
            out.add(c)
        else:
            unknown.append(c)
    if unknown:
        shown = list(class_names[:_MAX_LISTED])
        more = f" (and {len(class_names) - _MAX_LISTED} more)" if len(class_names) > _MAX_LISTED else ""
        raise DatasetError(f"unknown classes {unknown}; valid names: {shown}{more}, "
                           f"or indices 0..{len(class_names) - 1}", classes=[str(u) for u in unknown])
    return sorted(out)


def allocate(counts: Sequence[int], n: int) -> list[int]:
    """How many items to take from each class: proportional, largest remainder.

    Args:
        counts: available items per class (zero for classes not drawn from).
        n: sample size (>= 1).

    Returns:
        per-class sizes summing to ``min(n, sum(counts))``; when ``n`` is at least the
        number of non-empty classes, each of them gets at least one.
    """
    total = sum(counts)
    if n >= total:
        return list(counts)
    # Exact integer arithmetic: quota_c = n * m_c / total = floor + rem / total.
    take = [n * m // total for m in counts]
    rems = [n * m % total for m in counts]
    left = n - sum(take)
    for c in sorted(range(len(counts)), key=lambda c: (-rems[c], c))[:left]:
        take[c] += 1
    present = [c for c, m in enumerate(counts) if m > 0]
    if n >= len(present):
        for c in present:
            if take[c] == 0:
                # Take one from the most over-served class that can spare one.
                donor = max((d for d in present if take[d] > 1),
                            key=lambda d: (take[d] * total - n * counts[d], -d))
                take[donor] -= 1
                take[c] = 1
    return take


def stratified_indices(labels: torch.Tensor, n: int, seed: int, *,
                       classes: Sequence[int] | None = None) -> torch.Tensor:
    """Indices of a seeded sample stratified by class.

    Args:
        labels: int64 class label per item.
        n: sample size (>= 1); the whole (restricted) set when it is smaller.
        seed: seed of the permutation.
        classes: class indices to draw from (None: all).

    Returns:
        int64 indices into ``labels``, sorted by class, within a class in the order of the
        seeded permutation.
    """
    if n < 1:
        raise DatasetError(f"n_samples must be >= 1, got {n}")
    labels = labels.to(torch.int64).reshape(-1)
    if labels.numel() == 0:
        raise DatasetError("the dataset is empty")
    if int(labels.min()) < 0:
        raise DatasetError(f"the dataset has a negative label ({int(labels.min())})")
    num = int(labels.max()) + 1
    keep = torch.ones(num, dtype=torch.bool)
    if classes is not None:
        keep = torch.zeros(num, dtype=torch.bool)
        chosen = [c for c in classes if c < num]
        keep[torch.as_tensor(chosen, dtype=torch.int64)] = True
    counts = torch.bincount(labels, minlength=num) * keep
    if int(counts.sum()) == 0:
        raise DatasetError(f"the dataset has no items of classes {list(classes or [])}")
    take = allocate([int(m) for m in counts], n)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(labels.numel(), generator=gen)
    # Stable sort of the permuted labels groups by class while keeping permutation order.
    by_class = perm[torch.sort(labels[perm], stable=True).indices]
    starts = torch.cumsum(torch.bincount(labels, minlength=num), 0) - torch.bincount(labels, minlength=num)
    parts = [by_class[int(starts[c]):int(starts[c]) + k] for c, k in enumerate(take) if k > 0]
    return torch.cat(parts)
