"""Reference -> :class:`SampleSet`: open the catalogue, check it, draw, decode the draw."""

from __future__ import annotations

import torch

from ..errors import DatasetError
from ..samples import SampleSet
from .images import unify_channels
from .reference import DatasetRef
from .roots import DataRoots
from .sampling import resolve_classes, stratified_indices
from .sources import SOURCES, Catalog


def load_samples(ref: DatasetRef, *, roots: DataRoots | None = None,
                 num_classes: int | None = None) -> SampleSet:
    """Draw the seeded, stratified sample a reference names.

    Args:
        ref: a validated reference (see :meth:`DatasetRef.parse`).
        roots: where paths may lead; :meth:`DataRoots.from_env` when None.
        num_classes: the model's class count; a dataset with more classes is refused.

    Returns:
        a :class:`SampleSet` of float32 C x H x W images in [0, 1] at native resolution.

    Raises:
        DatasetError: bad reference, missing or corrupt files, labels out of range, more
            classes than the model (:class:`PathNotAllowedError` for a path outside the roots).
    """
    if not isinstance(ref, DatasetRef):
        raise TypeError(f"load_samples takes a DatasetRef (use DatasetRef.parse), got {type(ref).__name__}")
    source = SOURCES[ref.kind](ref, roots if roots is not None else DataRoots.from_env())
    catalog = source.catalog()
    _check_catalog(catalog, num_classes)
    wanted = resolve_classes(ref.classes, catalog.class_names)
    idx = stratified_indices(catalog.labels, ref.n_samples, ref.seed, classes=wanted)
    positions = [int(i) for i in idx]
    images = unify_channels(source.fetch(positions))
    return SampleSet(images=images, labels=catalog.labels[idx].clone(),
                     ids=[source.item_id(i) for i in positions],
                     class_names=list(catalog.class_names), reference=ref.to_dict())


def _check_catalog(catalog: Catalog, num_classes: int | None) -> None:
    count = len(catalog.class_names)
    if num_classes is not None and count > num_classes:
        raise DatasetError(f"dataset has {count} classes but the model has {num_classes}",
                           dataset_classes=count, model_classes=num_classes)
    labels = catalog.labels
    if labels.numel() == 0:
        raise DatasetError("the dataset is empty")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= count:
        raise DatasetError(f"dataset labels must lie in [0, {count}) (its number of classes), "
                           f"found labels from {low} to {high}", min_label=low, max_label=high)
    if labels.dtype != torch.int64:
        catalog.labels = labels.to(torch.int64)
