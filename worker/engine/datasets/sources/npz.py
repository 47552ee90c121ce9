"""``npz:<path>`` -- a NumPy archive with ``images``, ``labels`` and optional ``class_names``.

``images``: N x H x W or N x H x W x C (C in 1, 3), uint8 or float in [0, 1].
``labels``: N integers in [0, number of classes). ``class_names``: strings; without it the
classes are named "0".."max label". ``label_sets``: optional N x number-of-classes multi-hot
(bool or uint8) of the classes valid for each item (:mod:`..label_sets`). Read with
``allow_pickle=False``: object arrays are refused.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ...errors import DatasetError
from ..images import array_to_tensor
from ..label_sets import multi_hot_sets
from .base import Catalog, Source

if TYPE_CHECKING:
    import numpy as np


class NpzSource(Source):
    """``npz:<path>`` -- images and labels from a ``.npz`` archive."""

    def catalog(self) -> Catalog:
        shown = self.ref.path or ""
        path = self.roots.resolve(shown)
        import numpy as np

        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise DatasetError(f"{shown!r} is a single .npy array, not an .npz archive with "
                                   "'images' and 'labels'", path=shown)
            with loaded as archive:
                missing = [k for k in ("images", "labels") if k not in archive.files]
                if missing:
                    raise DatasetError(f"npz {shown!r} lacks arrays {missing} (it has {archive.files})",
                                       path=shown)
                images = archive["images"]
                labels = archive["labels"]
                names = archive["class_names"] if "class_names" in archive.files else None
                hot = archive["label_sets"] if "label_sets" in archive.files else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"npz {shown!r} cannot be read: {exc}", path=shown) from None
        self._images = _check_images(images, shown)
        label_t = _check_labels(labels, len(self._images), shown)
        class_names = _class_names(names, label_t, shown)
        if hot is None:
            return Catalog(labels=label_t, class_names=class_names)
        sets, class_names = multi_hot_sets(hot, label_t, class_names, names_given=names is not None, shown=shown)
        return Catalog(labels=label_t, class_names=class_names, label_sets=sets)

    def fetch(self, indices: Sequence[int]) -> list[torch.Tensor]:
        return [array_to_tensor(self._images[i], shown=self.item_id(i)) for i in indices]

    def item_id(self, index: int) -> str:
        return f"npz:{index}"


def _check_images(images: np.ndarray, shown: str) -> np.ndarray:
    import numpy as np

    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise DatasetError(f"npz {shown!r}: 'images' must be N x H x W or N x H x W x C with C in (1, 3), "
                           f"got shape {images.shape}", path=shown)
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind != "f":
        raise DatasetError(f"npz {shown!r}: 'images' must be uint8 or float in [0, 1], got {images.dtype}",
                           path=shown)
    if images.size and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 1):
        raise DatasetError(f"npz {shown!r}: float 'images' must lie in [0, 1] "
                           f"(min {np.nanmin(images):g}, max {np.nanmax(images):g})", path=shown)
    return images


def _check_labels(labels: np.ndarray, n: int, shown: str) -> torch.Tensor:
    import numpy as np

    if labels.dtype.kind not in "iu":
        raise DatasetError(f"npz {shown!r}: 'labels' must be integers, got {labels.dtype}", path=shown)
    if labels.shape != (n,):
        raise DatasetError(f"npz {shown!r}: 'labels' must have shape ({n},) to match 'images', "
                           f"got {labels.shape}", path=shown)
    if n == 0:
        raise DatasetError(f"npz {shown!r} holds no images", path=shown)
    if labels.min() < 0:
        raise DatasetError(f"npz {shown!r}: 'labels' has a negative label ({labels.min()})", path=shown)
    return torch.from_numpy(labels.astype(np.int64))


def _class_names(names: np.ndarray | None, labels: torch.Tensor, shown: str) -> list[str]:
    if names is None:
        return [str(i) for i in range(int(labels.max()) + 1)]
    if names.ndim != 1 or names.dtype.kind != "U":
        raise DatasetError(f"npz {shown!r}: 'class_names' must be a 1-D array of strings, "
                           f"got {names.dtype} {names.shape}", path=shown)
    out = [str(n) for n in names.tolist()]
    if len(set(out)) != len(out) or not all(out):
        raise DatasetError(f"npz {shown!r}: 'class_names' must be unique and non-empty", path=shown)
    return out
