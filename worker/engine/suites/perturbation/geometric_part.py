"""3c: accuracy under each rotation x translation, the worst case over that grid, and scales."""

from __future__ import annotations

from typing import Any

import torch

from ...metrics import proportion
from ...samples import SampleSet
from ..base import SuiteContext
from .common import Progress, mean, predictions
from .geometric import Padding, Transform, apply, grid


def transforms(params: dict[str, Any]) -> tuple[list[Transform], list[Transform]]:
    return grid(params["rotations"], params["translations"]), [Transform(scale=s) for s in params["scales"]]


def units(params: dict[str, Any]) -> int:
    g, s = transforms(params)
    return len(g) + len(s) if params["enabled"] else 0


def run(ctx: SuiteContext, samples: SampleSet, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Per sample id: {"grid": [correct per grid transform], "scales": [correct per scale]}."""
    clf = ctx.classifier
    x = samples.prepared(clf.card)
    labels = samples.labels.to(clf.device)
    padding = Padding(params["padding"])
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


def metrics(records: dict[str, dict[str, list[bool]]], params: dict[str, Any]) -> dict[str, Any]:
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


def metric_paths(params: dict[str, Any]) -> list[str]:
    if not params["enabled"]:
        return []
    g, s = transforms(params)
    paths = [f"geometric.transforms.{t.key}" for t in g] + ["geometric.worst_case"]
    paths += [f"geometric.scale.{t.key}" for t in s]
    return paths + (["geometric.scale_worst_case"] if s else [])
