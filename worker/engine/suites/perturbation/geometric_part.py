"""3c: accuracy under each rotation x translation, the worst case over that grid, and scales."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...metrics import proportion
from ...params import Param, ParamKind, ParamSchema
from ..keys import colliding
from ..parts import Part, PartResult
from .common import Final, Progress, Shard, mean, predictions
from .geometric import Padding, Transform, apply, grid

SCHEMA = ParamSchema((
    Param("enabled", ParamKind.BOOL, True, "run the geometric transforms"),
    Param("rotations", ParamKind.FLOAT_LIST, [-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0],
          "rotation angles in degrees (counter-clockwise) of the grid", minimum=-180, maximum=180),
    Param("translations", ParamKind.FLOAT_LIST, [-3.0, 0.0, 3.0],
          "shifts in pixels (model input size), used for x and y alike", minimum=-64, maximum=64, max_items=16),
    Param("scales", ParamKind.FLOAT_LIST, [0.8, 0.9, 1.1, 1.2], "zoom factors about the centre (1 = unchanged)",
          minimum=0.25, maximum=4.0),
    Param("padding", ParamKind.CHOICE, Padding.ZEROS.value, "fill outside the image", enum=Padding),
))


def transforms(params: Mapping[str, Any]) -> tuple[list[Transform], list[Transform]]:
    return grid(params["rotations"], params["translations"]), [Transform(scale=s) for s in params["scales"]]


def units(params: Mapping[str, Any]) -> int:
    g, s = transforms(params)
    return len(g) + len(s) if params["enabled"] else 0


def run(inp: Shard) -> dict[str, Any]:
    """Per sample id: {"grid": [correct per grid transform], "scales": [correct per scale]}."""
    ctx, samples, params = inp.ctx, inp.samples, inp.params["geometric"]
    progress = Progress(inp.progress, units(params))
    clf = ctx.classifier
    x = samples.prepared(clf.card)
    labels = samples.labels.to(clf.device)
    padding: Padding = params["padding"]
    out: dict[str, dict[str, list[bool]]] = {sid: {"grid": [], "scales": []} for sid in samples.ids}
    step = max(1, clf.batch.size)
    g, s = transforms(params)
    for part, ts in (("grid", g), ("scales", s)):
        for t in ts:
            hits: list[bool] = []
            for start in range(0, len(samples), step):
                with torch.no_grad():
                    images = apply(x[start:start + step].to(clf.device), t, padding)
                    hits.extend(predictions(clf, images).eq(labels[start:start + step]).tolist())
            for sid, ok in zip(samples.ids, hits):
                out[sid][part].append(bool(ok))
            progress.step()
    return out


def metrics(records: dict[str, dict[str, list[bool]]], params: Mapping[str, Any]) -> dict[str, Any]:
    ids = sorted(records)
    n = len(ids)
    g, s = transforms(params)
    out: dict[str, Any] = {"transforms": {}, "scale": {}}
    for j, t in enumerate(g):
        out["transforms"][t.key] = proportion(mean(records[i]["grid"][j] for i in ids), n,
                                          f"top-1 accuracy after rotating {t.angle:g} degrees and shifting "
                                          f"({t.tx:g}, {t.ty:g}) px", angle=t.angle, tx=t.tx, ty=t.ty)
    out["worst_case"] = proportion(mean(all(records[i]["grid"]) for i in ids), n,
                               f"share of samples classified correctly under every one of the {len(g)} "
                               "rotation x translation transforms", transforms=len(g))
    for j, t in enumerate(s):
        out["scale"][t.key] = proportion(mean(records[i]["scales"][j] for i in ids), n,
                                     f"top-1 accuracy after scaling by {t.scale:g} about the centre", scale=t.scale)
    if s:
        out["scale_worst_case"] = proportion(mean(all(records[i]["scales"]) for i in ids), n,
                                         "share of samples classified correctly at every scale")
    return out


def metric_paths(params: Mapping[str, Any]) -> list[str]:
    """Paths below ``geometric.``."""
    g, s = transforms(params)
    paths = [f"transforms.{t.key}" for t in g] + ["worst_case"]
    paths += [f"scale.{t.key}" for t in s]
    return paths + (["scale_worst_case"] if s else [])


class GeometricPart(Part[Shard, Final]):
    """3c: rotations x translations with the worst case per sample, and scales."""

    name = "geometric"
    help = "3c: rotations, translations, scales"
    schema = SCHEMA

    def check_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        own = self.own(params)
        return {k: "values must differ at 4 significant digits (they are metric keys)"
                for k, name in (("rotations", "rot"), ("translations", "tx"), ("scales", "scale"))
                if colliding(name, own[k])}

    def units(self, params: Mapping[str, Any]) -> int:
        return units(self.own(params))

    def metric_paths(self, params: Mapping[str, Any]) -> list[str]:
        return metric_paths(self.own(params))

    def run(self, inputs: Shard) -> dict[str, Any]:
        return run(inputs)

    def finalize(self, inputs: Final, partial: Any) -> PartResult:
        return PartResult(metrics(partial, self.own(inputs.params)))
