"""Helpers shared by the parts of the perturbation suite."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ...classifier import Classifier
from ...samples import SampleSet
from ..base import SuiteContext


class Progress:
    """Counts one part's work units and reports its fraction done."""

    def __init__(self, report: Callable[[float], None], total: int) -> None:
        self.report, self.total, self.done = report, max(1, total), 0

    def step(self, units: int = 1) -> None:
        self.done += units
        self.report(min(1.0, self.done / self.total))


@dataclass(frozen=True)
class Shard:
    """What every part of the perturbation suite gets to run on one shard.

    Args:
        ctx: the suite's context (model, seed, generators).
        samples: the shard's samples.
        params: the suite's validated parameters (a part reads its own object).
        progress: this part's fraction done.
        generators: loaded generators of this suite run, by path, card and device.
    """

    ctx: SuiteContext
    samples: SampleSet
    params: dict[str, Any]
    progress: Callable[[float], None]
    generators: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Final:
    """What every part of the perturbation suite gets to finalize."""

    ctx: SuiteContext
    suite: str
    params: dict[str, Any]


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
