"""Suite ``perturbation`` (docs/suites/perturbation.md): generator-layer feature perturbations (3a),
common corruptions (3b) and geometric transforms (3c).

Each part is switched on and configured by its own parameter object. The partial holds
per-sample (or per-seed) outcomes only; every rate is computed in finalize, so a sharded run
gives the same metrics as an unsharded one.
"""

from __future__ import annotations

from typing import Any

from ...generators import LoadedGenerator
from ...params import ParamSchema
from ...samples import SampleSet
from ..base import Partial, Suite, SuiteContext, SuiteResult
from ..parts import CompositeMixin, Part, part_params
from .common import Final, Shard
from .corruption_part import CorruptionsPart
from .generator_part import GeneratorLayersPart
from .geometric_part import GeometricPart

#: the parts in run order; a new part is one module and one entry here
PARTS: tuple[Part[Shard, Final], ...] = (CorruptionsPart(), GeometricPart(), GeneratorLayersPart())


class PerturbationSuite(CompositeMixin[Shard, Final], Suite):
    """Generator-layer perturbations, ImageNet-C corruptions and geometric transforms."""

    name = "perturbation"
    description = ("Feature perturbations at generator layers (coarse -> fine), the 15 ImageNet-C corruptions at "
                   "5 severities, and rotations/translations/scales with the worst case per sample.")
    parts = PARTS
    params = ParamSchema(part_params(PARTS))
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
        return self.check_parts(super().validate_params(raw))

    def metric_paths(self, params: dict[str, Any]) -> list[str]:
        return self.part_paths(params)

    def run(self, ctx: SuiteContext, samples: SampleSet, params: dict[str, Any]) -> Partial:
        def inputs(part: Part[Shard, Final], progress: Any) -> Shard:
            return Shard(ctx=ctx, samples=samples, params=params, progress=progress, generators=self._generators)

        return {"parts": self.run_parts(params, inputs, ctx.progress)}

    def merge(self, a: Partial, b: Partial) -> Partial:
        return {"parts": self.merge_parts(a["parts"], b["parts"])}

    def finalize(self, ctx: SuiteContext, partial: Partial, params: dict[str, Any]) -> SuiteResult:
        out = SuiteResult(metrics={})
        for name, res in self.finalize_parts(Final(ctx=ctx, suite=self.name, params=params), partial["parts"]):
            if res.metrics is not None:
                out.metrics[name] = res.metrics
            out.artifacts += res.artifacts
            out.warnings += res.warnings
            out.extra.update(res.extra)
        return out
