"""Adversarial attacks in plain PyTorch, one class per module on a shared base.

Pick an attack by name from :data:`ATTACKS`; every attack has the same call shape
``attack(model, inputs, labels, budgets, *, targeted=False)`` (see :mod:`.base`).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from ..errors import SpecError
from .apgd import APGD, APGDDLR, APGDT
from .base import Attack, AttackResult, CostMeter, RunOutput
from .cw import CarliniWagnerL2
from .fab import FABT
from .fgsm import FGSM
from .fmn import FMN
from .iterative import IterativeLoss, Objective
from .losses import Loss, is_success, logit_margin
from .norms import Norm
from .pgd import PGD
from .square import Square

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (
    FGSM, PGD, CarliniWagnerL2, FMN, IterativeLoss, APGD, APGDDLR, APGDT, FABT, Square)}


def make_attack(name: str, *, norm: Norm | str | None = None, **params: Any) -> Attack:
    """An attack from the registry, its parameters validated by the class's schema (defaults
    filled in; all problems in one SpecError). An unknown name is a SpecError listing the known ones."""
    cls = ATTACKS.get(name)
    if cls is None:
        raise SpecError(f"unknown attack {name!r}; available: {sorted(ATTACKS)}")
    # enum members (Loss.CE) arrive from code; the schema speaks in their values
    raw = {k: v.value if isinstance(v, Enum) else v for k, v in params.items()}
    checked = cls.params.validate(raw, prefix=f"{name}.")
    return cls(**checked) if norm is None else cls(norm=norm, **checked)


__all__ = ["APGD", "APGDDLR", "APGDT", "ATTACKS", "FABT", "FGSM", "FMN", "PGD", "Attack", "AttackResult",
           "CarliniWagnerL2", "CostMeter", "IterativeLoss", "Loss", "Norm", "Objective", "RunOutput", "Square",
           "is_success", "logit_margin", "make_attack"]
