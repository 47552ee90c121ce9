"""Datasets: references, data roots, seeded stratified sampling, and one source per kind.

    ref = DatasetRef.parse("imagefolder:pets", n_samples=200, seed=1)
    samples = load_samples(ref, roots=DataRoots.from_env(), num_classes=card.num_classes)
"""

from .loading import check_reference_paths, load_samples
from .reference import BUILTIN_SPLITS, TORCHVISION_SPLITS, DatasetKind, DatasetRef
from .roots import DataRoots
from .sampling import allocate, resolve_classes, stratified_indices
from .sources.builtin import digits_split, digits_tensors

__all__ = [
    "BUILTIN_SPLITS",
    "TORCHVISION_SPLITS",
    "DataRoots",
    "DatasetKind",
    "DatasetRef",
    "allocate",
    "check_reference_paths",
    "digits_split",
    "digits_tensors",
    "load_samples",
    "resolve_classes",
    "stratified_indices",
]
