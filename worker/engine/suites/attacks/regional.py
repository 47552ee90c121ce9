"""Part 2e: regional perturbations (Ozbulak et al. 2020).

The unbounded iterative attack runs once on the whole image and once per mask (centred
square, border frame, seeded random pixels, each at the requested pixel shares), untargeted
and at one seeded target per image. Per mask: success rate and the L0, L2 and L-inf of the
successful perturbations, beside the full-image attack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ...attacks import IterativeLoss, Norm, Objective
from ...attacks.masks import MaskShape, fraction, make_mask
from ...classifier import Classifier
from ...metrics import Unit, metric
from ...params import Param, ParamKind, ParamSchema
from ...samples import SampleSet
from ..parts import Part, PartResult
from .common import Final, Record, Sample, Shard
from .iterative_runs import outcome_metrics, run_iterative, thumbnail
from .params import fraction_key
from .plots import mask_plot
from .targeted import targets_for

SCHEMA = ParamSchema((
    Param("enabled", ParamKind.BOOL, False, "run the regional-perturbation study (2e): the attack restricted "
          "to masks, beside the full-image attack"),
    Param("shapes", ParamKind.CHOICE_LIST, [m.value for m in MaskShape], "mask shapes: centred square, "
          "border frame, seeded random pixels", choices=tuple(m.value for m in MaskShape)),
    Param("fractions", ParamKind.FLOAT_LIST, [0.17, 0.28, 0.45], "requested share of pixels per mask "
          "(the report gives the actual share the pixel grid allows)", minimum=1e-6, maximum=1.0, max_items=8),
    Param("objective", ParamKind.CHOICE, Objective.SIGN_CE.value, "loss of the unbounded iterative "
          "regional attack", choices=tuple(o.value for o in Objective)),
    Param("step", ParamKind.FLOAT, 0.01, "regional attack step: largest per-pixel change per step",
          minimum=1e-6, maximum=1.0),
    Param("steps", ParamKind.INT, 50, "regional attack iteration cap", minimum=1, maximum=10_000),
    Param("targeted", ParamKind.BOOL, True, "also run the regional study targeted, at one seeded "
          "target class per image"),
))

FULL = "full"
MODES = {False: "untargeted", True: "targeted"}
#: salt of the shared random pixel masks (ctx.generator(salt) is the same in every shard)
MASK_SALT = 2_005


def mask_keys(own: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(shape, fraction key) of every mask, in request order."""
    return [(s, fraction_key(f)) for s in own["shapes"] for f in own["fractions"]]


def build_masks(own: Mapping[str, Any], height: int, width: int, generator: Callable[[int], torch.Generator]
                ) -> dict[tuple[str, str], torch.Tensor]:
    """Every requested mask (bool H x W); SpecError for one that selects no pixel."""
    out = {}
    for i, shape in enumerate(own["shapes"]):
        for j, f in enumerate(own["fractions"]):
            gen = generator(MASK_SALT + 100 * i + j) if MaskShape(shape) is MaskShape.RANDOM else None
            out[(shape, fraction_key(f))] = make_mask(shape, height=height, width=width, fraction=f, generator=gen)
    return out


def masks_for(own: Mapping[str, Any], clf: Classifier, generator: Callable[[int], torch.Generator]
              ) -> dict[tuple[str, str], torch.Tensor]:
    _, h, w = clf.input_size
    return build_masks(own, h, w, generator)


def run_regional(inp: Shard, masks: dict[tuple[str, str], torch.Tensor]) -> dict[str, Record]:
    """Per attacked sample and mode: the full-image record and one record per mask."""
    clf, x, y, ids, seed, own = inp.clf, inp.x, inp.y, inp.ids, inp.seed, inp.params["regional"]
    idx = inp.attacked.nonzero().squeeze(1)
    xs, ys = x[idx], y[idx]
    sids = [ids[int(i)] for i in idx]
    attack = IterativeLoss(norm=Norm.LINF, objective=own["objective"], step_size=own["step"], steps=own["steps"])
    modes = [False, True] if own["targeted"] else [False]
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
                             batch_size=inp.params["batch_size"], seed=seed, salt=f"regional:{MODES[targeted]}:{key}",
                             keep_first=not targeted)
        if runs and "_adv" in runs[0]:
            example["perturbation"][key] = thumbnail(runs[0].pop("_adv") - xs[0])
        for sid, r in zip(sids, runs):
            out[sid][MODES[targeted]][key] = r
        inp.progress((n + 1) / len(jobs))
    if sids:
        out[sids[0]]["example"] = example
    return out


def regional_metrics(records: list[Sample], own: Mapping[str, Any], masks: dict[tuple[str, str], torch.Tensor]
                     ) -> dict[str, Any]:
    """regional.{mode}.{full | shape.fraction}.{success_rate, l0, l2, linf[, fraction]}"""
    cond = f"{own['objective']}, step {own['step']:g}, cap {own['steps']}"
    out: dict[str, Any] = {}
    modes = ["untargeted", "targeted"] if own["targeted"] else ["untargeted"]
    for mode in modes:
        runs = [r.parts["regional"][mode] if r.parts.get("regional") else None for r in records]
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


def regional_paths(own: Mapping[str, Any]) -> list[str]:
    modes = ["untargeted", "targeted"] if own["targeted"] else ["untargeted"]
    leaves = ("success_rate", "l0", "l2", "linf")
    paths = [f"{m}.{FULL}.{v}" for m in modes for v in leaves]
    for m in modes:
        for shape, key in mask_keys(own):
            paths += [f"{m}.{shape}.{key}.{v}" for v in (*leaves, "fraction")]
    return paths


class RegionalPart(Part[Shard, Final]):
    """2e: the unbounded iterative attack on the whole image and restricted to masks."""

    name = "regional"
    help = "2e: regional perturbations (the attack restricted to masks, beside the full image)"
    schema = SCHEMA

    def check_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        keys = [fraction_key(f) for f in self.own(params)["fractions"]]
        return {"fractions": "fractions must differ at 4 significant digits"} if len(set(keys)) != len(keys) else {}

    def check_inputs(self, params: Mapping[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        """A mask that selects no pixel fails before any work (the seed does not change emptiness)."""
        masks_for(self.own(params), classifier, lambda salt: torch.Generator().manual_seed(salt))

    def metric_paths(self, params: Mapping[str, Any]) -> list[str]:
        return regional_paths(self.own(params))

    def run(self, inputs: Shard) -> dict[str, Record]:
        return run_regional(inputs, masks_for(self.own(inputs.params), inputs.clf, inputs.ctx.generator))

    def finalize(self, inputs: Final, partial: Any) -> PartResult:
        own, records, store = self.own(inputs.params), inputs.records, inputs.ctx.artifacts
        masks = masks_for(own, inputs.ctx.classifier, inputs.ctx.generator)
        examples = sorted((r.id, r.parts["regional"]["example"]) for r in records
                          if r.parts.get("regional") and "example" in r.parts["regional"])
        example = examples[0][1] if examples else None
        files = []
        for (shape, key), m in masks.items():
            path = store.path(inputs.suite, f"regional_mask_{shape}_{key}.png")
            pert = example["perturbation"].get(f"{shape}/{key}") if example else None
            actual = float(m.double().mean())
            mask_plot(path, f"{shape} mask, {actual:.1%} of pixels (requested {key})",
                      thumbnail(m[None].double()), example["image"] if example else None, pert)
            files.append(store.relative(path))
        return PartResult(regional_metrics(records, own, masks), files)
