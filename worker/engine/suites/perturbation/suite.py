"""Suite ``perturbation`` (docs/suites/perturbation.md): generator-layer feature perturbations (3a),
common corruptions (3b) and geometric transforms (3c).

Each part is switched on and configured by its own parameter object. The partial holds
per-sample (or per-seed) outcomes only; every rate is computed in finalize, so a sharded run
gives the same metrics as an unsharded one.
"""

from __future__ import annotations

from typing import Any

import torch

from ...generators import LoadedGenerator
from ...samples import SampleSet
from ..base import Partial, Suite, SuiteContext, SuiteResult, Warning_
from . import corruption_part, generator_part, geometric_part
from .artifacts import example_grid
from .common import Progress
from .params import MAX_GROWING_STEPS, SCHEMA


class PerturbationSuite(Suite):
    """Generator-layer perturbations, ImageNet-C corruptions and geometric transforms."""

    name = "perturbation"
    description = ("Feature perturbations at generator layers (coarse -> fine), the 15 ImageNet-C corruptions at "
                   "5 severities, and rotations/translations/scales with the worst case per sample.")
    params = SCHEMA
    headline = ("corruptions.mean_accuracy", "corruptions.drop", "geometric.worst_case",
                "generator_layers.*.median_eps")
    demo_params = {
        "corruptions": {"names": ["gaussian_noise", "defocus_blur", "fog", "contrast", "jpeg_compression",
                                  "elastic_transform"], "severities": [1, 3, 5]},
        "geometric": {"rotations": [-20.0, 0.0, 20.0], "translations": [-2.0, 0.0, 2.0], "scales": [0.8, 1.2]},
        "generator_layers": {"sample_fraction": 0.5, "eps": [4.0, 16.0], "steps": 10, "eps_growth": 1.0,
                             "max_eps": 24.0, "reference_batch": 128, "examples": 4},
    }

    def __init__(self) -> None:
        self._generators: dict[str, LoadedGenerator] = {}

    def validate_params(self, raw: Any) -> dict[str, Any]:
        from ...errors import SpecError

        params = super().validate_params(raw)
        g = params["generator_layers"]
        if g["enabled"] and "growing" in g["modes"] and g["max_eps"] / g["eps_growth"] > MAX_GROWING_STEPS:
            raise SpecError(f"{self.name}.generator_layers: max_eps / eps_growth is "
                            f"{g['max_eps'] / g['eps_growth']:.0f} steps; at most {MAX_GROWING_STEPS}: "
                            "raise eps_growth",
                            errors={f"{self.name}.generator_layers.eps_growth": "too small for max_eps"})
        if g["card"] and not g["generator"]:
            raise SpecError(f"{self.name}.generator_layers.card is set but generator is not: give the weights too")
        return params

    def metric_paths(self, params: dict[str, Any]) -> list[str]:
        return (generator_part.metric_paths(params["generator_layers"])
                + corruption_part.metric_paths(params["corruptions"])
                + geometric_part.metric_paths(params["geometric"]))

    def run(self, ctx: SuiteContext, samples: SampleSet, params: dict[str, Any]) -> Partial:
        c, g, gl = params["corruptions"], params["geometric"], params["generator_layers"]
        progress = Progress(ctx, corruption_part.units(c) + geometric_part.units(g) + generator_part.units(gl))
        out: Partial = {}
        if c["enabled"]:
            out["corruptions"] = corruption_part.run(ctx, samples, c, progress)
        if g["enabled"]:
            out["geometric"] = geometric_part.run(ctx, samples, g, progress)
        if gl["enabled"]:
            # TorchScript's profiling executor re-optimises the backward graph for every new batch
            # shape (seconds each on a CPU); seeds come in chunks of varying size, so run unoptimised.
            with torch.jit.optimized_execution(False):
                out["generator_layers"] = generator_part.run(ctx, samples, gl, progress, self._generators)
        return out

    def merge(self, a: Partial, b: Partial) -> Partial:
        out: Partial = {}
        for part in ("corruptions", "geometric"):
            if part in a:
                out[part] = {**a[part], **b[part]}
        if "generator_layers" in a:
            # Each shard keeps its first `examples` (<= 32) successes per layer; the 32 smallest seed
            # keys of the union then contain the final choice whatever the sharding.
            out["generator_layers"] = generator_part.merge(a["generator_layers"], b["generator_layers"],
                                                           examples=32)
        return out

    def finalize(self, ctx: SuiteContext, partial: Partial, params: dict[str, Any]) -> SuiteResult:
        metrics: dict[str, Any] = {}
        artifacts: list[str] = []
        warnings: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        if "corruptions" in partial:
            metrics["corruptions"] = corruption_part.metrics(partial["corruptions"], ctx.shared.get("clean", {}),
                                                             params["corruptions"])
        if "geometric" in partial:
            metrics["geometric"] = geometric_part.metrics(partial["geometric"], params["geometric"])
        gl = partial.get("generator_layers")
        if gl is not None:
            if gl.get("skipped"):
                warnings.append(generator_part.skip_warning(gl["skipped"]))
            else:
                gp = params["generator_layers"]
                metrics["generator_layers"] = generator_part.metrics(gl, gp)
                extra["generator"] = gl.get("generator")
                for layer in gl["layers"]:
                    shown = gl["examples"].get(layer, [])[:gp["examples"]]
                    if shown:
                        path = ctx.artifacts.path(self.name, f"generator_{generator_part.layer_key(layer)}.png")
                        example_grid(shown, path, title=f"layer {layer}",
                                     class_names=list(ctx.classifier.card.class_names))
                        artifacts.append(ctx.artifacts.relative(path))
                kept = metrics["generator_layers"]["seeds_kept"]["value"]
                drawn = metrics["generator_layers"]["seeds_drawn"]["value"]
                if drawn and kept is not None and kept < 0.5 * drawn:
                    warnings.append(Warning_("generator_seeds_rejected", f"the model classifies only {kept:.0f} of "
                                             f"{drawn:.0f} generated seeds as their class: the generator may not fit "
                                             "this model or dataset", {"kept": kept, "drawn": drawn}).to_dict())
        return SuiteResult(metrics=metrics, artifacts=artifacts, warnings=warnings, extra=extra)
