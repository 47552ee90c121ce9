"""What every dataset source provides: a cheap catalogue, then decoding of chosen items.

:func:`worker.engine.datasets.load_samples` opens the catalogue (labels and class names of
every item, no pixels), draws the sample from the labels, and only then asks the source to
decode the chosen items. A source therefore never decodes an image it does not return.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..reference import DatasetRef
from ..roots import DataRoots


@dataclass
class Catalog:
    """The labels of every item of a source, and its class names.

    Args:
        labels: int64, one label per item; item ``i`` is what ``fetch([i])`` decodes.
        class_names: one name per class, index = label.
        label_sets: optional N x number-of-classes bool multi-hot of the classes valid for each
            item (an npz archive's ``label_sets``); None when the source has none.
    """

    labels: torch.Tensor
    class_names: list[str]
    label_sets: torch.Tensor | None = None


class Source(ABC):
    """One dataset kind.

    Args:
        ref: the validated reference (its kind is this source's).
        roots: the data roots every path must resolve into.
    """

    def __init__(self, ref: DatasetRef, roots: DataRoots) -> None:
        self.ref = ref
        self.roots = roots

    @abstractmethod
    def catalog(self) -> Catalog:
        """Labels and class names of every item, without decoding images."""

    @abstractmethod
    def fetch(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Decode the items at ``indices`` (catalogue positions) as C x H x W float in [0, 1]."""

    @abstractmethod
    def item_id(self, index: int) -> str:
        """The stable id of the item at a catalogue position, e.g. ``"npz:17"``."""
