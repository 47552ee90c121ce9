"""Part 2f: loss comparison (Ozbulak et al., PRL 2020).

Cross-entropy with an L2 penalty (the L-BFGS objective), iterative FGSM (sign of the
cross-entropy gradient) and the CW logit margin, each with the same step size and the same
iteration cap, untargeted, on the correctly classified samples. Per loss: success rate,
iterations to first success (median and quartiles of the successes; the full distribution
in an artifact) and the perturbation norms at first success.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ...attacks import IterativeLoss, Norm, Objective
from ...metrics import Unit, metric
from ...params import Param, ParamKind, ParamSchema
from ..parts import Part, PartResult
from .common import Final, Record, Sample, Shard, median
from .iterative_runs import outcome_metrics, run_iterative
from .plots import loss_curve_plot

SCHEMA = ParamSchema((
    Param("enabled", ParamKind.BOOL, False, "run the loss comparison (2f): CE + L2 penalty, iterative "
          "FGSM and CW margin at one step size and iteration cap"),
    Param("objectives", ParamKind.CHOICE_LIST, [o.value for o in Objective], "losses to compare",
          choices=tuple(o.value for o in Objective)),
    Param("step", ParamKind.FLOAT, 0.01, "step size shared by every loss: largest per-pixel change per step",
          minimum=1e-6, maximum=1.0),
    Param("steps", ParamKind.INT, 50, "iteration cap shared by every loss", minimum=1, maximum=10_000),
    Param("penalty", ParamKind.FLOAT, 0.01, "c of the CE + c * ||delta||_2^2 objective", minimum=0.0,
          maximum=1e6),
))


def run_losses(inp: Shard) -> dict[str, Record]:
    """Per attacked sample and loss: success, iteration of first success, norms at success."""
    own = inp.params["loss_comparison"]
    idx = inp.attacked.nonzero().squeeze(1)
    xs, ys = inp.x[idx], inp.y[idx]
    sids = [inp.ids[int(i)] for i in idx]
    out: dict[str, Record] = {s: {} for s in sids}
    names = own["objectives"]
    for n, name in enumerate(names):
        attack = IterativeLoss(norm=Norm.LINF, objective=name, step_size=own["step"], steps=own["steps"],
                               penalty=own["penalty"])
        runs = run_iterative(inp.clf, attack, xs, ys, sids, targeted=False, mask=None,
                             batch_size=inp.params["batch_size"], seed=inp.seed, salt=f"loss:{name}")
        for sid, r in zip(sids, runs):
            out[sid][name] = r
        inp.progress((n + 1) / len(names))
    return out


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between order statistics (numpy's default)."""
    if not values:
        return None
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def curves(records: list[Sample], own: Mapping[str, Any]) -> dict[str, Any]:
    """Per loss: first successes per iteration (0..cap) and the cumulative success rate."""
    cap = own["steps"]
    out: dict[str, Any] = {"iterations": list(range(cap + 1)), "losses": {}}
    for name in own["objectives"]:
        runs = [r.parts["loss_comparison"][name] for r in records if r.parts.get("loss_comparison")]
        counts = [0] * (cap + 1)
        for r in runs:
            if r["success"]:
                counts[r["iterations"]] += 1
        total, acc, rate = len(runs), 0, []
        for c in counts:
            acc += c
            rate.append(acc / total if total else None)
        out["losses"][name] = {"attacked": total, "first_success_counts": counts, "success_rate": rate}
    return out


def loss_metrics(records: list[Sample], own: Mapping[str, Any]) -> dict[str, Any]:
    """loss_comparison.{loss}.{success_rate, l0, l2, linf, iterations.{median, p25, p75}}"""
    cond = f"step {own['step']:g}, cap {own['steps']}"
    out: dict[str, Any] = {}
    for name in own["objectives"]:
        runs = [r.parts["loss_comparison"][name] for r in records if r.parts.get("loss_comparison")]
        its = [float(r["iterations"]) for r in runs if r["success"]]
        leaf = outcome_metrics(runs, f"{name}, {cond}")
        what = f"iterations to first success of {name} over its successes ({cond})"
        leaf["iterations"] = {
            "median": metric(median(its), Unit.ITERATIONS, len(its), f"median {what}"),
            "p25": metric(quantile(its, 0.25), Unit.ITERATIONS, len(its), f"first quartile of {what}"),
            "p75": metric(quantile(its, 0.75), Unit.ITERATIONS, len(its), f"third quartile of {what}"),
        }
        out[name] = leaf
    return out


def loss_paths(own: Mapping[str, Any]) -> list[str]:
    leaves = ("success_rate", "l0", "l2", "linf", "iterations.median", "iterations.p25", "iterations.p75")
    return [f"{n}.{v}" for n in own["objectives"] for v in leaves]


class LossComparisonPart(Part[Shard, Final]):
    """2f: three losses at one step size and iteration cap."""

    name = "loss_comparison"
    help = "2f: the loss comparison (CE + L2 penalty, iterative FGSM, CW margin)"
    schema = SCHEMA

    def metric_paths(self, params: Mapping[str, Any]) -> list[str]:
        return loss_paths(self.own(params))

    def run(self, inputs: Shard) -> dict[str, Record]:
        return run_losses(inputs)

    def finalize(self, inputs: Final, partial: Any) -> PartResult:
        own, store, suite = self.own(inputs.params), inputs.ctx.artifacts, inputs.suite
        data = curves(inputs.records, own)
        path = store.path(suite, "loss_comparison.json")
        path.write_text(json.dumps(data, indent=1))
        files = [store.relative(path), store.relative(loss_curve_plot(store.path(suite, "loss_comparison.png"), data))]
        return PartResult(loss_metrics(inputs.records, own), files)
