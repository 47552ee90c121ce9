"""Fast gradient sign method (Goodfellow et al. 2015); its L2 form is the fast gradient method."""

from __future__ import annotations

import torch

from ..errors import SpecError
from ..params import Param, ParamKind, ParamSchema
from .base import Attack, Model, RunOutput
from .losses import Loss
from .rng import RandomSource


class FGSM(Attack):
    """One step of size eps along the sign (L-inf) or the normalised gradient (L2).

    Args:
        norm: "linf" or "l2".
        loss: "ce" (default) or "margin".
    """

    name = "fgsm"
    strength = 1
    params = ParamSchema((
        Param("loss", ParamKind.CHOICE, "ce", "loss whose gradient sign is followed",
              choices=tuple(x.value for x in Loss)),
    ))

    def __init__(self, *, norm: str = "linf", loss: Loss | str = "ce") -> None:
        super().__init__(norm=norm)
        try:
            self.loss = Loss(loss)
        except ValueError:
            raise SpecError(f"fgsm: unknown loss {loss!r}; use one of {[x.value for x in Loss]}") from None

    def run(self, model: Model, inputs: torch.Tensor, labels: torch.Tensor, eps: float | None, *,
            targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> RunOutput:
        assert eps is not None
        x = inputs.clone().requires_grad_(True)
        loss = self.loss(model(x), labels, targeted=targeted).sum()
        (grad,) = torch.autograd.grad(loss, x)
        if mask is not None:
            grad = grad * mask
        return RunOutput(inputs + self.norm.ops.step(grad, eps))
