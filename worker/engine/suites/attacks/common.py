"""Helpers shared by the parts of the attacks suite: batching, seeds, medians, ranks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch

from ...attacks.rng import SampleSeeds, sample_seed
from ...classifier import Classifier
from ...samples import Population
from ..base import SuiteContext

T = TypeVar("T")


def in_batches(clf: Classifier, n: int, size: int | None, fn: Callable[[int, int], T]) -> list[T]:
    """``fn(start, stop)`` over ``range(n)``; the model's automatic batch size (halved on CUDA
    out-of-memory) unless the request fixed one."""
    if size is None:
        return clf.batch.map(fn, n)
    return [fn(s, min(n, s + size)) for s in range(0, n, size)]


def seeds_for(seed: int, ids: Sequence[str], salt: str) -> SampleSeeds:
    """One random stream per sample id: independent of batches and shards."""
    return SampleSeeds([sample_seed(seed, "attacks", salt, sid) for sid in ids])


def median(values: Sequence[float]) -> float | None:
    """Median of values that may hold inf (not found); None when empty or infinite."""
    if not values:
        return None
    v = sorted(values)
    m = len(v) // 2
    out = v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2 if math.isfinite(v[m - 1] + v[m]) else math.inf
    return out if math.isfinite(out) else None


def share(hits: Sequence[bool]) -> float | None:
    return math.fsum(float(h) for h in hits) / len(hits) if hits else None


def ranks(values: Sequence[float]) -> list[float]:
    """Average ranks (ties share the mean rank), 1-based."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson correlation of average ranks; None if undefined."""
    if len(a) != len(b) or len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = math.fsum(ra) / len(ra), math.fsum(rb) / len(rb)
    cov = math.fsum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = math.fsum((x - ma) ** 2 for x in ra)
    vb = math.fsum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


Record = dict[str, Any]


@dataclass(frozen=True)
class Sanity:
    """A sample's sanity facts on the clean image (sanity.py turns them into warnings)."""

    prob_like: bool
    zero_grad: bool
    nan_grad: bool
    randomised: bool

    def to_json(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sanity:
        return cls(bool(data["prob_like"]), bool(data["zero_grad"]), bool(data["nan_grad"]), bool(data["randomised"]))


@dataclass
class Sample:
    """One sample's facts in the attacks suite: the clean outcome, the sanity facts, whether EoT
    ran, the untargeted outcome per norm (robustness.py writes it), and each part's own record
    by part name. The partial holds :meth:`to_json` (parts apart, under ``partial["parts"]``).
    With multi-label success (multilabel.py): ``label_set``, the sample's valid classes, and
    ``multilabel``, the outcome of the run away from a valid clean class other than the label."""

    id: str
    label: int
    correct: bool
    margin: float
    topk: list[int]
    sanity: Sanity
    eot: bool = False
    attacks: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)
    label_set: list[int] | None = None
    multilabel: dict[str, Any] | None = None

    def to_json(self) -> Record:
        out = {"id": self.id, "label": self.label, "correct": self.correct, "margin": self.margin,
               "topk": list(self.topk), "sanity": self.sanity.to_json(), "eot": self.eot, "attacks": self.attacks}
        if self.label_set is not None:  # only with multi-label success: the single-label partial is unchanged
            out["label_set"] = list(self.label_set)
            out["multilabel"] = self.multilabel
        return out

    @classmethod
    def from_json(cls, data: Record, parts: dict[str, Any] | None = None) -> Sample:
        label_set = data.get("label_set")
        return cls(id=data["id"], label=int(data["label"]), correct=bool(data["correct"]),
                   margin=float(data["margin"]), topk=[int(t) for t in data["topk"]],
                   sanity=Sanity.from_json(data["sanity"]), eot=bool(data["eot"]), attacks=data["attacks"],
                   parts=dict(parts or {}), label_set=None if label_set is None else [int(c) for c in label_set],
                   multilabel=data.get("multilabel"))


@dataclass(frozen=True)
class Kept:
    """One successful untargeted adversarial of the core: its budget, the attack and the image."""

    eps: float
    attack: str
    image: torch.Tensor


class Adversarials:
    """Per sample and norm, one successful untargeted adversarial of the core (2a): at the smallest
    budget that fooled the sample, from the first attack in run order that fooled it there. The core
    keeps them only for a part that reads them (``uses_adversarials``); one image per sample and norm."""

    def __init__(self) -> None:
        self.kept: dict[str, dict[str, Kept]] = {}

    def offer(self, sid: str, norm: str, eps: float, attack: str, image: torch.Tensor) -> None:
        have = self.kept.setdefault(sid, {}).get(norm)
        if have is None or eps < have.eps:
            self.kept[sid][norm] = Kept(float(eps), attack, image.detach().clone())

    def of(self, sid: str) -> dict[str, Kept]:
        return self.kept.get(sid, {})


@dataclass(frozen=True)
class Shard:
    """What every part of the attacks suite gets to attack one shard.

    Args:
        ctx: the suite's context (model, artifacts, seed, generators).
        params: the suite's validated parameters (a part reads its own object and the core ones).
        x, y: prepared images and labels on the model's device.
        ids: the sample ids, in the order of ``x``.
        attacked: which samples are attacked (classified correctly on the clean image).
        progress: this part's fraction done.
        population: the audit's whole sample (ids and labels), the same in every shard.
        adversarials: the core's successful untargeted adversarials, when a part switched on
            reads them (its class sets ``uses_adversarials = True``); else None.
    """

    ctx: SuiteContext
    params: dict[str, Any]
    x: torch.Tensor
    y: torch.Tensor
    ids: list[str]
    attacked: torch.Tensor
    progress: Callable[[float], None]
    population: Population
    adversarials: Adversarials | None = None

    @property
    def clf(self) -> Classifier:
        return self.ctx.classifier

    @property
    def seed(self) -> int:
        return self.ctx.seed


@dataclass(frozen=True)
class Final:
    """What every part of the attacks suite gets to finalize: the merged per-sample records
    (core facts joined with each part's record under the part's name)."""

    ctx: SuiteContext
    suite: str
    params: dict[str, Any]
    records: list[Sample]
    class_names: list[str]
    hierarchy: dict[str, str]
