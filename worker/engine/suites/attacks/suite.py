"""Suite ``attacks`` (docs/suites/attacks.md: parts 2a-2g and the sanity flags).

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
from ...params import ParamSchema
from ...samples import SampleSet
from ..base import Partial, Suite, SuiteContext, SuiteResult
from ..parts import CompositeMixin, Part, part_params
from . import multilabel
from .common import Adversarials, Final, Sample, Shard, in_batches
from .loss_comparison import LossComparisonPart
from .misclassification import misclassification_metrics
from .params import CORE, MOVED, attacks_for, budgets, check, eps_key, with_set_defaults
from .plots import robust_accuracy_plot
from .regional import RegionalPart
from .robustness import Cost, CostTable, merge_costs, robustness_metrics, run_untargeted
from .saliency import SaliencyPart
from .sanity import eot_summary, probe, sanity_warnings, unreliable_metrics
from .suitability import suitability_metrics, suitability_warnings
from .targeted import TargetedPart
from .transfer import TransferPart

#: the parts after the untargeted core (2a), in run order; a new part is one module and one entry
PARTS: tuple[Part[Shard, Final], ...] = (TargetedPart(), RegionalPart(), LossComparisonPart(), TransferPart(),
                                         SaliencyPart())
#: progress units of the untargeted core against a part's
CORE_UNITS = 3


class AttacksSuite(CompositeMixin[Shard, Final], Suite):
    """Robust accuracy, minimal perturbations, targeted modify/mimic, misclassification
    classes, source-image suitability and sanity flags."""

    name = "attacks"
    description = ("Adversarial robustness: robust accuracy per norm and budget (worst case over an attack set: "
                   "by default PGD, FGSM, CW-L2 and the gradient-free Square; or AutoAttack's set), EoT for "
                   "randomised models, "
                   "minimal perturbations (FMN), targeted all-pairs modify/mimic rates, misclassification classes, "
                   "source-image suitability, sanity flags; optionally regional masks, a loss comparison and "
                   "transferability from a surrogate model.")
    parts = PARTS
    params = ParamSchema(CORE.params + part_params(PARTS), moved=MOVED)
    headline = ("robust_accuracy.*.*", "minimal_perturbation.*.median", "targeted.success_rate")
    demo_params = {"linf_eps": [0.05, 0.1, 0.2], "l2_eps": [0.5, 1.0, 2.0],
                   "attack_params": {"pgd": {"steps": 10}, "cw": {"steps": 20, "binary_search_steps": 2},
                                     "fmn": {"steps": 50}, "square": {"n_queries": 300}},
                   "targeted": {"eps": 0.2, "steps": 10, "fraction": 0.5},
                   "regional": {"enabled": True, "steps": 20, "step": 0.03},
                   "loss_comparison": {"enabled": True, "steps": 20, "step": 0.02}}

    def validate_params(self, raw: Any) -> dict[str, Any]:
        params = self.check_parts(check(super().validate_params(with_set_defaults(raw))))
        if params[multilabel.KEY] is None:  # the default, left out: without label sets the report is unchanged
            del params[multilabel.KEY]
        return params

    def check_inputs(self, params: dict[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        """Masks that select no pixel, a surrogate that does not fit and multi-label success without
        label sets fail before any work."""
        multilabel.check_inputs(params, samples)
        self.check_part_inputs(params, samples, classifier)

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
        return paths + multilabel.metric_paths(params) + self.part_paths(params)

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
        records: dict[str, Sample] = {}
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
            records[sid] = Sample(id=sid, label=int(c["label"]), correct=bool(c["correct"]),
                                  margin=float(c["margin"]), topk=[int(t) for t in c["topk"]], sanity=facts[i])
        attacked = torch.tensor([records[s].correct for s in ids], dtype=torch.bool, device=clf.device)
        eot = _eot_for(params["eot"], sum(f.randomised for f in facts), clf)
        for sid in ids:
            records[sid].eot = eot is not None
        sets = (multilabel.sets_by_id(samples) if multilabel.switched_on(params, samples.label_sets is not None)
                else None)
        # progress: rough shares of the work (the untargeted core 3 units, each part its own)
        total = CORE_UNITS + self.part_units(params)
        core = CORE_UNITS if sets is None else CORE_UNITS - 1  # with label sets: a unit for the valid alternatives
        # the core's successful adversarials, kept only for a part that reads them (saliency)
        keep = Adversarials() if any(getattr(p, "uses_adversarials", False) for p in self.enabled_parts(params)) \
            else None
        untargeted, cost = run_untargeted(clf, x, y, ids, attacked, params, ctx.seed,
                                          lambda f: ctx.progress(core * f / total), eot, label_sets=sets,
                                          keep=keep)
        for sid in ids:
            records[sid].attacks = untargeted[sid]
        if sets is not None:
            for sid in ids:
                records[sid].label_set = sorted(sets[sid])
            extra = multilabel.run_valid_alternatives(clf, x, ids, records, sets, params, ctx.seed,
                                                      lambda f: ctx.progress((core + f) / total), eot)
            if extra is not None:
                cost = merge_costs(cost, extra)

        def inputs(part: Part[Shard, Final], progress: Any) -> Shard:
            return Shard(ctx=ctx, params=params, x=x, y=y, ids=ids, attacked=attacked, progress=progress,
                         population=samples.population, adversarials=keep)

        parts = self.run_parts(params, inputs, ctx.progress, start=CORE_UNITS, total=total)
        return {"samples": {sid: r.to_json() for sid, r in records.items()}, "cost": cost, "parts": parts}

    def merge(self, a: Partial, b: Partial) -> Partial:
        return {"samples": {**a["samples"], **b["samples"]}, "cost": merge_costs(a["cost"], b["cost"]),
                "parts": self.merge_parts(a["parts"], b["parts"])}

    def finalize(self, ctx: SuiteContext, partial: Partial, params: dict[str, Any]) -> SuiteResult:
        # each sample's core facts with its record of every part under the part's name (None: not attacked)
        parts = partial["parts"]
        records = [Sample.from_json(r, parts={name: per.get(sid) for name, per in parts.items()})
                   for sid, r in partial["samples"].items()]
        card = ctx.classifier.card
        names = list(card.class_names) or [str(i) for i in range(ctx.classifier.num_classes)]
        hierarchy = dict(card.hierarchy)
        n = len(records)
        metrics: dict[str, Any] = {
            "not_attacked": metric(sum(not r.correct for r in records), Unit.COUNT, n,
                                   "samples misclassified on the clean image: not attacked, counted as non-robust "
                                   "at every budget"),
        }
        metrics.update(robustness_metrics(records, params, names))
        metrics["misclassification"] = misclassification_metrics(records, params, names, hierarchy)
        suitability, flags = suitability_metrics(records, params)
        metrics["suitability"] = suitability
        artifacts = []
        store = ctx.artifacts
        final = Final(ctx=ctx, suite=self.name, params=params, records=records, class_names=names, hierarchy=hierarchy)
        results = self.finalize_parts(final, parts)
        for name, res in results:
            if res.metrics is not None:  # a part that skipped says why in its warnings
                metrics[name] = res.metrics
        with_sets = bool(records) and records[0].label_set is not None
        if with_sets:
            metrics["multilabel"] = multilabel.multilabel_metrics(records, params)
        if n:
            artifacts.append(store.relative(robust_accuracy_plot(store.path(self.name, "robust_accuracy.png"),
                                                                 metrics, params)))
        path = store.path(self.name, "suitability_flags.json")
        path.write_text(json.dumps(flags, indent=1))
        artifacts.append(store.relative(path))
        for _, res in results:
            artifacts += res.artifacts
        warnings = sanity_warnings(records, params, ctx.classifier.num_classes)
        warnings += suitability_warnings(records, params, metrics)
        metadata = {"attacks": {norm: attacks_for(params, norm) for norm in params["norms"]},
                    "cascade": params["cascade"], "eot": eot_summary(records, params),
                    "cost": _rounded(partial["cost"])}
        for name, res in results:  # a part's warnings after the sanity flags; its notes under its name
            warnings += res.warnings
            if res.extra:
                metadata[name] = res.extra
        if with_sets:
            metadata[multilabel.KEY] = True
        extra: dict[str, Any] = {"metadata": metadata}
        produced = [p for p in self.metric_paths(params) if with_sets or not p.startswith("multilabel.")]
        unreliable = unreliable_metrics(records, warnings, params, produced)
        if unreliable is not None:
            extra["unreliable"] = unreliable
        return SuiteResult(metrics=metrics, artifacts=artifacts, warnings=warnings, extra=extra)


def _eot_for(cfg: dict[str, Any], randomised: int, clf: Classifier) -> EoT | None:
    """EoT when the request asks for it, or ("auto") when this shard's probe saw a randomised model."""
    on = cfg["enabled"] is True or (cfg["enabled"] == "auto" and randomised > 0)
    return EoT(clf, grad_samples=cfg["grad_samples"], passes=cfg["passes"]) if on else None


def _rounded(cost: CostTable) -> CostTable:
    return {norm: {name: {**c, "seconds": round(Cost.from_json(c).seconds, 3)} for name, c in per.items()}
            for norm, per in cost.items()}

