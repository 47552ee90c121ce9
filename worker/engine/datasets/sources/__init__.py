"""Dataset sources, one module per kind, picked from :data:`SOURCES` by the reference's kind."""

from __future__ import annotations

from ..reference import DatasetKind
from .base import Catalog, Source
from .builtin import BuiltinSource
from .imagefolder import ImageFolderSource
from .npz import NpzSource
from .torchvision_sets import TorchvisionSource

SOURCES: dict[DatasetKind, type[Source]] = {
    DatasetKind.BUILTIN: BuiltinSource,
    DatasetKind.IMAGEFOLDER: ImageFolderSource,
    DatasetKind.TORCHVISION: TorchvisionSource,
    DatasetKind.NPZ: NpzSource,
}

__all__ = ["SOURCES", "Catalog", "Source"]
