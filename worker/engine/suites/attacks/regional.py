"""Part 2e: regional perturbations (Ozbulak et al. 2020).

The unbounded iterative attack runs once on the whole image and once per mask (centred
square, border frame, seeded random pixels, each at the requested pixel shares), untargeted
and at one seeded target per image. Per mask: success rate and the L0, L2 and L-inf of the
successful perturbations, beside the full-image attack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...attacks import IterativeLoss, Norm
from ...attacks.masks import MaskShape, fraction, make_mask
from ...classifier import Classifier
from ...metrics import Unit, metric
from .common import Record
from .iterative_runs import outcome_metrics, run_iterative, thumbnail
from .params import fraction_key
from .targeted import targets_for

FULL = "full"
MODES = {False: "untargeted", True: "targeted"}
#: salt of the shared random pixel masks (ctx.generator(salt) is the same in every shard)
MASK_SALT = 2_005


def mask_keys(params: dict[str, Any]) -> list[tuple[str, str]]:
    """(shape, fraction key) of every mask, in request order."""
    return [(s, fraction_key(f)) for s in params["regional_shapes"] for f in params["regional_fractions"]]


def build_masks(params: dict[str, Any], height: int, width: int, generator: Callable[[int], torch.Generator]
                ) -> dict[tuple[str, str], torch.Tensor]:
    """Every requested mask (bool H x W); SpecError for one that selects no pixel."""
    out = {}
    for i, shape in enumerate(params["regional_shapes"]):
        for j, f in enumerate(params["regional_fractions"]):
            gen = generator(MASK_SALT + 100 * i + j) if MaskShape(shape) is MaskShape.RANDOM else None
            out[(shape, fraction_key(f))] = make_mask(shape, height=height, width=width, fraction=f, generator=gen)
    return out


def run_regional(clf: Classifier, x: torch.Tensor, y: torch.Tensor, ids: list[str], attacked: torch.Tensor,
                 params: dict[str, Any], seed: int, masks: dict[tuple[str, str], torch.Tensor],
                 progress: Callable[[float], None]) -> dict[str, Record]:
    """Per attacked sample and mode: the full-image record and one record per mask."""
    idx = attacked.nonzero().squeeze(1)
    xs, ys = x[idx], y[idx]
    sids = [ids[int(i)] for i in idx]
    attack = IterativeLoss(norm=Norm.LINF, objective=params["regional_objective"], step_size=params["regional_step"],
                           steps=params["regional_steps"])
    modes = [False, True] if params["regional_targeted"] else [False]
    targets = torch.tensor([targets_for(seed, s, int(c), clf.num_classes, 1)[0] for s, c in zip(sids, ys.tolist())],
                           dtype=torch.long, device=x.device) if sids and clf.num_classes > 1 else ys
    jobs: list[tuple[bool, str, torch.Tensor | None]] = [(t, FULL, None) for t in modes]
    jobs += [(t, f"{s}/{k}", m) for t in modes for (s, k), m in masks.items()]
    out: dict[str, Record] = {s: {MODES[t]: {} for t in modes} for s in sids}
    # an example for the artifact: the shard's first attacked sample (finalize takes the smallest id)
    example: Record = {"image": thumbnail(xs[0]), "perturbation": {}} if sids else {}
    for n, (targeted, key, m) in enumerate(jobs):
        mask = None if m is None else m.to(x.device, x.dtype)[None, None]
        runs = run_iterative(clf, attack, xs, targets if targeted else ys, sids, targeted=targeted, mask=mask,
                             batch_size=params["batch_size"], seed=seed, salt=f"regional:{MODES[targeted]}:{key}",
                             keep_first=not targeted)
        if runs and "_adv" in runs[0]:
            example["perturbation"][key] = thumbnail(runs[0].pop("_adv") - xs[0])
        for sid, r in zip(sids, runs):
            out[sid][MODES[targeted]][key] = r
        progress((n + 1) / len(jobs))
    if sids:
        out[sids[0]]["example"] = example
    return out


def regional_metrics(records: list[Record], params: dict[str, Any], masks: dict[tuple[str, str], torch.Tensor]
                     ) -> dict[str, Any]:
    """regional.{mode}.{full | shape.fraction}.{success_rate, l0, l2, linf[, fraction]}"""
    cond = f"{params['regional_objective']}, step {params['regional_step']:g}, cap {params['regional_steps']}"
    out: dict[str, Any] = {}
    modes = ["untargeted", "targeted"] if params["regional_targeted"] else ["untargeted"]
    for mode in modes:
        runs = [r["regional"][mode] if r.get("regional") else None for r in records]
        part: dict[str, Any] = {FULL: outcome_metrics([r[FULL] if r else None for r in runs],
                                                      f"{mode}, whole image, {cond}")}
        for (shape, key), m in masks.items():
            leaf = outcome_metrics([r[f"{shape}/{key}"] if r else None for r in runs],
                                   f"{mode}, {shape} mask {key}, {cond}")
            leaf["fraction"] = metric(fraction(m), Unit.FRACTION, m.numel(),
                                      f"actual share of pixels in the {shape} mask (requested {key})")
            part.setdefault(shape, {})[key] = leaf
        out[mode] = part
    return out


def regional_paths(params: dict[str, Any]) -> list[str]:
    modes = ["untargeted", "targeted"] if params["regional_targeted"] else ["untargeted"]
    leaves = ("success_rate", "l0", "l2", "linf")
    paths = [f"regional.{m}.{FULL}.{v}" for m in modes for v in leaves]
    for m in modes:
        for shape, key in mask_keys(params):
            paths += [f"regional.{m}.{shape}.{key}.{v}" for v in (*leaves, "fraction")]
    return paths
