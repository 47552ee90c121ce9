"""Part 2a: untargeted robustness per norm and budget, worst case over the attack set, and
the minimal perturbation per sample (FMN)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ...attacks import Attack, AttackResult, Loss, make_attack
from ...classifier import Classifier
from ...metrics import Unit, metric
from .common import Record, in_batches, median, seeds_for, share
from .params import attacks_for, budgets, eps_key

# attack name -> its constructor arguments from the suite's parameters
_ARGS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "fgsm": lambda p: {},
    "pgd": lambda p: {"steps": p["pgd_steps"], "rel_stepsize": p["pgd_rel_step"], "restarts": p["pgd_restarts"],
                      "loss": Loss(p["pgd_loss"]), "random_start": p["pgd_random_start"],
                      "check_every": p["check_every"], "early_exit": p["early_exit"]},
    "cw": lambda p: {"steps": p["cw_steps"], "c": p["cw_c"], "lr": p["cw_lr"],
                     "binary_search_steps": p["cw_search_steps"]},
    "fmn": lambda p: {"steps": p["minimal_steps"]},
}
UNIT = {"linf": Unit.LINF, "l2": Unit.L2}


def build(name: str, norm: str, params: dict[str, Any]) -> Attack:
    return make_attack(name, norm=norm, **_ARGS[name](params))


def run_untargeted(clf: Classifier, x: torch.Tensor, y: torch.Tensor, ids: list[str], attacked: torch.Tensor,
                   params: dict[str, Any], seed: int, progress: Callable[[float], None]) -> dict[str, Record]:
    """Per sample and norm: success per attack and budget, worst-case adversarial class per budget,
    and the minimal perturbation. Samples not attacked (clean mistakes) get ``None`` entries."""
    out: dict[str, Record] = {sid: {} for sid in ids}
    idx = attacked.nonzero().squeeze(1)
    xs, ys = x[idx], y[idx]
    sids = [ids[int(i)] for i in idx]
    norms = params["norms"]
    jobs = [(n, a) for n in norms for a in attacks_for(params, n)]
    if params["minimal"] != "none":
        jobs += [(n, params["minimal"]) for n in norms]
    total = max(1, len(jobs))
    for sid in ids:
        for n in norms:
            out[sid][n] = {"success": {}, "adv_class": None, "minimal": None}
    for j, (norm, name) in enumerate(jobs):
        attack = build(name, norm, params)
        eps = budgets(params, norm) if not attack.budget_free or name in params["attacks"] else []

        def chunk(start: int, stop: int, attack: Attack = attack, eps: list[float] = eps, name: str = name,
                  norm: str = norm) -> AttackResult:
            seeds = seeds_for(seed, sids[start:stop], f"{norm}:{name}")
            return attack(clf, xs[start:stop], ys[start:stop], eps, rng=seeds)

        results = in_batches(clf, len(sids), params["batch_size"], chunk)
        pos = 0
        for res in results:
            for k in range(res.success.shape[1]):
                rec = out[sids[pos + k]][norm]
                if eps:
                    rec["success"][name] = [bool(v) for v in res.success[:, k].tolist()]
                    rec.setdefault("pred", {})[name] = [int(v) for v in res.predictions[:, k].tolist()]
                if name == params["minimal"] and res.minimal_norms is not None:
                    v = float(res.minimal_norms[k])
                    rec["minimal"] = v if math.isfinite(v) else None
                    rec["minimal_found"] = math.isfinite(v)
            pos += res.success.shape[1]
        progress((j + 1) / total)
    for sid in sids:
        for norm in norms:
            rec = out[sid][norm]
            names = attacks_for(params, norm)
            classes: list[int | None] = []
            for b in range(len(budgets(params, norm))):
                first = next((a for a in names if rec["success"][a][b]), None)
                classes.append(rec["pred"][first][b] if first is not None else None)
            rec["adv_class"] = classes
            rec.pop("pred", None)
    for i in (~attacked).nonzero().squeeze(1).tolist():
        for norm in norms:
            out[ids[i]][norm] = {"success": None, "adv_class": None, "minimal": 0.0, "minimal_found": True}
    return out


def robust_flags(rec: Record, norm: str, n_eps: int, names: list[str]) -> list[bool]:
    """Per budget: robust against every attack (worst case); clean mistakes are never robust."""
    r = rec["attacks"][norm]
    if r["success"] is None:
        return [False] * n_eps
    return [not any(r["success"][a][b] for a in names) for b in range(n_eps)]


def robustness_metrics(records: list[Record], params: dict[str, Any], class_names: list[str]
                       ) -> dict[str, Any]:
    """robust_accuracy.{norm}.{eps}, per_attack.{norm}.{attack}.{eps}, minimal_perturbation.{norm}.*"""
    n = len(records)
    robust: dict[str, Any] = {}
    per_attack: dict[str, Any] = {}
    minimal: dict[str, Any] = {}
    for norm in params["norms"]:
        eps = budgets(params, norm)
        names = attacks_for(params, norm)
        flags = [robust_flags(r, norm, len(eps), names) for r in records]
        robust[norm] = {eps_key(e): metric(share([f[b] for f in flags]), Unit.FRACTION, n,
                                           f"robust accuracy under {norm} eps={e:g}: share of samples correctly "
                                           f"classified and not fooled by any of {names}", eps=e, attacks=names)
                        for b, e in enumerate(eps)}
        per_attack[norm] = {}
        for a in names:
            per_attack[norm][a] = {}
            for b, e in enumerate(eps):
                hits = [r["attacks"][norm]["success"] is not None and not r["attacks"][norm]["success"][a][b]
                        for r in records]
                per_attack[norm][a][eps_key(e)] = metric(share(hits), Unit.FRACTION, n,
                                                         f"robust accuracy against {a} alone, {norm} eps={e:g}",
                                                         eps=e, attack=a)
        if params["minimal"] != "none":
            minimal[norm] = minimal_metrics(records, norm, params["minimal"], class_names)
    out = {"robust_accuracy": robust, "per_attack": per_attack}
    if minimal:
        out["minimal_perturbation"] = minimal
    return out


def minimal_norms(records: list[Record], norm: str) -> list[float]:
    """Per attacked sample: the verified minimal norm, inf where none was found."""
    vals = []
    for r in records:
        rec = r["attacks"][norm]
        if rec["success"] is None:
            continue
        vals.append(rec["minimal"] if rec["minimal"] is not None else math.inf)
    return vals


def minimal_metrics(records: list[Record], norm: str, method: str, class_names: list[str]) -> dict[str, Any]:
    attacked = [r for r in records if r["attacks"][norm]["success"] is not None]
    vals = minimal_norms(records, norm)
    unit = UNIT[norm]
    per_class: dict[str, Any] = {}
    for c, name in enumerate(class_names):
        sub = [r for r in attacked if r["label"] == c]
        if sub:
            per_class[name] = metric(median(minimal_norms(sub, norm)), unit, len(sub),
                                     f"median minimal {norm} perturbation of class {name!r} ({method}; "
                                     "null when most were not found)")
    return {
        "median": metric(median(vals), unit, len(vals), f"median minimal {norm} perturbation over correctly "
                         f"classified samples ({method}; a sample with none found counts as infinite)",
                         method=method),
        "found": metric(share([math.isfinite(v) for v in vals]), Unit.FRACTION, len(vals),
                        f"share of correctly classified samples for which {method} found an adversarial"),
        "per_class": per_class,
    }
