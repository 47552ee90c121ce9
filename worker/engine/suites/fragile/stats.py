"""Aggregates over images: mean, median and a percentile bootstrap 95% interval."""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from ...metrics import Unit, metric


def bootstrap_indices(n: int, resamples: int, generator: torch.Generator) -> torch.Tensor:
    """(resamples, n) indices drawn with replacement; drawn once and shared by every metric of one r."""
    if n == 0:
        return torch.zeros(resamples, 0, dtype=torch.long)
    return torch.randint(n, (resamples, n), generator=generator)


def summary(values: list[float], indices: torch.Tensor, description: str, **extra: Any) -> dict[str, Any]:
    """Metric leaves ``mean``, ``median``, ``ci95_low``, ``ci95_high`` of per-image values."""
    n = len(values)
    if n == 0:
        mean = median = low = high = None
    else:
        mean = math.fsum(values) / n
        median = float(statistics.median(values))
        means = torch.tensor(values, dtype=torch.float64)[indices].mean(dim=1)
        q = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
        low, high = float(q[0]), float(q[1])
    resamples = int(indices.shape[0])
    return {
        "mean": metric(mean, Unit.FRACTION, n, f"{description}: mean over images",
                       ci95=None if low is None else [low, high], ci95_method="percentile bootstrap", **extra),
        "median": metric(median, Unit.FRACTION, n, f"{description}: median over images", **extra),
        "ci95_low": metric(low, Unit.FRACTION, n, f"{description}: lower end of the 95% percentile bootstrap "
                           "interval of the mean over images", resamples=resamples, **extra),
        "ci95_high": metric(high, Unit.FRACTION, n, f"{description}: upper end of the 95% percentile bootstrap "
                            "interval of the mean over images", resamples=resamples, **extra),
    }
