"""Part ``saliency``: where the perturbation lands (after Ozbulak et al.'s radar study).

For each sample the core (2a) fooled, once per norm: the adversarial at the smallest budget that
fooled it (the first attack in run order that did), and Grad-CAM of the clean image for its true
class (worker/engine/gradcam.py). The overlap is the share of the perturbation's L2 energy
(squares summed over channels) inside the top ``top_fraction`` of pixels by Grad-CAM; a
perturbation spread evenly over the image scores ``top_fraction`` (the chance level).

Cost: one forward and one backward pass per fooled sample (the map is computed once and serves
both norms), on top of attacks that cost tens to thousands of passes per sample: on by default.
One image at a time, so a sample's map does not depend on its shard or batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ...classifier import Classifier
from ...gradcam import NoSpatialLayer, check_layer, energy_share, gradcam, region_share, top_region
from ...metrics import Unit, metric, proportion
from ...params import Param, ParamKind, ParamSchema
from ...samples import SampleSet
from ..base import Warning_
from ..parts import Part, PartResult
from .common import Final, Record, Shard, median, share
from .plots import saliency_plot

SCHEMA = ParamSchema((
    Param("enabled", ParamKind.BOOL, True, "Grad-CAM of each fooled clean image for its true class, and the share of "
          "the untargeted perturbation's energy inside its top region (one forward and backward pass per fooled "
          "sample)"),
    Param("top_fraction", ParamKind.FLOAT, 0.2, "share of pixels in the top Grad-CAM region: the overlap an evenly "
          "spread perturbation would have (the chance level)", minimum=0.01, maximum=0.99),
    Param("examples", ParamKind.INT, 4, "fooled samples drawn as Grad-CAM and |perturbation| overlays",
          minimum=0, maximum=16),
))
#: examples a shard keeps at most (the parameter's maximum)
MAX_EXAMPLES = 16
#: histogram bins of the overlaps over [0, 1], for report.html
BINS = 20


def _map(values: torch.Tensor, size: int = 48) -> list[list[float]]:
    """An H x W map average-pooled to at most size x size, rounded (for the partial)."""
    m = values.detach().double().cpu()[None, None]
    h, w = m.shape[-2:]
    if h > size or w > size:
        m = torch.nn.functional.adaptive_avg_pool2d(m, (min(h, size), min(w, size)))
    return [[round(float(v), 5) for v in row] for row in m[0, 0].tolist()]


def run_saliency(inp: Shard) -> dict[str, Record]:
    """Per fooled sample: the Grad-CAM layer, and per norm the overlap, budget and attack."""
    keep, own, clf = inp.adversarials, inp.params["saliency"], inp.clf
    if keep is None:
        return {}
    fooled = [i for i, sid in enumerate(inp.ids) if keep.of(sid)]
    shown = set(sorted(inp.ids[i] for i in fooled)[:MAX_EXAMPLES])
    out: dict[str, Record] = {}
    for n, i in enumerate(fooled):
        sid = inp.ids[i]
        x = inp.x[i:i + 1]
        try:
            cam, layer = gradcam(clf, x, inp.y[i:i + 1])
        except NoSpatialLayer as exc:
            return {inp.ids[j]: {"skipped": str(exc)} for j in fooled}
        region = top_region(cam[0], own["top_fraction"])
        rec: Record = {"layer": layer.describe(), "empty": region is None, "norms": {}}
        deltas = {}
        for norm, kept in keep.of(sid).items():
            deltas[norm] = kept.image.to(x.device) - x[0]
            overlap = energy_share(deltas[norm], region) if region is not None else None
            rec["norms"][norm] = {"overlap": overlap, "eps": kept.eps, "attack": kept.attack}
        if sid in shown:
            rec["example"] = {"image": _map(x[0].mean(dim=0)), "cam": _map(cam[0]),
                              "delta": {norm: _map(d.double().pow(2).sum(dim=0).sqrt()) for norm, d in deltas.items()}}
        out[sid] = rec
        inp.progress((n + 1) / len(fooled))
    return out


def overlaps(records: list[Record], norm: str | None = None) -> list[float]:
    """The overlaps of the fooled samples (one per norm, or of one norm); maps that are zero everywhere left out."""
    return [v["overlap"] for r in records for k, v in r.get("norms", {}).items()
            if (norm is None or k == norm) and v["overlap"] is not None]


def saliency_metrics(records: list[Record], own: Mapping[str, Any], norms: list[str], chance: float,
                     pixels: int) -> dict[str, Any]:
    """saliency.{overlap.{median, chance, above_chance, <norm>.median}, empty_cam}"""
    pct = f"{own['top_fraction']:.0%}"
    what = (f"share of the untargeted perturbation's L2 energy inside the top {pct} Grad-CAM region of the clean "
            "image for its true class (each fooled sample once per norm, at the smallest budget that fooled it)")
    values = overlaps(records)
    out: dict[str, Any] = {
        "overlap": {
            "median": metric(median(values), Unit.FRACTION, len(values), f"median {what}; chance level "
                             f"{chance:.4g}", chance=chance, better="neither"),
            "chance": metric(chance, Unit.FRACTION, pixels, f"share of pixels in the top {pct} region: the overlap "
                             "of a perturbation spread evenly over the image", better="neither"),
            "above_chance": proportion(share([v > chance for v in values]), len(values),
                                       f"share of fooled examples whose overlap is above chance ({chance:.4g})",
                                       better="neither"),
        },
        "empty_cam": metric(sum(bool(r.get("empty")) for r in records), Unit.COUNT, len(records),
                            "fooled samples whose Grad-CAM map is zero everywhere for the true class (no region: left "
                            "out of the overlaps)", better="neither"),
    }
    for norm in norms:
        vals = overlaps(records, norm)
        out["overlap"][norm] = {"median": metric(median(vals), Unit.FRACTION, len(vals), f"median {what}, {norm} "
                                                 f"only; chance level {chance:.4g}", chance=chance, better="neither")}
    return out


def saliency_paths(norms: list[str]) -> list[str]:
    return (["overlap.median", "overlap.chance", "overlap.above_chance", "empty_cam"]
            + [f"overlap.{norm}.median" for norm in norms])


def histogram(values: list[float]) -> list[int]:
    counts = [0] * BINS
    for v in values:
        counts[min(BINS - 1, max(0, math.floor(v * BINS)))] += 1
    return counts


class SaliencyPart(Part[Shard, Final]):
    """Where the perturbation lands: its energy inside the top Grad-CAM region of the clean image."""

    name = "saliency"
    help = "where the perturbation lands: the share of its energy inside the top Grad-CAM region (chance 0.2)"
    schema = SCHEMA
    #: the core keeps its successful adversarials for this part
    uses_adversarials: ClassVar[bool] = True

    def check_inputs(self, params: Mapping[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        check_layer(classifier)

    def metric_paths(self, params: Mapping[str, Any]) -> list[str]:
        return saliency_paths(list(params["norms"]))

    def run(self, inputs: Shard) -> dict[str, Record]:
        return run_saliency(inputs)

    def finalize(self, inputs: Final, partial: Any) -> PartResult:
        own, ctx = self.own(inputs.params), inputs.ctx
        found = [partial[sid] for sid in sorted(partial)]
        skipped = [r["skipped"] for r in found if "skipped" in r]
        if skipped:
            return PartResult(None, warnings=[Warning_("saliency_skipped", "where the perturbation lands (Grad-CAM) "
                                                       f"skipped: {skipped[0]}", {"reason": skipped[0]}).to_dict()])
        _, h, w = ctx.classifier.input_size
        chance = region_share(own["top_fraction"], h, w)
        norms = list(inputs.params["norms"])
        layers = sorted({r["layer"] for r in found})
        facts = {"layer": layers[0] if layers else None, "top_fraction": own["top_fraction"], "chance": chance,
                 "bins": BINS, "histogram": {norm: histogram(overlaps(found, norm)) for norm in norms}}
        out = PartResult(saliency_metrics(found, own, norms, chance, h * w), extra=facts)  # metadata.saliency
        shown = [(sid, partial[sid]["example"]) for sid in sorted(partial) if "example" in partial[sid]]
        shown = shown[:own["examples"]]
        if shown:
            rows = [{**ex, "id": sid, "norms": partial[sid]["norms"]} for sid, ex in shown]
            path = ctx.artifacts.path(inputs.suite, "saliency_overlays.png")
            saliency_plot(path, rows, top_fraction=own["top_fraction"], layer=layers[0] if layers else "")
            out.artifacts.append(ctx.artifacts.relative(path))
        return out
