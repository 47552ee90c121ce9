"""Part 2f: loss comparison (Ozbulak et al., PRL 2020).

Cross-entropy with an L2 penalty (the L-BFGS objective), iterative FGSM (sign of the
cross-entropy gradient) and the CW logit margin, each with the same step size and the same
iteration cap, untargeted, on the correctly classified samples. Per loss: success rate,
iterations to first success (median and quartiles of the successes; the full distribution
in an artifact) and the perturbation norms at first success.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...attacks import IterativeLoss, Norm
from ...classifier import Classifier
from ...metrics import Unit, metric
from .common import Record, median
from .iterative_runs import outcome_metrics, run_iterative


def run_losses(clf: Classifier, x: torch.Tensor, y: torch.Tensor, ids: list[str], attacked: torch.Tensor,
               params: dict[str, Any], seed: int, progress: Callable[[float], None]) -> dict[str, Record]:
    """Per attacked sample and loss: success, iteration of first success, norms at success."""
    idx = attacked.nonzero().squeeze(1)
    xs, ys = x[idx], y[idx]
    sids = [ids[int(i)] for i in idx]
    out: dict[str, Record] = {s: {} for s in sids}
    names = params["loss_objectives"]
    for n, name in enumerate(names):
        attack = IterativeLoss(norm=Norm.LINF, objective=name, step_size=params["loss_step"],
                               steps=params["loss_steps"], penalty=params["loss_penalty"])
        runs = run_iterative(clf, attack, xs, ys, sids, targeted=False, mask=None, batch_size=params["batch_size"],
                             seed=seed, salt=f"loss:{name}")
        for sid, r in zip(sids, runs):
            out[sid][name] = r
        progress((n + 1) / len(names))
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


def curves(records: list[Record], params: dict[str, Any]) -> dict[str, Any]:
    """Per loss: first successes per iteration (0..cap) and the cumulative success rate."""
    cap = params["loss_steps"]
    out: dict[str, Any] = {"iterations": list(range(cap + 1)), "losses": {}}
    for name in params["loss_objectives"]:
        runs = [r["loss_comparison"][name] for r in records if r.get("loss_comparison")]
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


def loss_metrics(records: list[Record], params: dict[str, Any]) -> dict[str, Any]:
    """loss_comparison.{loss}.{success_rate, l0, l2, linf, iterations.{median, p25, p75}}"""
    cond = f"step {params['loss_step']:g}, cap {params['loss_steps']}"
    out: dict[str, Any] = {}
    for name in params["loss_objectives"]:
        runs = [r["loss_comparison"][name] for r in records if r.get("loss_comparison")]
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


def loss_paths(params: dict[str, Any]) -> list[str]:
    leaves = ("success_rate", "l0", "l2", "linf", "iterations.median", "iterations.p25", "iterations.p75")
    return [f"loss_comparison.{n}.{v}" for n in params["loss_objectives"] for v in leaves]
