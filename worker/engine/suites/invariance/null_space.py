"""Part ``null_space``: exact feature collisions (Ozbulak et al., arXiv 2205.15763).

If δ / std lies in the null space of the model's first linear operator W, every later layer sees
the same features for x and x + δ: two different images, one prediction. Per shard: find W
(operator.py), its null space (nullspace.py), and per image the largest colliding δ the [0, 1]
box allows (collisions.py), verified by a forward pass of x and x + δ. The operator's facts are
the same in every shard (same weights, same seeded generator); per-image records are merged by id.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any
from weakref import WeakKeyDictionary

import torch

from ...attacks.rng import sample_seed
from ...classifier import Classifier
from ...errors import SpecError
from ...metrics import Unit, metric, proportion
from ...params import Param, ParamKind, ParamSchema
from ...samples import SampleSet
from ..attacks.common import median
from ..base import SuiteContext, Warning_
from ..parts import Part, PartResult
from .collisions import Objective, colliding_perturbations
from .common import Final, Shard, thumbnail
from .nullspace import DENSE_MAX_INPUTS, Method, NullSpace, null_space
from .operator import FirstOperator, NotLinear, find_first_operator
from .plots import pairs_plot

SCHEMA = ParamSchema((
    Param("enabled", ParamKind.BOOL, True, "find the null space of the model's first linear layer and build "
          "colliding image pairs"),
    Param("method", ParamKind.CHOICE, Method.AUTO.value, "auto: exact per patch (non-overlapping convolution) or "
          f"per matrix (Linear), else dense up to {DENSE_MAX_INPUTS} input values, else iterative (LOBPCG); "
          "dense or iterative: that way whatever the structure", enum=Method),
    Param("rtol", ParamKind.FLOAT, 1e-6, "a singular value counts as zero when at most rtol times the largest",
          minimum=1e-12, maximum=1e-2),
    Param("k", ParamKind.INT, 8, "iterative way: how many of the smallest singular values LOBPCG finds (the "
          "dimension it reports is a lower bound when all k are zero)", minimum=1, maximum=64),
    Param("iterations", ParamKind.INT, 300, "iterative way: LOBPCG iterations at most", minimum=1, maximum=5000),
    Param("objective", ParamKind.CHOICE, Objective.L2.value, "what the colliding perturbation maximises inside "
          "null(W) and the [0, 1] box: its L2 norm, or its largest pixel change", enum=Objective),
    Param("steps", ParamKind.INT, 30, "projected ascent steps (0: a random null-space direction scaled to the box)",
          minimum=0, maximum=500),
    Param("examples", ParamKind.INT, 4, "image pairs drawn in the artifact", minimum=0, maximum=16),
))

#: examples a merged partial keeps at most (the parameter's maximum)
MAX_EXAMPLES = 16
#: generator salt of the iterative way (the same in every shard)
LOBPCG_SALT = 2205
#: a pair whose logits moved by more than this share of the logits' scale is not an exact collision
INEXACT = 1e-3


def skip_warning(reason: str) -> dict[str, Any]:
    return Warning_("null_space_skipped", f"exact feature collisions skipped: {reason}", {"reason": reason}).to_dict()


def _verify(clf: Classifier, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """x' = x + δ in the model's dtype (clamped to [0, 1] against rounding), and the facts of one pair
    from one forward pass of [x, x']."""
    partner = (x.double() + delta).to(x.dtype).clamp(0.0, 1.0)
    logits = clf.logits(torch.stack([x, partner])).double()
    actual = (partner.double() - x.double()).flatten()
    return partner, {"linf": float(actual.abs().max()), "l2": float(actual.norm()),
                     "logit_change": float((logits[1] - logits[0]).abs().max()),
                     "logit_scale": float(logits[0].abs().max()),
                     "prediction": int(logits[0].argmax()), "partner_prediction": int(logits[1].argmax())}


#: per classifier (while it lives) and settings: its operator and null space, so that the shards a
#: process runs share one analysis (each would find the same: same weights, same seeded generator)
_ANALYSED: WeakKeyDictionary[Classifier, dict[str, tuple[FirstOperator, NullSpace] | str]] = WeakKeyDictionary()


def analyse(ctx: SuiteContext, own: Mapping[str, Any], probe: torch.Tensor) -> tuple[FirstOperator, NullSpace] | str:
    """W and its null space, or why the model has no W to analyse (memoised per classifier)."""
    clf = ctx.classifier
    # the weights' storage and version counters: a model trained in place between audits is analysed afresh
    weights = [(p.data_ptr(), p._version) for p in clf.model.parameters()]
    key = json.dumps([str(own["method"]), own["rtol"], own["k"], own["iterations"], ctx.seed, weights])
    memo = _ANALYSED.setdefault(clf, {})
    if key not in memo:
        try:
            op = find_first_operator(clf, probe)
        except NotLinear as exc:
            memo[key] = str(exc)
        else:
            memo[key] = (op, null_space(op, own["method"], own["rtol"], k=own["k"], iterations=own["iterations"],
                                        generator=ctx.generator(LOBPCG_SALT)))
    return memo[key]


def run_null_space(inp: Shard) -> dict[str, Any]:
    """The operator's facts and, per image, its colliding partner's facts (None without a null space)."""
    ctx, own, ids = inp.ctx, inp.params["null_space"], list(inp.samples.ids)
    clf = ctx.classifier
    x = inp.samples.prepared(clf.card).to(clf.device)
    found = analyse(ctx, own, x[0] if len(x) else torch.zeros(clf.input_size, device=clf.device))
    if isinstance(found, str):
        return {"facts": {"skipped": found}, "samples": {}, "examples": {}}
    op, space = found
    facts = {"operator": op.describe(), "null_space": space.to_json()}
    inp.progress(0.2)
    samples: dict[str, Any] = {sid: None for sid in ids}
    examples: dict[str, Any] = {}
    if space.projector is None:
        return {"facts": facts, "samples": samples, "examples": examples}
    shown = set(sorted(ids)[:MAX_EXAMPLES])
    std = torch.tensor(clf.card.std, dtype=torch.float64, device=clf.device)
    # one image at a time: its numbers do not depend on which shard or batch it falls in
    for i, sid in enumerate(ids):
        gen = torch.Generator().manual_seed(sample_seed(ctx.seed, "invariance", "null_space", sid))
        delta = colliding_perturbations(x[i:i + 1], std, op.in_shape, space.projector, [gen],
                                        objective=own["objective"], steps=own["steps"])[0]
        partner, record = _verify(clf, x[i], delta)
        samples[sid] = record
        if sid in shown:
            examples[sid] = {"image": thumbnail(x[i]), "delta": thumbnail(partner.double() - x[i].double())}
        inp.progress(0.2 + 0.8 * (i + 1) / len(ids))
    return {"facts": facts, "samples": samples, "examples": examples}


def merge_null_space(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per-image records joined by id; the operator's facts are the same in every shard (when not, the
    smaller in JSON order is kept, whichever comes first, and the merge says so)."""
    same = a["facts"] == b["facts"]
    facts = a["facts"] if same else min(a["facts"], b["facts"], key=lambda f: json.dumps(f, sort_keys=True))
    examples = dict(sorted({**a["examples"], **b["examples"]}.items())[:MAX_EXAMPLES])
    return {"facts": facts, "samples": {**a["samples"], **b["samples"]}, "examples": examples,
            "disagree": bool(a.get("disagree") or b.get("disagree") or not same)}


def null_space_metrics(facts: Mapping[str, Any], records: list[dict[str, Any]], inputs: int) -> dict[str, Any]:
    """invariance.null_space.{dimension, smallest_singular_value, linf.median, l2.median,
    max_logit_change, same_prediction}"""
    ns = facts["null_space"]
    n = len(records)
    how = f"{ns['way'].replace('_', ' ')}, rtol {ns['rtol']:g}"
    none = " (no null space: no colliding pairs)" if not ns["dimension"] else ""
    return {
        "dimension": metric(ns["dimension"], Unit.COUNT, inputs, "dimension of the null space of the model's first "
                            f"linear operator W, over its {inputs} input values ({how})"
                            + (": a lower bound, every value LOBPCG found is zero" if ns["lower_bound"] else ""),
                            way=ns["way"], lower_bound=ns["lower_bound"], better="lower"),
        "smallest_singular_value": metric(ns["smallest"], Unit.RATIO, inputs, "smallest singular value of W (0 when "
                                          f"it has a null space; {how})", largest=ns["largest"],
                                          smallest_nonzero=ns["smallest_nonzero"], converged=ns["converged"],
                                          better="higher"),
        "linf": {"median": metric(median([r["linf"] for r in records]), Unit.LINF, n,
                                  "median L-inf norm of the colliding perturbations x' - x, in [0, 1] pixel units"
                                  + none, better="neither")},
        "l2": {"median": metric(median([r["l2"] for r in records]), Unit.L2, n,
                                "median L2 norm of the colliding perturbations x' - x, in [0, 1] pixel units" + none,
                                better="neither")},
        "max_logit_change": metric(max((r["logit_change"] for r in records), default=None), Unit.LINF, n,
                                   "largest L-inf change of the logits over the pairs, |f(x') - f(x)|: floating-point "
                                   "noise when the collisions are exact" + none, better="neither"),
        "same_prediction": proportion(
            math.fsum(r["prediction"] == r["partner_prediction"] for r in records) / n if n else None, n,
            "share of pairs whose top-1 prediction is the same for x and x'" + none, better="neither"),
    }


def null_space_paths() -> list[str]:
    return ["dimension", "smallest_singular_value", "linf.median", "l2.median", "max_logit_change",
            "same_prediction"]


def _warnings(facts: Mapping[str, Any], records: list[dict[str, Any]], disagree: bool) -> list[dict[str, Any]]:
    ns = facts["null_space"]
    out = []
    if ns["lower_bound"]:
        out.append(Warning_("null_space_lower_bound", f"all {ns['dimension']} singular values the iterative way "
                            "found are zero: the null space has at least that dimension (raise k to see more)",
                            {"dimension": ns["dimension"]}).to_dict())
    if not ns["converged"]:
        out.append(Warning_("null_space_not_converged", "LOBPCG stopped at its iteration cap: the smallest "
                            "singular value is an upper bound", {"smallest": ns["smallest"]}).to_dict())
    inexact = [r for r in records if r["logit_change"] > INEXACT * max(1.0, r["logit_scale"])]
    if inexact:
        out.append(Warning_("null_space_collision_inexact", f"{len(inexact)} of {len(records)} pairs changed the "
                            f"logits by more than {INEXACT:g} of their scale: the model does more to its input than "
                            "the operator found", {"pairs": len(inexact)}).to_dict())
    if disagree:
        out.append(Warning_("null_space_shards_disagree", "the shards found different operators or null spaces "
                            "(different devices?); the report uses one of them", {}).to_dict())
    return out


class NullSpacePart(Part[Shard, Final]):
    """Exact feature collisions through the null space of the model's first linear operator."""

    name = "null_space"
    help = "exact feature collisions: the null space of the first linear layer, and colliding image pairs"
    schema = SCHEMA

    def check_inputs(self, params: Mapping[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        own = self.own(params)
        values = math.prod(classifier.input_size)
        if own["method"] is Method.DENSE and values > DENSE_MAX_INPUTS:
            where = "invariance.null_space.method"
            raise SpecError(f"{where}: dense needs at most {DENSE_MAX_INPUTS} input values; the model takes {values} "
                            "(use auto or iterative)", errors={where: "dense: the input is too large"})

    def metric_paths(self, params: Mapping[str, Any]) -> list[str]:
        return null_space_paths()

    def run(self, inputs: Shard) -> dict[str, Any]:
        return run_null_space(inputs)

    def merge(self, a: Any, b: Any) -> Any:
        return merge_null_space(a, b)

    def finalize(self, inputs: Final, partial: Any) -> PartResult:
        facts = partial["facts"]
        if "skipped" in facts:
            return PartResult(None, warnings=[skip_warning(facts["skipped"])])
        ctx, own = inputs.ctx, self.own(inputs.params)
        records = [r for _, r in sorted(partial["samples"].items()) if r is not None]
        inputs_n = math.prod(facts["operator"]["in_shape"])
        out = PartResult(null_space_metrics(facts, records, inputs_n),
                         warnings=_warnings(facts, records, bool(partial.get("disagree"))),
                         extra={"null_space": {**facts["operator"], **facts["null_space"],
                                               "objective": str(own["objective"]), "steps": own["steps"]}})
        shown = sorted(partial["examples"].items())[:own["examples"]]
        if shown:
            names = list(ctx.classifier.card.class_names)
            rows = [{**ex, "id": sid, **partial["samples"][sid]} for sid, ex in shown]
            path = ctx.artifacts.path(inputs.suite, "null_space_pairs.png")
            pairs_plot(path, rows, class_names=names, dimension=facts["null_space"]["dimension"])
            out.artifacts.append(ctx.artifacts.relative(path))
        return out

