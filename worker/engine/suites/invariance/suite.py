"""Suite ``invariance`` (docs/suites/invariance.md): what the model cannot see.

Its one part so far, ``null_space``, finds exact feature collisions: images that differ a lot yet
give the first layer, and so the whole model, the same features. The partial holds the
operator's facts (equal in every shard) and per-image records; metrics come from the merge.
"""

from __future__ import annotations

from typing import Any

from ...classifier import Classifier
from ...params import ParamSchema
from ...samples import SampleSet
from ..base import Partial, Suite, SuiteContext, SuiteResult, SuiteStatus
from ..parts import CompositeMixin, Part, part_params
from .common import Final, Shard
from .null_space import NullSpacePart

#: the parts in run order; a new part is one module and one entry here
PARTS: tuple[Part[Shard, Final], ...] = (NullSpacePart(),)


class InvarianceSuite(CompositeMixin[Shard, Final], Suite):
    """Exact feature collisions through the null space of the model's first linear layer."""

    name = "invariance"
    description = ("Exact feature collisions (Ozbulak et al.): the null space of the model's first linear layer "
                   "(Linear, or Conv2d as a linear map: exact per patch for non-overlapping patch embeddings, "
                   "numerically otherwise), its dimension and smallest singular value, and per image a colliding "
                   "partner as far away as the [0, 1] box allows, verified by a forward pass.")
    parts = PARTS
    params = ParamSchema(part_params(PARTS))
    headline = ("null_space.dimension", "null_space.smallest_singular_value", "null_space.linf.median",
                "null_space.max_logit_change")
    demo_params = {"null_space": {"steps": 10, "examples": 3}}

    def validate_params(self, raw: Any) -> dict[str, Any]:
        return self.check_parts(super().validate_params(raw))

    def check_inputs(self, params: dict[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        self.check_part_inputs(params, samples, classifier)

    def metric_paths(self, params: dict[str, Any]) -> list[str]:
        return self.part_paths(params)

    def run(self, ctx: SuiteContext, samples: SampleSet, params: dict[str, Any]) -> Partial:
        def inputs(part: Part[Shard, Final], progress: Any) -> Shard:
            return Shard(ctx=ctx, samples=samples, params=params, progress=progress)

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
        if not out.metrics:  # every part switched on was skipped (or none was on)
            out.status = SuiteStatus.SKIPPED
        return out
