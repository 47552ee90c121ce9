"""Helpers shared by the parts of the perturbation suite."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ...classifier import Classifier
from ..base import SuiteContext


class Progress:
    """Counts work units across the parts of one shard and reports the fraction done."""

    def __init__(self, ctx: SuiteContext, total: int) -> None:
        self.ctx, self.total, self.done = ctx, max(1, total), 0

    def step(self, units: int = 1) -> None:
        self.done += units
        self.ctx.progress(min(1.0, self.done / self.total))


def predictions(clf: Classifier, images: torch.Tensor) -> torch.Tensor:
    """Top-1 classes of images already on the model's device (batched by the classifier)."""
    return clf.logits(images).argmax(dim=1)


def mean(values: Iterable[float]) -> float | None:
    vals = [float(v) for v in values]
    return math.fsum(vals) / len(vals) if vals else None


def median(values: Iterable[float]) -> float | None:
    vals = sorted(float(v) for v in values)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def label(prefix: str, v: float) -> str:
    """A metric-path-safe number label, e.g. eps0p5."""
    return prefix + f"{v:g}".replace(".", "p").replace("+", "")
