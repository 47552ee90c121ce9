"""Grad-CAM (Selvaraju et al., ICCV 2017) of a classifier at one spatial layer.

For activations A (K maps of h x w) and the class score y (a logit): weights α_k = mean over the
map of ∂y/∂A_k, map = ReLU(Σ_k α_k A_k), upsampled bilinearly to the input size.

Where A comes from, in order:

1. the card's ``gradcam_layer``: that module's output, by a forward hook;
2. the last module whose output is 4-D with more than one spatial position, by forward hooks
   on every submodule (a container finishes after its children, so ``layer4`` of a ResNet, not
   its global pooling, whose output is 1 x 1);
3. TorchScript and ``torch.export`` programs have no hookable layers (``register_forward_hook``
   raises on a ScriptModule; an exported graph calls no submodules): the last spatial 4-D tensor
   that autograd saves during the forward pass and that lies behind at least one convolution or
   matrix product (so never the normalised input itself), through saved-tensor hooks.

A model with none of these (an MLP, a ViT once it has made tokens) has no spatial layer:
:class:`NoSpatialLayer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F

from .classifier import Classifier
from .errors import ModelCardError

#: autograd nodes that count as a layer between the input and a candidate tensor
LAYER_NODES = frozenset({"ConvolutionBackward0", "AddmmBackward0", "MmBackward0", "BmmBackward0"})


class LayerSource(StrEnum):
    CARD = "card"
    HOOKS = "hooks"
    AUTOGRAD = "autograd"


@dataclass(frozen=True)
class CamLayer:
    """Which activations the map was computed from: a module name, or an autograd node's name."""

    source: LayerSource
    name: str

    def describe(self) -> str:
        if self.source is LayerSource.CARD:
            return f"{self.name} (named by the model card)"
        if self.source is LayerSource.HOOKS:
            return f"{self.name} (the last module with a spatial 4-D output)"
        return (f"the output of {self.name.removesuffix('Backward0')} (the last spatial 4-D tensor autograd keeps: "
                "no module with a spatial output could be hooked)")


class NoSpatialLayer(Exception):
    """The model has no 4-D activation with more than one spatial position to compute Grad-CAM at."""


def _spatial(t: Any) -> bool:
    return (isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_floating_point() and t.requires_grad
            and t.shape[-1] * t.shape[-2] > 1)


def hookable(model: torch.nn.Module) -> bool:
    """Forward hooks fire on it (``register_forward_hook`` raises on a TorchScript module)."""
    return not isinstance(model, torch.jit.ScriptModule)


def check_layer(clf: Classifier) -> None:
    """The card's ``gradcam_layer`` names a module of this model that can be hooked (ModelCardError otherwise)."""
    name = clf.card.gradcam_layer
    if name is None:
        return
    modules = dict(clf.model.named_modules()) if hookable(clf.model) else {}
    if not hookable(clf.model) or (name in modules and not hookable(modules[name])):
        raise ModelCardError(f"model card 'gradcam_layer' {name!r}: a TorchScript program's modules cannot be hooked; "
                             "leave it out (the last spatial layer is found through autograd)")
    if name not in modules or name == "":
        raise ModelCardError(f"model card 'gradcam_layer' {name!r} is not a module of this model",
                             layer=name[:80])


def _behind_a_layer(t: torch.Tensor, leaf: torch.Tensor) -> bool:
    """``t`` reaches the input only through a convolution or matrix product on every path."""
    stack, seen = [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if getattr(node, "variable", None) is leaf:
            return False
        if node.name() in LAYER_NODES:
            continue
        stack.extend(nxt for nxt, _ in node.next_functions)
    return True


def _forward(clf: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, CamLayer]:
    """Logits of ``x`` (requires grad) and the activations Grad-CAM uses, with where they came from."""
    named = clf.card.gradcam_layer
    caught: list[tuple[str, torch.Tensor]] = []
    handles = []
    if hookable(clf.model):
        modules = {k: m for k, m in clf.model.named_modules() if hookable(m)}  # not inside a TorchScript part
        chosen = {named: modules[named]} if named is not None else {k: m for k, m in modules.items() if k}

        def hook(name: str) -> Any:
            def record(module: torch.nn.Module, args: Any, out: Any) -> None:
                if _spatial(out):
                    caught.append((name, out))
            return record

        handles = [m.register_forward_hook(hook(k)) for k, m in chosen.items()]
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not caught and _spatial(t):
            saved.append(t)
        return t

    try:
        with torch.enable_grad(), torch.jit.optimized_execution(False), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = clf(x)
    finally:
        for h in handles:
            h.remove()
    if caught:
        name, acts = caught[-1]
        return logits, acts, CamLayer(LayerSource.CARD if named is not None else LayerSource.HOOKS, name)
    if named is not None:
        raise NoSpatialLayer(f"the card's gradcam_layer {named!r} has no 4-D output with more than one position")
    for t in reversed(saved):
        if t.grad_fn is not None and _behind_a_layer(t, x):
            return logits, t, CamLayer(LayerSource.AUTOGRAD, t.grad_fn.name())
    raise NoSpatialLayer("the model has no layer with a 4-D output of more than one spatial position")


def gradcam(clf: Classifier, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, CamLayer]:
    """Grad-CAM maps (B x H x W, float64, not normalised) of images ``x`` (B x C x H x W in [0, 1]) for
    the classes ``labels``, and the layer they come from. Raises :class:`NoSpatialLayer`."""
    leaf = x.detach().clone().requires_grad_(True)
    logits, acts, layer = _forward(clf, leaf)
    n = x.shape[0]
    score = logits[torch.arange(n, device=logits.device), labels.to(logits.device)].sum()
    (grads,) = torch.autograd.grad(score, acts, allow_unused=True)  # unused: the score ignores them, map 0
    grads = torch.zeros_like(acts) if grads is None else grads
    acts, grads = acts[:n].detach().double(), grads[:n].double()  # a fixed-batch program pads the batch
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * acts).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    return cam[:, 0], layer


def top_region(cam: torch.Tensor, fraction: float) -> torch.Tensor | None:
    """The ``round(fraction * H * W)`` pixels (at least one) where ``cam`` (H x W) is highest, as a
    bool mask (ties to the earlier pixel); None when the map is zero everywhere."""
    if not bool((cam > 0).any()):
        return None
    flat = cam.flatten()
    k = max(1, round(fraction * flat.numel()))
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order] = True
    return mask.view_as(cam)


def region_share(fraction: float, height: int, width: int) -> float:
    """The share of pixels :func:`top_region` selects: the overlap of an evenly spread perturbation."""
    return max(1, round(fraction * height * width)) / (height * width)


def energy_share(delta: torch.Tensor, region: torch.Tensor) -> float | None:
    """Share of the L2 energy of ``delta`` (C x H x W; squares summed over channels) inside ``region``."""
    energy = delta.double().pow(2).sum(dim=0)
    total = float(energy.sum())
    return float(energy[region].sum()) / total if total > 0 else None
