"""The shared base of every attack: one call shape, and success that is never taken on trust.

``attack(model, inputs, labels, budgets)`` returns an :class:`AttackResult`: the adversarial
inputs per budget and a budgets x samples success matrix. Subclasses implement
:meth:`Attack.run`; the base's :meth:`Attack.__call__` then clips to [0, 1], projects onto
the budget's ball (and the mask, when one is given) and re-checks success with a fresh
forward pass. Budgets are processed in increasing order and only samples that are still
robust are attacked again, because an adversarial inside a small ball is inside every
larger one.

Every call also measures its cost: the base wraps the model in a :class:`CostMeter` that
counts the samples (rows) of each forward pass and of each backward pass through the model's
outputs, and times the call; :class:`AttackResult` carries the totals.

Hooks meant for later parts (regional masks, loss comparison): ``mask`` restricts the
perturbation to a binary mask (N or 1 x 1 x H x W); ``RunOutput.first_success`` records the
iteration at which an iterative attack first succeeded for each sample.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import SpecError
from ..params import ParamSchema
from .losses import is_success
from .norms import Norm
from .rng import RandomSource, SampleSeeds, salted, sample_seed, subset

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RunOutput:
    """What :meth:`Attack.run` returns: candidates, not yet checked.

    Args:
        adversarials: N x C x H x W candidate images.
        first_success: per sample, the iteration at which the attack saw success (-1: never);
            None for attacks that do not iterate.
        last_iteration: the iteration of a final iterate the attack returns unchecked; a
            sample the base's re-check finds adversarial with ``first_success`` -1 gets it.
    """

    adversarials: torch.Tensor
    first_success: torch.Tensor | None = None
    last_iteration: int | None = None

    def first_iterations(self, verified: torch.Tensor) -> torch.Tensor | None:
        """First-success iterations, filled in for successes found only by the re-check."""
        if self.first_success is None:
            return None
        it = self.first_success.to(verified.device).clone()
        if self.last_iteration is not None:
            it[(it < 0) & verified] = self.last_iteration
        return it


@dataclass
class AttackResult:
    """Verified outcome of an attack over a list of budgets.

    Args:
        budgets: the budgets, in the order the caller gave them.
        adversarials: per budget, N images: the verified adversarial where the attack
            succeeded, the clean input elsewhere.
        success: bool, budgets x N; re-checked on the clipped, projected images. A sample the
            clean input already fools is not attacked and counts as a success (iteration 0).
        predictions: long, budgets x N; the model's class for the returned images.
        first_success: long, budgets x N (-1 where unknown or failed), when the attack iterates.
        minimal_norms: for budget-free (minimum-norm) attacks, the norm of each verified
            adversarial before any projection (inf where none was found); else None.
        forward_samples, backward_samples: the attack's cost, in samples through the model:
            rows of every forward pass (the base's re-checks included) and of every backward
            pass through the model's outputs.
        seconds: wall time of the call.
    """

    budgets: list[float]
    adversarials: list[torch.Tensor]
    success: torch.Tensor
    predictions: torch.Tensor
    first_success: torch.Tensor | None = None
    minimal_norms: torch.Tensor | None = None
    forward_samples: int = 0
    backward_samples: int = 0
    seconds: float = 0.0

    def robust_accuracy(self) -> torch.Tensor:
        """Share of samples the attack failed on, per budget."""
        return 1.0 - self.success.double().mean(dim=1)


class CostMeter:
    """A model wrapper that counts rows of forward and backward passes.

    A backward pass is counted by a hook on the output tensor, so it is counted once per
    gradient that flows back through the model, whatever the loss did with the logits.

    Args:
        model: the model to measure.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.forward_samples = 0
        self.backward_samples = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        rows = int(x.shape[0])
        self.forward_samples += rows
        if out.requires_grad:
            out.register_hook(self._on_backward(rows))
        return out

    def _on_backward(self, rows: int) -> Callable[[torch.Tensor], None]:
        def hook(_grad: torch.Tensor) -> None:
            self.backward_samples += rows
        return hook


class Attack(ABC):
    """Base of all attacks.

    Args:
        norm: the threat model ("linf" or "l2"); must be one the attack supports.
        early_exit: attack a larger budget only on samples still robust at the smaller ones
            (False attacks every sample at every budget: the fixed-cost baseline).
    """

    name: ClassVar[str]
    supported_norms: ClassVar[frozenset[Norm]] = frozenset(Norm)
    #: run once without a budget and evaluate the result at every budget (minimum-norm attacks)
    budget_free: ClassVar[bool] = False
    #: the keyword-only constructor arguments (all but ``norm``), with defaults and bounds;
    #: ``make_attack`` validates through it and the suites build their schemas from it
    params: ClassVar[ParamSchema] = ParamSchema()
    #: reads only the model's outputs (no gradients): immune to masked gradients
    gradient_free: ClassVar[bool] = False
    #: rough order of strength among gradient attacks of one norm (0: unranked); a stronger
    #: attack succeeding on fewer samples than a weaker one is a sanity flag
    strength: ClassVar[int] = 0

    def __init__(self, *, norm: Norm | str, early_exit: bool = True) -> None:
        self.early_exit = early_exit
        try:
            self.norm = Norm(norm)
        except ValueError:
            raise SpecError(f"unknown norm {norm!r}; use one of {[n.value for n in Norm]}") from None
        if self.norm not in self.supported_norms:
            raise SpecError(f"attack {self.name!r} does not support the {self.norm.value} norm; it supports "
                            f"{sorted(n.value for n in self.supported_norms)}")

    @abstractmethod
    def run(self, model: Model, inputs: torch.Tensor, labels: torch.Tensor, eps: float | None, *,
            targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> RunOutput:
        """Candidate adversarials for one budget (``eps`` None for budget-free attacks)."""

    # -- the one call shape -----------------------------------------------------------------
    def __call__(self, model: Model, inputs: torch.Tensor, labels: torch.Tensor, budgets: Sequence[float], *,
                 targeted: bool = False, mask: torch.Tensor | None = None,
                 rng: RandomSource = None) -> AttackResult:
        """Attack ``inputs`` (N x C x H x W in [0, 1]) at every budget; ``labels`` are the true
        classes, or the target classes when ``targeted``."""
        budgets = _check_call(inputs, labels, budgets, self.budget_free)
        inputs = inputs.detach()
        if mask is not None:
            mask = mask.to(inputs.dtype)
        meter = CostMeter(model)
        start = time.perf_counter()
        if self.budget_free:
            res = self._call_budget_free(meter, inputs, labels, budgets, targeted, mask, rng)
        else:
            res = self._call_per_budget(meter, inputs, labels, budgets, targeted, mask, rng)
        res.forward_samples, res.backward_samples = meter.forward_samples, meter.backward_samples
        res.seconds = time.perf_counter() - start
        return res

    def _call_per_budget(self, model: Model, x: torch.Tensor, y: torch.Tensor, budgets: list[float],
                         targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> AttackResult:
        n, nb = x.shape[0], len(budgets)
        order = sorted(range(nb), key=lambda i: budgets[i])
        # Samples the clean image already fools are not attacked: the clean image is returned.
        done, clean_pred = _verify(model, x, y, targeted)
        success = done.expand(nb, n).clone()
        preds = clean_pred.expand(nb, n).clone()
        first = torch.where(done, 0, -1).expand(nb, n).clone()
        advs = [x.clone() for _ in range(nb)]
        prev: int | None = None
        for b in order:
            eps = budgets[b]
            if prev is not None:  # carry what already succeeded inside a smaller ball
                advs[b][done] = advs[prev][done]
                preds[b] = preds[prev]
                success[b] = success[prev]
                first[b] = first[prev]
            todo = (~done if self.early_exit else torch.ones_like(done)).nonzero().squeeze(1)
            if todo.numel():
                xs, ys = x[todo], y[todo]
                ms = _select(mask, todo)
                out = self.run(model, xs, ys, eps, targeted=targeted, mask=ms,
                               rng=salted(subset(rng, todo), 1000 + b))
                adv = self.constrain(xs, out.adversarials, eps, ms)
                ok, pred = _verify(model, adv, ys, targeted)
                ok &= ~done[todo]  # (fixed-cost mode) keep what a smaller budget already found
                hit = todo[ok]
                advs[b][hit] = adv[ok]
                preds[b, hit] = pred[ok]
                success[b, hit] = True
                its = out.first_iterations(ok)
                if its is not None:
                    first[b, hit] = its[ok]
                done[hit] = True
            prev = b
        return AttackResult(list(budgets), advs, success, preds, first)

    def _call_budget_free(self, model: Model, x: torch.Tensor, y: torch.Tensor, budgets: list[float],
                          targeted: bool, mask: torch.Tensor | None, rng: RandomSource) -> AttackResult:
        nb, n = len(budgets), x.shape[0]
        clean_ok, clean_pred = _verify(model, x, y, targeted)
        raw = x.clone()
        ok = clean_ok.clone()
        pred = clean_pred.clone()
        first_all = torch.where(clean_ok, 0, -1)
        todo = (~clean_ok).nonzero().squeeze(1)
        if todo.numel():
            ms = _select(mask, todo)
            out = self.run(model, x[todo], y[todo], None, targeted=targeted, mask=ms, rng=subset(rng, todo))
            cand = self.constrain(x[todo], out.adversarials, None, ms)
            ok_t, pred_t = _verify(model, cand, y[todo], targeted)
            hit = todo[ok_t]
            raw[hit] = cand[ok_t]
            ok[hit] = True
            pred[hit] = pred_t[ok_t]
            its = out.first_iterations(ok_t)
            if its is not None:
                first_all[hit] = its[ok_t]
        norms = torch.where(ok, self.norm.ops.measure(raw - x), torch.full_like(x[:, 0, 0, 0], math.inf))
        success = torch.zeros(nb, n, dtype=torch.bool, device=x.device)
        preds = clean_pred.expand(nb, n).clone()
        first = torch.full((nb, n), -1, dtype=torch.long, device=x.device)
        advs = []
        for b, eps in enumerate(budgets):
            adv = x.clone()
            inside = ok & (norms <= eps)
            adv[inside] = raw[inside]
            preds[b, inside] = pred[inside]
            success[b] = inside
            # Outside the ball: project the candidate in and check again; it may still succeed.
            rest = (ok & ~inside).nonzero().squeeze(1)
            if rest.numel():
                cand = self.constrain(x[rest], raw[rest], eps, _select(mask, rest))
                ok2, pred2 = _verify(model, cand, y[rest], targeted)
                adv[rest[ok2]] = cand[ok2]
                success[b, rest[ok2]] = True
                preds[b, rest[ok2]] = pred2[ok2]
            first[b, success[b]] = first_all[success[b]]
            advs.append(adv)
        return AttackResult(list(budgets), advs, success, preds, first, minimal_norms=norms)

    def constrain(self, inputs: torch.Tensor, candidates: torch.Tensor, eps: float | None,
                  mask: torch.Tensor | None) -> torch.Tensor:
        """Mask, project onto the eps ball and clip to [0, 1] (clipping only shrinks the norm)."""
        delta = candidates.detach().to(inputs.dtype) - inputs
        if mask is not None:
            delta = delta * mask
        if eps is not None:
            delta = self.norm.ops.project(delta, eps)
        return (inputs + delta).clamp(0.0, 1.0)


def _select(mask: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    if mask is None or mask.shape[0] == 1:
        return mask
    return mask[idx]


@torch.no_grad()
def _predict(model: Model, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1)


@torch.no_grad()
def _verify(model: Model, adv: torch.Tensor, labels: torch.Tensor, targeted: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh forward pass on the final images: (success, predicted class)."""
    logits = model(adv)
    return is_success(logits, labels, targeted=targeted), logits.argmax(dim=1)


def _check_call(inputs: torch.Tensor, labels: torch.Tensor, budgets: Sequence[float], budget_free: bool
                ) -> list[float]:
    if inputs.dim() != 4:
        raise SpecError(f"attack inputs must be N x C x H x W, got shape {tuple(inputs.shape)}")
    if labels.dim() != 1 or labels.shape[0] != inputs.shape[0]:
        raise SpecError(f"expected {inputs.shape[0]} labels, got shape {tuple(labels.shape)}")
    out = [float(b) for b in budgets]
    if not out and not budget_free:
        raise SpecError("give at least one budget (epsilon)")
    bad = [b for b in out if not (math.isfinite(b) and b > 0)]
    if bad:
        raise SpecError(f"budgets must be finite and > 0, got {bad}")
    if len(set(out)) != len(out):
        raise SpecError(f"budgets must not repeat, got {out}")
    return out


def keep_rows(keep: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Drop finished samples from every per-sample tensor of an attack's state at once
    (``keep``: a bool mask or indices). Masks go through :func:`select_mask`."""
    return [t[keep] for t in tensors]


def select_mask(mask: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
    """The rows of a perturbation mask for the kept samples (a mask shared by the batch stays)."""
    return _select(mask, keep)


def row_streams(source: RandomSource, salts: Sequence[int]) -> RandomSource:
    """Streams for rows = samples x salts (sample-major), row (i, j) getting exactly the stream
    ``salted(source, salts[j])`` gives sample i: batching targets or restarts into one batch
    leaves every row's randomness as it was in turn-by-turn runs (a shared generator is kept)."""
    if not isinstance(source, SampleSeeds):
        return source
    return SampleSeeds([sample_seed(int(s), salt) for s in source.seeds for salt in salts])
