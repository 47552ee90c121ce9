"""Adversarial attacks in plain PyTorch, one class per module on a shared base.

Pick an attack by name from :data:`ATTACKS`; every attack has the same call shape
``attack(model, inputs, labels, budgets, *, targeted=False)`` (see :mod:`.base`).
"""

from __future__ import annotations

from typing import Any

from ..errors import SpecError
from .base import Attack, AttackResult, RunOutput
from .cw import CarliniWagnerL2
from .fgsm import FGSM
from .fmn import FMN
from .iterative import IterativeLoss, Objective
from .losses import Loss, is_success, logit_margin
from .norms import Norm
from .pgd import PGD

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (FGSM, PGD, CarliniWagnerL2, FMN, IterativeLoss)}


def make_attack(name: str, **params: Any) -> Attack:
    """An attack from the registry; an unknown name is a SpecError listing the known ones."""
    cls = ATTACKS.get(name)
    if cls is None:
        raise SpecError(f"unknown attack {name!r}; available: {sorted(ATTACKS)}")
    return cls(**params)


__all__ = ["ATTACKS", "FGSM", "FMN", "PGD", "Attack", "AttackResult", "CarliniWagnerL2", "IterativeLoss", "Loss",
           "Norm", "Objective", "RunOutput", "is_success", "logit_margin", "make_attack"]
