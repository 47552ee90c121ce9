"""Attack objectives. Every loss is per sample and is *maximised* by the attack.

Untargeted losses push away from the true label; targeted ones pull towards the target.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch
import torch.nn.functional as F


class Loss(str, Enum):
    """Objective of an iterative attack: cross-entropy or the logit margin (CW)."""

    CE = "ce"
    MARGIN = "margin"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, *, targeted: bool = False) -> torch.Tensor:
        return _LOSSES[(self, targeted)](logits, labels)


def logit_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_label minus the largest other logit: positive while ``labels`` is the prediction."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return true - other


_LOSSES: dict[tuple[Loss, bool], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    (Loss.CE, False): lambda z, y: F.cross_entropy(z, y, reduction="none"),
    (Loss.CE, True): lambda z, t: -F.cross_entropy(z, t, reduction="none"),
    (Loss.MARGIN, False): lambda z, y: -logit_margin(z, y),
    (Loss.MARGIN, True): logit_margin,
}


def is_success(logits: torch.Tensor, labels: torch.Tensor, *, targeted: bool) -> torch.Tensor:
    """Untargeted: the prediction is not the label; targeted: the prediction is the target."""
    pred = logits.argmax(dim=1)
    return pred.eq(labels) if targeted else pred.ne(labels)


def _sorted_desc(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest logit per sample (1-based), the smallest one when there are fewer classes."""
    top = logits.sort(dim=1, descending=True).values
    return top[:, min(k, logits.shape[1]) - 1]


def dlr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce and Hein 2020), untargeted, to maximise:
    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3). Invariant to shifting and scaling the logits,
    so a model cannot hide behind a saturated softmax."""
    scale = _sorted_desc(logits, 1) - _sorted_desc(logits, 3) + 1e-12
    return -logit_margin(logits, labels) / scale


def dlr_targeted(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, to maximise: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    scale = _sorted_desc(logits, 1) - (_sorted_desc(logits, 3) + _sorted_desc(logits, 4)) / 2 + 1e-12
    return -(true - target) / scale
