"""Parts 2e-2g of the attacks suite (regional masks, loss comparison, transferability), each
switched on by its parameters: what ``run`` adds to each sample record, and what ``finalize``
makes of the merged records."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from ...classifier import Classifier
from ...samples import SampleSet
from ..base import SuiteContext
from .common import Record
from .iterative_runs import thumbnail
from .loss_comparison import curves, loss_metrics, loss_paths, run_losses
from .plots import loss_curve_plot, mask_plot
from .regional import build_masks, regional_metrics, regional_paths, run_regional
from .transfer import load_surrogate, run_transfer, transfer_metrics, transfer_paths


def enabled(params: dict[str, Any]) -> list[str]:
    """The extra parts these parameters switch on, in run order."""
    flags = {"regional": params["regional"], "loss_comparison": params["loss_comparison"],
             "transfer": params["surrogate"] is not None}
    return [k for k, on in flags.items() if on]


def masks_for(params: dict[str, Any], clf: Classifier, generator: Callable[[int], torch.Generator]
              ) -> dict[tuple[str, str], torch.Tensor]:
    _, h, w = clf.input_size
    return build_masks(params, h, w, generator)


def check_extras(params: dict[str, Any], classifier: Classifier, generator: Callable[[int], torch.Generator]
                 ) -> None:
    """Before any work: every mask selects a pixel, and the surrogate fits the audited model."""
    if params["regional"]:
        masks_for(params, classifier, generator)
    if params["surrogate"] is not None:
        load_surrogate(params["surrogate"], classifier)


def run_extras(ctx: SuiteContext, samples: SampleSet, x: torch.Tensor, y: torch.Tensor, attacked: torch.Tensor,
               params: dict[str, Any], progress: Callable[[float], None]) -> dict[str, dict[str, Record]]:
    """part -> sample id -> that part's per-sample record (only for the parts switched on)."""
    clf, ids = ctx.classifier, list(samples.ids)
    parts = enabled(params)
    out: dict[str, dict[str, Record]] = {}
    for i, part in enumerate(parts):
        def sub(f: float, i: int = i) -> None:
            progress((i + f) / len(parts))

        if part == "regional":
            out[part] = run_regional(clf, x, y, ids, attacked, params, ctx.seed,
                                     masks_for(params, clf, ctx.generator), sub)
        elif part == "loss_comparison":
            out[part] = run_losses(clf, x, y, ids, attacked, params, ctx.seed, sub)
        else:
            surrogate = load_surrogate(params["surrogate"], clf)
            out[part] = run_transfer(clf, surrogate, x, y, ids, attacked, params, ctx.seed, sub)
    return out


def extra_paths(params: dict[str, Any]) -> list[str]:
    paths: list[str] = []
    if params["regional"]:
        paths += regional_paths(params)
    if params["loss_comparison"]:
        paths += loss_paths(params)
    if params["surrogate"] is not None:
        paths += transfer_paths(params)
    return paths


def extra_results(ctx: SuiteContext, suite: str, records: list[Record], params: dict[str, Any]
                  ) -> tuple[dict[str, Any], list[str]]:
    """(metrics, artifact paths) of the parts switched on."""
    metrics: dict[str, Any] = {}
    artifacts: list[str] = []
    store = ctx.artifacts
    if params["regional"]:
        masks = masks_for(params, ctx.classifier, ctx.generator)
        metrics["regional"] = regional_metrics(records, params, masks)
        examples = sorted((r["id"], r["regional"]["example"]) for r in records
                          if r.get("regional") and "example" in r["regional"])
        example = examples[0][1] if examples else None
        for (shape, key), m in masks.items():
            path = store.path(suite, f"regional_mask_{shape}_{key}.png")
            pert = example["perturbation"].get(f"{shape}/{key}") if example else None
            actual = float(m.double().mean())
            mask_plot(path, f"{shape} mask, {actual:.1%} of pixels (requested {key})",
                      thumbnail(m[None].double()), example["image"] if example else None, pert)
            artifacts.append(store.relative(path))
    if params["loss_comparison"]:
        metrics["loss_comparison"] = loss_metrics(records, params)
        data = curves(records, params)
        path = store.path(suite, "loss_comparison.json")
        path.write_text(json.dumps(data, indent=1))
        artifacts.append(store.relative(path))
        artifacts.append(store.relative(loss_curve_plot(store.path(suite, "loss_comparison.png"), data)))
    if params["surrogate"] is not None:
        metrics["transfer"] = transfer_metrics(records, params)
    return metrics, artifacts
