"""``torchvision:<Name>:<root>[:split]`` -- a torchvision data set already on disk.

Read with ``torchvision.datasets.<Name>(root, ..., download=False)``: robustaudit never
downloads. torchvision verifies CIFAR and SVHN files against their published MD5 sums
before reading them. torchvision is imported only when such a reference is loaded.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import DatasetError
from ..images import pil_to_tensor
from .base import Catalog, Source


@dataclass(frozen=True)
class _TvSet:
    """How one torchvision set lies on disk.

    Args:
        entry: the file or folder torchvision reads under the root (``{split}`` filled in).
        layout: the expected layout, for the "not found" message.
        num_classes: class count (names come from the data set when it has them).
        split_kwarg: ``"train"`` (``train=bool``) or ``"split"`` (``split=str``).
    """

    entry: str
    layout: str
    num_classes: int
    split_kwarg: str = "train"


_MNIST_FILES = "(train-/t10k-images-idx3-ubyte, train-/t10k-labels-idx1-ubyte)"
TORCHVISION_SETS: dict[str, _TvSet] = {
    "CIFAR10": _TvSet("cifar-10-batches-py",
                      "<root>/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)", 10),
    "CIFAR100": _TvSet("cifar-100-python", "<root>/cifar-100-python/ (train, test, meta)", 100),
    "MNIST": _TvSet("MNIST", f"<root>/MNIST/raw/ {_MNIST_FILES}", 10),
    "FashionMNIST": _TvSet("FashionMNIST", f"<root>/FashionMNIST/raw/ {_MNIST_FILES}", 10),
    "SVHN": _TvSet("{split}_32x32.mat", "<root>/<split>_32x32.mat", 10, split_kwarg="split"),
}


class TorchvisionSource(Source):
    """``torchvision:<Name>:<root>[:split]`` -- CIFAR10/100, MNIST, FashionMNIST, SVHN."""

    def catalog(self) -> Catalog:
        name, split = self.ref.name or "", self.ref.split or "test"
        spec = TORCHVISION_SETS.get(name)
        if spec is None:  # DatasetRef validates the name; this guards a stale table
            raise DatasetError(f"unknown torchvision data set {name!r}; known: {', '.join(TORCHVISION_SETS)}")
        root = self.roots.resolve(self.ref.root or "")
        self._confine(root / spec.entry.format(split=split))
        self._ds = _open(name, spec, str(root), split, shown_root=self.ref.root or "")
        targets = getattr(self._ds, "targets", None)
        if targets is None:
            targets = self._ds.labels  # SVHN
        import numpy as np  # torchvision needs it anyway

        labels = torch.as_tensor(np.asarray(targets), dtype=torch.int64).reshape(-1)
        classes = getattr(self._ds, "classes", None)
        names = [str(c) for c in classes] if classes else [str(i) for i in range(spec.num_classes)]
        return Catalog(labels=labels, class_names=names)

    def _confine(self, entry: Path) -> None:
        """Every file torchvision may read under ``entry`` must resolve inside the roots."""
        if not os.path.lexists(entry):
            return  # torchvision reports the missing files
        self.roots.check(entry, shown=f"{self.ref.root}/{entry.name}")
        seen: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(entry, followlinks=True):
            real = self.roots.check(dirpath, shown=f"{self.ref.root}/{os.path.relpath(dirpath, entry.parent)}")
            if real in seen:  # a symlink loop
                dirnames[:] = []
                continue
            seen.add(real)
            for name in filenames:
                path = os.path.join(dirpath, name)
                self.roots.check(path, shown=f"{self.ref.root}/{os.path.relpath(path, entry.parent)}")

    def fetch(self, indices: Sequence[int]) -> list[torch.Tensor]:
        images = []
        for i in indices:
            img, _ = self._ds[int(i)]
            images.append(pil_to_tensor(img, shown=self.item_id(int(i))))
        return images

    def item_id(self, index: int) -> str:
        return f"{self.ref.name}:{self.ref.split}:{index}"


def _open(name: str, spec: _TvSet, root: str, split: str, *, shown_root: str) -> Any:
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DatasetError(f"torchvision data set {name} needs torchvision installed: {exc}") from None
    kwargs: dict[str, Any] = {"split": split} if spec.split_kwarg == "split" else {"train": split == "train"}
    try:
        return getattr(tvd, name)(root, download=False, **kwargs)
    except ImportError as exc:  # SVHN reads .mat files with scipy
        raise DatasetError(f"torchvision {name} needs an optional package: {exc}") from None
    except RuntimeError as exc:
        raise DatasetError(
            f"torchvision {name} ({split}) files not found or corrupted under {shown_root!r} ({exc}); "
            f"robustaudit never downloads: place the files there, laid out as {spec.layout}",
            name=name, root=shown_root) from None
    except (OSError, ValueError, EOFError, KeyError, IndexError, pickle.UnpicklingError) as exc:
        raise DatasetError(f"torchvision {name} ({split}) under {shown_root!r} cannot be read: {exc}",
                           name=name, root=shown_root) from None
