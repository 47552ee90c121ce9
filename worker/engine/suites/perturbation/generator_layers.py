"""Generator-layer feature perturbations (Dunn, Hanu, Pouget, Kroening, Melham, 2020).

For one generator layer at a time, the activations a_l of G(z, y) get a_l + s_l * p, where
s_l is the per-unit spread of the layer over a seeded reference batch (so that budgets are
comparable across layers) and p is found by Adam on the margin loss
``max(z_y - max_{j != y} z_j + kappa, 0)`` under ``||p||_2 <= eps``. Early layers carry
coarse features (shape, position), late ones fine features (texture, stroke).

Two budgets: a fixed eps (success rate at that budget), or an eps that grows each step
until the model changes its mind (the eps at success is the seed's robustness score).
Success is always read from a forward pass of the projected perturbation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F

from ...card import ModelCard
from ...classifier import Classifier
from ...generators import GeneratorError, LoadedGenerator
from ...generators.hooks import perturb, record
from ...samples import match_channels


class Spread(StrEnum):
    """How the per-unit scale s_l is estimated on the reference batch."""

    STD = "std"
    RANGE = "range"


@dataclass(frozen=True)
class AttackSettings:
    """The optimisation of p.

    Args:
        steps: Adam steps per fixed budget.
        lr: Adam's learning rate on p.
        kappa: margin the loss asks for beyond the decision boundary.
        eps_growth: growing mode's budget increase per step (its steps: ceil(max_eps / eps_growth)).
        max_eps: growing mode's largest budget.
    """

    steps: int
    lr: float
    kappa: float
    eps_growth: float
    max_eps: float


class OutputFit:
    """Brings generator images to the model's input: channel count (grey <-> RGB) and, when
    allowed, the spatial size (bilinear, antialiased)."""

    def __init__(self, output_size: tuple[int, int, int], card: ModelCard, *, resize: bool) -> None:
        c, h, w = output_size
        mc, mh, mw = card.input_size
        if c != mc and {c, mc} != {1, 3}:
            raise GeneratorError(f"the generator makes {c}-channel images but the model takes {mc} channels")
        if (h, w) != (mh, mw) and not resize:
            raise GeneratorError(f"the generator makes {h}x{w} images but the model takes {mh}x{mw}: use a "
                                 "generator of the model's input size, or set resize_output to true")
        self.channels, self.size = mc, (mh, mw)
        self.resize = (h, w) != (mh, mw)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = match_channels(images, self.channels)
        if self.resize:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x.clamp(0, 1)


def layer_spreads(gen: LoadedGenerator, layers: list[str], *, batch: int, kind: Spread,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-unit spread of each layer's activations over a seeded reference batch (classes cycled)."""
    z = gen.sample_latents(batch, generator)
    classes = max(1, gen.card.num_classes)
    y = (torch.arange(batch) % classes).to(gen.device)
    with torch.no_grad(), record(gen.model, layers, gen.card.layers) as acts:
        gen.model(z, y)
    out = {}
    for name in layers:
        a = acts[name].float()
        s = a.std(dim=0, unbiased=False) if kind is Spread.STD else a.amax(dim=0) - a.amin(dim=0)
        out[name] = s
    return out


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the best other logit (negative: misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return true - other


@dataclass
class LayerRun:
    """Outcome of one budget schedule on a batch of seeds.

    Args:
        success: per seed, whether some projected perturbation flipped the label.
        eps: per seed, the budget in force at the first success (nan: never).
        images: per seed, the image at the first success (the clean image where none).
        preds: per seed, the model's class for ``images``.
    """

    success: torch.Tensor
    eps: torch.Tensor
    images: torch.Tensor
    preds: torch.Tensor


def attack(gen: LoadedGenerator, clf: Classifier, fit: OutputFit, layer: str, z: torch.Tensor, y_gen: torch.Tensor,
           y_model: torch.Tensor, spread: torch.Tensor, budget: Callable[[int], float], steps: int,
           settings: AttackSettings) -> LayerRun:
    """Adam on p with ``||p||_2 <= budget(t)`` at step t; stop once every seed has flipped."""
    n = z.shape[0]
    dev = clf.device
    p = torch.zeros((n, *spread.shape), device=dev, requires_grad=True)
    opt = torch.optim.Adam([p], lr=settings.lr)
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    eps_at = torch.full((n,), math.nan, device=dev)
    images: torch.Tensor | None = None
    preds = torch.zeros(n, dtype=torch.long, device=dev)
    with perturb(gen.model, layer, gen.card.layers) as shift:
        for t in range(steps + 1):
            eps = budget(t)
            with torch.no_grad():
                norms = p.flatten(1).norm(dim=1).clamp_min(1e-12)
                p.mul_((eps / norms).clamp(max=1.0).view(n, *([1] * spread.ndim)))
            shift.delta = spread * p
            x = fit(gen.model(z, y_gen))
            logits = clf(x)
            m = margins(logits, y_model)
            with torch.no_grad():
                if images is None:
                    images = x.detach().clone()
                    preds = logits.argmax(1)
                new = (m < 0) & ~done
                eps_at[new] = eps
                images[new] = x.detach()[new]
                preds[new] = logits.argmax(1)[new]
                done |= new
            if t == steps or bool(done.all()):
                break
            loss = ((m + settings.kappa).clamp_min(0) * (~done).to(m.dtype)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        shift.delta = None
    assert images is not None
    return LayerRun(success=done.cpu(), eps=eps_at.cpu(), images=images.cpu(), preds=preds.cpu())


def fixed_budget(eps: float) -> Callable[[int], float]:
    return lambda t: eps


def growing_budget(settings: AttackSettings) -> tuple[Callable[[int], float], int]:
    """eps_t = min(max_eps, growth * (t + 1)) and the number of steps to reach max_eps."""
    steps = math.ceil(settings.max_eps / settings.eps_growth - 1e-9)
    return (lambda t: min(settings.max_eps, settings.eps_growth * (t + 1))), steps
