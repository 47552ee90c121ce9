"""Multi-label-aware accuracy of the clean suite (after Anzaku et al., arXiv 2412.18409; ImageNet ReaL).

With a set of valid classes per image (``SampleSet.label_sets``):

* ``multilabel.top1``: the top-1 class is in the image's set; images whose set is empty (no
  valid class) are left out, and counted in ``multilabel.empty_sets``;
* ``multilabel.variable_topk``: with k = the size of the image's set, the share of the set
  found among the k most probable classes, averaged over the images with a non-empty set;
* ``multilabel.images_with_several``: the share of all sampled images whose set holds more
  than one class.

The per-sample values are computed in the shard (:func:`multilabel_records`), the aggregates
once in finalize (:func:`multilabel_metrics`) with exactly rounded sums, as for the rest of clean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..metrics import Unit, metric, proportion

#: the clean suite's multi-label metric paths (present when the dataset carries label sets)
MULTILABEL_PATHS = ("multilabel.top1", "multilabel.variable_topk", "multilabel.images_with_several",
                    "multilabel.empty_sets")


def multilabel_records(probs: torch.Tensor, pred: torch.Tensor,
                       label_sets: Sequence[tuple[int, ...]]) -> list[dict[str, Any]]:
    """Per sample: its set, whether the top-1 class is in it, and the share of it in the top-|set|.

    Ranks come from a stable descending sort of the probabilities (ties: the lower class index
    ranks first), so a sample's numbers never depend on the batch it ran in. An empty set gives
    ``None`` for both outcomes.
    """
    order = torch.sort(probs, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(probs.shape[1], device=probs.device).expand_as(order).contiguous())
    rank_rows = rank.tolist()
    out: list[dict[str, Any]] = []
    for p, ranks, classes in zip(pred.tolist(), rank_rows, label_sets):
        if not classes:
            out.append({"label_set": [], "ml_top1": None, "ml_found": None})
            continue
        k = len(classes)
        found = sum(1 for c in classes if ranks[c] < k)
        out.append({"label_set": list(classes), "ml_top1": p in classes, "ml_found": found / k})
    return out


def multilabel_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``multilabel`` subtree of clean's metrics from the merged per-sample records."""
    n = len(records)
    valid = [r for r in records if r["label_set"]]
    empty = n - len(valid)
    several = sum(1 for r in records if len(r["label_set"]) > 1)
    top1 = math.fsum(float(r["ml_top1"]) for r in valid) / len(valid) if valid else None
    found = math.fsum(r["ml_found"] for r in valid) / len(valid) if valid else None
    return {
        "top1": proportion(top1, len(valid), "multi-label top-1 accuracy: the top-1 class is one of the image's "
                           "valid classes (images with an empty set left out)", better="higher"),
        "variable_topk": metric(found, Unit.FRACTION, len(valid), "variable top-k: with k = the number of the "
                                "image's valid classes, the share of them among its k most probable classes, "
                                "averaged over images (empty sets left out)", better="higher"),
        "images_with_several": proportion(several / n if n else None, n, "share of the images whose set holds "
                                          "more than one valid class", better="neither"),
        "empty_sets": metric(empty, Unit.COUNT, n, "images whose set holds no valid class: left out of "
                             "multilabel.top1 and multilabel.variable_topk", better="neither"),
    }
