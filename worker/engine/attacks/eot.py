"""Expectation over transformation (Athalye, Carlini, Wagner 2018) for randomised models.

A model whose forward pass draws noise (dropout left on, random input transformations)
answers a single-pass attack with a random gradient and a random verdict: the attack is
weakened, and a lucky pass can count a sample as fooled (or robust). :class:`EoT` wraps the
model so that an attack sees the expectation: every call averages the logits of ``k`` draws,
so the attack's gradient is the gradient through the expected logits (k draws of the model's
randomness, one backward pass through all of them). :meth:`EoT.judge` then decides success
over ``m`` fresh passes: an adversarial counts only when it fools the model in a strict
majority of them.

Averaging logits rather than per-draw loss gradients keeps the wrapper a plain model (the
attack keeps its own loss); for the CE and margin losses the two agree to first order in the
spread of the draws.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import SpecError

Model = Callable[[torch.Tensor], torch.Tensor]


class EoT:
    """A model seen through ``grad_samples`` draws per call, judged over ``passes`` passes.

    Args:
        model: the randomised model (inputs in [0, 1], logits out).
        grad_samples: draws averaged per call (k); 1 is the model itself.
        passes: passes that judge success (m).

    Examples::

        eot = EoT(classifier, grad_samples=8, passes=9)
        result = PGD(norm="linf")(eot, x, y, [8 / 255])
        fooled, cls = eot.judge(result.adversarials[0], y)
    """

    def __init__(self, model: Model, *, grad_samples: int, passes: int) -> None:
        if grad_samples < 1 or passes < 1:
            raise SpecError("eot: grad_samples and passes must be >= 1")
        self.model = model
        self.grad_samples = grad_samples
        self.passes = passes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        for _ in range(self.grad_samples - 1):
            out = out + self.model(x)
        return out / self.grad_samples

    @torch.no_grad()
    def judge(self, x: torch.Tensor, labels: torch.Tensor, *, targeted: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: (fooled in a strict majority of ``passes`` single passes, the class the
        fooling passes chose most often; for a failure, the most frequent class overall)."""
        n = x.shape[0]
        rows = torch.arange(n, device=x.device)
        votes = torch.zeros(0)
        for p in range(self.passes):
            logits = self.model(x)
            if p == 0:
                votes = torch.zeros(logits.shape, dtype=torch.long, device=x.device)
            votes[rows, logits.argmax(dim=1)] += 1
        own = votes[rows, labels]
        hits = own if targeted else self.passes - own
        fooled = 2 * hits > self.passes
        chosen = votes.clone()
        if not targeted:
            chosen[rows, labels] = -1  # the class of the fooling passes
        pred = torch.where(fooled, chosen.argmax(dim=1), votes.argmax(dim=1))
        return fooled, pred
