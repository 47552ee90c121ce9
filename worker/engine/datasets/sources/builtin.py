"""Builtin data sets shipped with the package: ``digits`` (scikit-learn's 8x8 digits).

The demo models are trained on ``digits_split()[0]``; a builtin reference draws from the
held-out ``test`` part by default. The split is fixed (seed 0) and independent of the
reference's sampling seed, so every audit of a demo model runs on images it never saw.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import DatasetError
from .base import Catalog, Source

DIGITS_FILE = Path(__file__).resolve().parents[2] / "data" / "digits.pt"
DIGITS_SIZE = 32
DIGITS_MAX = 16  # pixel values of the original 8x8 digits are 0..16
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        raw = torch.load(DIGITS_FILE, weights_only=True)
    except (OSError, RuntimeError) as exc:  # a broken install, not user input
        raise RuntimeError(f"cannot read the builtin digits at {DIGITS_FILE}: {exc}") from exc
    x = raw["images"].to(torch.float32).div(DIGITS_MAX).unsqueeze(1)
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False,
                      antialias=False).clamp_(0.0, 1.0)
    return x, raw["labels"].to(torch.int64)


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """The whole digits set: images N x 1 x 32 x 32 float in [0, 1], labels int64 (N = 1797)."""
    x, y = _digits()
    return x.clone(), y.clone()


def digits_split(seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic stratified 80/20 split of the digits: (train_idx, test_idx), each sorted.

    For each class c, its indices in ascending order are permuted with
    ``torch.randperm(n_c, generator=torch.Generator().manual_seed(seed + c))``; the first
    ``round(0.2 * n_c)`` go to the test part, the rest to the train part (the definition
    ``scripts/train_demo.py`` trains the demo models with).
    """
    _, labels = _digits()
    train, test = [], []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c, as_tuple=True)[0]
        perm = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(seed + c))
        n_test = round(TEST_FRACTION * idx.numel())
        test.append(idx[perm[:n_test]])
        train.append(idx[perm[n_test:]])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


@dataclass(frozen=True)
class _Builtin:
    tensors: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    split: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    class_names: tuple[str, ...]


BUILTINS: dict[str, _Builtin] = {
    "digits": _Builtin(tensors=_digits, split=digits_split, class_names=tuple(str(i) for i in range(10))),
}

_SPLIT_PART = {"train": 0, "test": 1}


class BuiltinSource(Source):
    """``builtin:<name>`` -- a data set shipped in ``worker/engine/data``."""

    def catalog(self) -> Catalog:
        name = self.ref.name or ""
        builtin = BUILTINS.get(name)
        if builtin is None:  # DatasetRef validates the name; this guards a stale table
            raise DatasetError(f"unknown builtin data set {name!r}; known: {', '.join(BUILTINS)}")
        self._images, labels = builtin.tensors()
        if self.ref.split in _SPLIT_PART:
            self._index = builtin.split(SPLIT_SEED)[_SPLIT_PART[self.ref.split]]
        else:
            self._index = torch.arange(labels.numel())
        return Catalog(labels=labels[self._index], class_names=list(builtin.class_names))

    def fetch(self, indices: Sequence[int]) -> list[torch.Tensor]:
        return [self._images[int(self._index[i])].clone() for i in indices]

    def item_id(self, index: int) -> str:
        return f"{self.ref.name}:{int(self._index[index])}"
