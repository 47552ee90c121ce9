"""Label sets: the classes valid for each item, for multi-label-aware accuracy (ImageNet ReaL style).

Two sources, both in the dataset's own class space (the index space of its ``labels``, mapped to
the model's classes by name with the labels, see ``runner.align_labels``):

* an npz archive's optional ``label_sets`` array, N x number of classes, bool or uint8 multi-hot.
  A row with any class set must have the row's ``labels`` class set; an all-zero row is an item
  with no valid class;
* a JSON file named by the reference's ``label_sets``, for every kind:
  ``{"<item id>": [class index or class name, ...], ...}``, item ids as the report shows sample
  ids (``npz:17``, ``imagefolder:cat/001.png``, ``digits:1203``, ``CIFAR10:test:5``). An item the
  file does not list keeps its single label as its set; ``[]`` is an item with no valid class.

The file is confined to the data roots like every dataset path (symlinks resolved first), must be
a regular file, and is bounded in size and depth before it is parsed. Every problem is a
:class:`DatasetError` naming the file by the name the reference gave it, never a server path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import DatasetError
from ..jsonfile import read_json
from .roots import DataRoots

if TYPE_CHECKING:
    import numpy as np

#: a ReaL-style file for ImageNet's 50,000 validation images is about 1 MB
MAX_LABEL_SETS_BYTES = 32 * 1024 * 1024
#: ``{id: [class, ...]}`` is two levels deep
MAX_LABEL_SETS_DEPTH = 2
#: how many offending entries an error message quotes
_SHOWN = 5


def read_label_sets_file(shown: str, roots: DataRoots, *, item_ids: Mapping[str, int],
                         class_names: Sequence[str]) -> dict[int, tuple[int, ...]]:
    """Catalogue position -> sorted class indices of each item the file lists.

    Args:
        shown: the path as the reference names it (relative to a data root, or absolute inside one).
        roots: the data roots it must resolve into.
        item_ids: every item id of the dataset -> its catalogue position.
        class_names: the dataset's class names (index = class).

    Raises:
        PathNotAllowedError: the path (or a symlink on it) leads outside the data roots.
        DatasetError: missing, not a regular file, too large, not JSON of the expected shape, an
            unknown item id, a class index out of range or a name that is not a class.
    """
    real = roots.resolve(shown)
    if not real.is_file():  # a FIFO or a device would block or never end
        raise DatasetError(f"label_sets {shown!r} is not a regular file", path=shown)
    raw = read_json(real, what="label_sets file", error=DatasetError, max_depth=MAX_LABEL_SETS_DEPTH,
                    max_bytes=MAX_LABEL_SETS_BYTES)
    if not isinstance(raw, dict):
        raise DatasetError(f"label_sets {shown!r} must be a JSON object {{item id: [class, ...]}}, "
                           f"got {type(raw).__name__}", path=shown)
    unknown = [k for k in raw if k not in item_ids]
    if unknown:
        raise DatasetError(f"label_sets {shown!r} names {len(unknown)} item ids the dataset does not have, e.g. "
                           f"{[k[:80] for k in unknown[:_SHOWN]]}; ids are sample ids as a report shows them "
                           f"(e.g. {next(iter(item_ids), '')!r})", path=shown, unknown=len(unknown))
    index = {name: i for i, name in enumerate(class_names)}
    out: dict[int, tuple[int, ...]] = {}
    for key, entries in raw.items():
        out[item_ids[key]] = _classes(entries, index, len(class_names), where=f"label_sets {shown!r}, item {key!r}")
    return out


def _classes(entries: Any, index: Mapping[str, int], count: int, where: str) -> tuple[int, ...]:
    if not isinstance(entries, list):
        raise DatasetError(f"{where}: must be a list of class indices or names, got {type(entries).__name__}")
    found: list[int] = []
    for e in entries:
        if isinstance(e, int) and not isinstance(e, bool):
            if not 0 <= e < count:
                raise DatasetError(f"{where}: class index {e} is outside 0..{count - 1}")
            found.append(e)
        elif isinstance(e, str):
            if e not in index:
                raise DatasetError(f"{where}: {e[:80]!r} is not one of the dataset's classes "
                                   f"(e.g. {list(index)[:_SHOWN]})")
            found.append(index[e])
        else:
            raise DatasetError(f"{where}: entries must be class indices or names, got {e!r:.80}")
    if len(set(found)) != len(found):
        raise DatasetError(f"{where}: names a class twice")
    return tuple(sorted(found))


def multi_hot_sets(array: np.ndarray, labels: torch.Tensor, class_names: list[str], *, names_given: bool,
                   shown: str) -> tuple[torch.Tensor, list[str]]:
    """An npz archive's ``label_sets`` checked: (N x C bool tensor, class names).

    The width must equal the number of classes when the archive names them; without
    ``class_names`` it may be wider than the largest label, and the classes it adds are named by
    their index, like the others.
    """
    import numpy as np

    n = int(labels.numel())
    if array.ndim != 2 or array.shape[0] != n:
        raise DatasetError(f"npz {shown!r}: 'label_sets' must be N x number of classes with N = {n}, "
                           f"got shape {array.shape}", path=shown)
    width = int(array.shape[1])
    if names_given and width != len(class_names):
        raise DatasetError(f"npz {shown!r}: 'label_sets' has {width} columns but 'class_names' has "
                           f"{len(class_names)} classes", path=shown)
    if width < len(class_names):
        raise DatasetError(f"npz {shown!r}: 'label_sets' has {width} columns but the labels go up to "
                           f"{len(class_names) - 1}", path=shown)
    if array.dtype == np.bool_:
        hot = array
    elif array.dtype == np.uint8:
        if array.size and int(array.max()) > 1:
            raise DatasetError(f"npz {shown!r}: uint8 'label_sets' must hold 0 and 1 only "
                               f"(found {int(array.max())})", path=shown)
        hot = array.astype(np.bool_)
    else:
        raise DatasetError(f"npz {shown!r}: 'label_sets' must be bool or uint8 multi-hot, got {array.dtype}",
                           path=shown)
    sets = torch.from_numpy(np.ascontiguousarray(hot))
    own = sets[torch.arange(n), labels]
    missing = (sets.any(dim=1) & ~own).nonzero().flatten()
    if missing.numel():
        rows = missing[:_SHOWN].tolist()
        raise DatasetError(f"npz {shown!r}: in {missing.numel()} rows of 'label_sets' the row's own label is not "
                           f"set (rows {rows}); a non-empty set must contain the label", path=shown, rows=rows)
    names = class_names if names_given else [str(i) for i in range(width)]
    return sets, names


def sample_label_sets(positions: Sequence[int], labels: torch.Tensor, *, hot: torch.Tensor | None,
                      listed: Mapping[int, tuple[int, ...]] | None) -> list[tuple[int, ...]] | None:
    """The label set of each drawn item (catalogue ``positions``, ``labels`` their labels).

    ``hot``: the archive's multi-hot rows; ``listed``: the file's sets (an item it does not list
    keeps its own label). None when the dataset has neither.
    """
    if hot is not None:
        return [tuple(int(c) for c in hot[p].nonzero().flatten().tolist()) for p in positions]
    if listed is not None:
        return [listed.get(p, (int(y),)) for p, y in zip(positions, labels.tolist())]
    return None
