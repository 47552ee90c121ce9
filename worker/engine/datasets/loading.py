"""Reference -> :class:`SampleSet`: open the catalogue, check it, draw, decode the draw."""

from __future__ import annotations

import torch

from ..errors import DatasetError
from ..samples import SampleSet
from .images import unify_channels
from .label_sets import read_label_sets_file, sample_label_sets
from .reference import DatasetRef
from .roots import DataRoots
from .sampling import resolve_classes, stratified_indices
from .sources import SOURCES, Catalog


def load_samples(ref: DatasetRef, *, roots: DataRoots | None = None,
                 num_classes: int | None = None, part: tuple[int, int] | None = None) -> SampleSet:
    """Draw the seeded, stratified sample a reference names.

    Args:
        ref: a validated reference (see :meth:`DatasetRef.parse`).
        roots: where paths may lead; :meth:`DataRoots.from_env` when None.
        num_classes: the model's class count; a dataset with more classes is refused.
        part: ``(i, k)``: only the i-th of k contiguous slices of the drawn sample is decoded and
            returned (the rule of :meth:`SampleSet.shards`, but a slice may be empty), so that
            k shards together hold the whole draw exactly once.

    Returns:
        a :class:`SampleSet` of float32 C x H x W images in [0, 1] at native resolution.

    Raises:
        DatasetError: bad reference, missing or corrupt files, labels out of range, more
            classes than the model (:class:`PathNotAllowedError` for a path outside the roots).
    """
    if not isinstance(ref, DatasetRef):
        raise TypeError(f"load_samples takes a DatasetRef (use DatasetRef.parse), got {type(ref).__name__}")
    roots = roots if roots is not None else DataRoots.from_env()
    source = SOURCES[ref.kind](ref, roots)
    catalog = source.catalog()
    _check_catalog(catalog, num_classes)
    listed = None
    if ref.label_sets is not None:
        if catalog.label_sets is not None:
            raise DatasetError("the npz archive carries 'label_sets' and the reference names a label_sets file "
                               "as well: give the label sets once", key="label_sets")
        ids = {source.item_id(i): i for i in range(int(catalog.labels.numel()))}
        listed = read_label_sets_file(ref.label_sets, roots, item_ids=ids, class_names=catalog.class_names)
    wanted = resolve_classes(ref.classes, catalog.class_names)
    idx = stratified_indices(catalog.labels, ref.n_samples, ref.seed, classes=wanted)
    if part is not None:
        i, k = part
        if not 0 <= i < k:
            raise ValueError(f"part must be (i, k) with 0 <= i < k, got {part}")
        idx = idx[round(i * idx.numel() / k):round((i + 1) * idx.numel() / k)]
    positions = [int(i) for i in idx]
    labels = catalog.labels[idx].clone()
    images = unify_channels(source.fetch(positions))
    return SampleSet(images=images, labels=labels, ids=[source.item_id(i) for i in positions],
                     class_names=list(catalog.class_names), reference=ref.to_dict(),
                     label_sets=sample_label_sets(positions, labels, hot=catalog.label_sets, listed=listed))


def check_reference_paths(ref: DatasetRef, roots: DataRoots, *, where: str = "dataset") -> None:
    """Every path a reference names (``path``, ``root``, ``label_sets``) resolves to something that exists
    inside the data roots; nothing is read. ``where`` prefixes the message of a reference other than
    the audit's own (``suites.shift.dataset``)."""
    for path in (ref.path, ref.root, ref.label_sets):
        if path is None:
            continue
        try:
            roots.resolve(path)
        except DatasetError as exc:
            if where == "dataset":
                raise
            raise type(exc)(f"{where}: {exc.message}", **{**exc.details, "field": where}) from None


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
