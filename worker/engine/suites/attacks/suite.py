"""Suite ``attacks`` (SUITES.md section 2: parts 2a-2g and the sanity flags).

``run`` attacks one shard and returns per-sample facts only (success per attack and budget,
adversarial classes, minimal norms, targeted outcomes, sanity facts); ``finalize`` computes
every rate from the merged samples, so sharded and unsharded audits agree exactly.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ...attacks.eot import EoT
from ...classifier import Classifier
from ...metrics import Unit, metric
from ...samples import SampleSet
from ..base import Partial, Suite, SuiteContext, SuiteResult
from .common import Record, in_batches
from .extras import check_extras, enabled, extra_paths, extra_results, run_extras
from .misclassification import misclassification_metrics
from .params import SCHEMA, attacks_for, budgets, check, eps_key, with_set_defaults
from .plots import modify_mimic_plot, robust_accuracy_plot
from .robustness import merge_costs, robustness_metrics, run_untargeted
from .sanity import eot_summary, probe, sanity_warnings, unreliable_metrics
from .suitability import suitability_metrics
from .targeted import matrix_artifact, run_targeted, targeted_metrics


class AttacksSuite(Suite):
    """Robust accuracy, minimal perturbations, targeted modify/mimic, misclassification
    classes, source-image suitability and sanity flags."""

    name = "attacks"
    description = ("Adversarial robustness: robust accuracy per norm and budget (worst case over an attack set: "
                   "by default PGD, FGSM, CW-L2 and the gradient-free Square; or AutoAttack's set), EoT for "
                   "randomised models, "
                   "minimal perturbations (FMN), targeted all-pairs modify/mimic rates, misclassification classes, "
                   "source-image suitability, sanity flags; optionally regional masks, a loss comparison and "
                   "transferability from a surrogate model.")
    params = SCHEMA
    headline = ("robust_accuracy.*.*", "minimal_perturbation.*.median", "targeted.success_rate")
    demo_params = {"linf_eps": [0.05, 0.1, 0.2], "l2_eps": [0.5, 1.0, 2.0],
                   "attack_params": {"pgd": {"steps": 10}, "cw": {"steps": 20, "binary_search_steps": 2},
                                     "fmn": {"steps": 50}, "square": {"n_queries": 300}},
                   "targeted_eps": 0.2, "targeted_steps": 10,
                   "targeted_fraction": 0.5, "regional": True, "regional_steps": 20, "regional_step": 0.03,
                   "loss_comparison": True, "loss_steps": 20, "loss_step": 0.02}

    def validate_params(self, raw: Any) -> dict[str, Any]:
        return check(super().validate_params(with_set_defaults(raw)))

    def check_inputs(self, params: dict[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        """Masks that select no pixel and a surrogate that does not fit fail before any work."""
        check_extras(params, classifier, lambda salt: torch.Generator().manual_seed(salt))  # emptiness only

    def metric_paths(self, params: dict[str, Any]) -> list[str]:
        paths = ["not_attacked"]
        for norm in params["norms"]:
            for e in budgets(params, norm):
                k = eps_key(e)
                paths.append(f"robust_accuracy.{norm}.{k}")
                paths += [f"per_attack.{norm}.{a}.{k}" for a in attacks_for(params, norm)]
                paths.append(f"suitability.unflagged.robust_accuracy.{norm}.{k}")
            if params["minimal"] != "none":
                paths += [f"minimal_perturbation.{norm}.median", f"minimal_perturbation.{norm}.found",
                          f"minimal_perturbation.{norm}.per_class.{{class}}",
                          f"suitability.unflagged.minimal_perturbation.{norm}"]
            paths += [f"misclassification.{norm}.top3", f"misclassification.{norm}.top5",
                      f"misclassification.{norm}.same_group"]
        paths += ["suitability.flagged"] + [f"suitability.flags.{f}" for f in
                                            ("misclassified", "low_margin", "falls_at_every_budget",
                                             "falls_at_no_budget")]
        if params["targeted"]:
            paths += ["targeted.success_rate", "targeted.modify.{class}", "targeted.mimic.{class}",
                      "targeted.spearman", "targeted.easiest_to_modify", "targeted.hardest_to_modify",
                      "targeted.easiest_to_mimic", "targeted.hardest_to_mimic",
                      "targeted.groups.modify.{group}", "targeted.groups.mimic.{group}", "targeted.groups.spearman",
                      "targeted.groups.easiest_to_modify", "targeted.groups.hardest_to_modify",
                      "targeted.groups.easiest_to_mimic", "targeted.groups.hardest_to_mimic"]
        return paths + extra_paths(params)

    def run(self, ctx: SuiteContext, samples: SampleSet, params: dict[str, Any]) -> Partial:
        clf = ctx.classifier
        x = samples.prepared(clf.card).to(clf.device)
        y = samples.labels.to(clf.device)
        ids = list(samples.ids)
        # clean facts: the clean suite's records where present, else our own forward pass
        probes = in_batches(clf, len(ids), params["batch_size"], lambda s, e: probe(clf, x[s:e], y[s:e]))
        logits = torch.cat([p[0] for p in probes]) if probes else torch.zeros(0, clf.num_classes)
        facts = [f for p in probes for f in p[1]]
        shared = ctx.shared.get("clean") or {}
        records: dict[str, Record] = {}
        probs = torch.softmax(logits.double(), dim=1)
        k = min(5, clf.num_classes)
        for i, sid in enumerate(ids):
            c = shared.get(sid)
            if c is None:
                p = probs[i]
                top = p.topk(k).indices.tolist()
                other = p.clone()
                other[int(y[i])] = -1.0
                c = {"label": int(y[i]), "correct": top[0] == int(y[i]), "topk": top,
                     "margin": float(p[int(y[i])] - other.max())}
            records[sid] = {"id": sid, "label": int(c["label"]), "correct": bool(c["correct"]),
                            "margin": float(c["margin"]), "topk": [int(t) for t in c["topk"]],
                            "sanity": facts[i]}
        attacked = torch.tensor([records[s]["correct"] for s in ids], dtype=torch.bool, device=clf.device)
        eot = _eot_for(params["eot"], sum(f["randomised"] for f in facts), clf)
        for sid in ids:
            records[sid]["eot"] = eot is not None
        # progress: rough shares of the work per part (untargeted 3, targeted 1, each extra part 1)
        extras = enabled(params)
        total = 3 + int(params["targeted"]) + len(extras)
        untargeted, cost = run_untargeted(clf, x, y, ids, attacked, params, ctx.seed,
                                          lambda f: ctx.progress(3 * f / total), eot)
        for sid in ids:
            records[sid]["attacks"] = untargeted[sid]
            records[sid]["targeted"] = None
        if params["targeted"]:
            targeted = run_targeted(clf, x, y, ids, attacked, params, ctx.seed,
                                    lambda f: ctx.progress((3 + f) / total))
            for sid, t in targeted.items():
                records[sid]["targeted"] = t
        done = 3 + int(params["targeted"])
        parts = run_extras(ctx, samples, x, y, attacked, params,
                           lambda f: ctx.progress((done + len(extras) * f) / total))
        for part, per_sample in parts.items():
            for sid in ids:
                records[sid][part] = per_sample.get(sid)
        return {"samples": records, "cost": cost}

    def merge(self, a: Partial, b: Partial) -> Partial:
        return {"samples": {**a["samples"], **b["samples"]}, "cost": merge_costs(a["cost"], b["cost"])}

    def finalize(self, ctx: SuiteContext, partial: Partial, params: dict[str, Any]) -> SuiteResult:
        records = list(partial["samples"].values())
        card = ctx.classifier.card
        names = list(card.class_names) or [str(i) for i in range(ctx.classifier.num_classes)]
        hierarchy = dict(card.hierarchy)
        n = len(records)
        metrics: dict[str, Any] = {
            "not_attacked": metric(sum(not r["correct"] for r in records), Unit.COUNT, n,
                                   "samples misclassified on the clean image: not attacked, counted as non-robust "
                                   "at every budget"),
        }
        metrics.update(robustness_metrics(records, params, names))
        metrics["misclassification"] = misclassification_metrics(records, params, names, hierarchy)
        suitability, flags = suitability_metrics(records, params)
        metrics["suitability"] = suitability
        artifacts = []
        store = ctx.artifacts
        if params["targeted"]:
            metrics["targeted"] = targeted_metrics(records, params, names, hierarchy)
            matrix = matrix_artifact(records, names)
            path = store.path(self.name, "targeted_matrix.json")
            path.write_text(json.dumps(matrix, indent=1))
            artifacts.append(store.relative(path))
            artifacts.append(store.relative(_write_npz(store.path(self.name, "targeted_matrix.npz"), matrix)))
            if n:
                artifacts.append(store.relative(modify_mimic_plot(store.path(self.name, "modify_mimic.png"),
                                                                  metrics["targeted"])))
        if n:
            artifacts.append(store.relative(robust_accuracy_plot(store.path(self.name, "robust_accuracy.png"),
                                                                 metrics, params)))
        path = store.path(self.name, "suitability_flags.json")
        path.write_text(json.dumps(flags, indent=1))
        artifacts.append(store.relative(path))
        more, files = extra_results(ctx, self.name, records, params)
        metrics.update(more)
        artifacts += files
        warnings = sanity_warnings(records, params, ctx.classifier.num_classes)
        metadata = {"attacks": {norm: attacks_for(params, norm) for norm in params["norms"]},
                    "cascade": params["cascade"], "eot": eot_summary(records, params),
                    "cost": _rounded(partial["cost"])}
        extra: dict[str, Any] = {"metadata": metadata}
        unreliable = unreliable_metrics(records, warnings, params, self.metric_paths(params))
        if unreliable is not None:
            extra["unreliable"] = unreliable
        return SuiteResult(metrics=metrics, artifacts=artifacts, warnings=warnings, extra=extra)


def _eot_for(cfg: dict[str, Any], randomised: int, clf: Classifier) -> EoT | None:
    """EoT when the request asks for it, or ("auto") when this shard's probe saw a randomised model."""
    on = cfg["enabled"] is True or (cfg["enabled"] == "auto" and randomised > 0)
    return EoT(clf, grad_samples=cfg["grad_samples"], passes=cfg["passes"]) if on else None


def _rounded(cost: dict[str, Any]) -> dict[str, Any]:
    return {norm: {name: {**c, "seconds": round(c["seconds"], 3)} for name, c in per.items()}
            for norm, per in cost.items()}


def _write_npz(path: Any, matrix: dict[str, Any]) -> Any:
    import numpy as np

    with open(path, "wb") as fh:
        np.savez(fh, attempts=np.asarray(matrix["attempts"], dtype=np.int64),
                 successes=np.asarray(matrix["successes"], dtype=np.int64),
                 class_names=np.asarray(matrix["class_names"]))
    return path
