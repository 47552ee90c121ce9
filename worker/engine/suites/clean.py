"""Suite ``clean`` (docs/suites/clean.md): accuracy and calibration on the unmodified images.

Its per-sample records (prediction, top-k, confidence, margin) are published as
``ctx.shared["clean"]`` for the other suites. When the dataset carries label sets, each record
also holds the sample's set and its multi-label outcomes (:mod:`.multilabel`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..metrics import Unit, metric, proportion
from ..params import Param, ParamKind, ParamSchema
from ..samples import SampleSet
from .base import Partial, Suite, SuiteContext, SuiteResult, Warning_
from .multilabel import MULTILABEL_PATHS, multilabel_metrics, multilabel_records


class CleanSuite(Suite):
    """Top-1/top-5 accuracy, per-class accuracy, confidence, ECE and NLL."""

    name = "clean"
    description = "Accuracy, per-class accuracy, confidence and calibration on the clean images."
    requires = ()
    headline = ("top1", "top5", "ece")
    params = ParamSchema((
        Param("ece_bins", ParamKind.INT, 15, "equal-width confidence bins for the expected calibration error",
              minimum=2, maximum=100),
    ))

    def metric_paths(self, params: dict[str, Any]) -> list[str]:
        return ["top1", "top5", "mean_confidence", "ece", "nll", "per_class.{class}", *MULTILABEL_PATHS]

    def run(self, ctx: SuiteContext, samples: SampleSet, params: dict[str, Any]) -> Partial:
        clf = ctx.classifier
        c = clf.num_classes
        k = min(5, c)
        x = samples.prepared(clf.card)
        labels = samples.labels.to(clf.device)
        chunks = []
        n = len(samples)
        step = max(1, clf.batch.size)
        for start in range(0, n, step):
            chunks.append(clf.logits(x[start:start + step]))
            ctx.progress(min(n, start + step) / max(1, n))
        logits = torch.cat(chunks) if chunks else torch.zeros(0, c, device=clf.device)
        logp = torch.log_softmax(logits.double(), dim=1)
        probs = logp.exp()
        conf, pred = probs.max(dim=1)
        topk = probs.topk(k, dim=1).indices
        correct = pred.eq(labels)
        in_topk = topk.eq(labels[:, None]).any(dim=1)
        true_p = probs.gather(1, labels[:, None]).squeeze(1)
        other = probs.clone()
        other.scatter_(1, labels[:, None], -1.0)
        margin = true_p - other.max(dim=1).values
        nll = -logp.gather(1, labels[:, None]).squeeze(1)
        records = {
            sid: {"label": int(y), "pred": int(p), "correct": bool(ok), "in_topk": bool(tk_ok),
                  "confidence": float(cf), "true_prob": float(tp), "margin": float(m), "nll": float(nl),
                  "topk": [int(t) for t in tk]}
            for sid, y, p, ok, tk_ok, cf, tp, m, nl, tk in zip(
                samples.ids, labels.tolist(), pred.tolist(), correct.tolist(), in_topk.tolist(), conf.tolist(),
                true_p.tolist(), margin.tolist(), nll.tolist(), topk.tolist())
        }
        if samples.label_sets is not None:
            for sid, extra in zip(samples.ids, multilabel_records(probs, pred, samples.label_sets)):
                records[sid].update(extra)
        # Only per-sample values: every aggregate is computed once, in finalize, with exactly
        # rounded sums, so any split of the samples gives bit-identical metrics.
        return {"k": k, "samples": records}

    def merge(self, a: Partial, b: Partial) -> Partial:
        return {"k": a["k"], "samples": {**a["samples"], **b["samples"]}}

    def finalize(self, ctx: SuiteContext, partial: Partial, params: dict[str, Any]) -> SuiteResult:
        records = list(partial["samples"].values())
        n = len(records)
        names = list(ctx.classifier.card.class_names)
        k = partial["k"]
        bins = params["ece_bins"]
        metrics = {
            "top1": proportion(_mean([r["correct"] for r in records]), n, "top-1 accuracy"),
            "top5": proportion(_mean([r["in_topk"] for r in records]), n,
                           f"top-{k} accuracy (k = min(5, number of classes))", k=k),
            "mean_confidence": metric(_mean([r["confidence"] for r in records]), Unit.FRACTION, n,
                                      "mean of the maximum softmax probability"),
            "ece": metric(expected_calibration_error(records, bins), Unit.FRACTION, n,
                          "expected calibration error, equal-width bins on the maximum softmax "
                          "probability", bins=bins),
            "nll": metric(_mean([r["nll"] for r in records]), Unit.NATS, n,
                          "mean negative log-likelihood of the true class"),
            "per_class": {
                names[c]: proportion(_mean(hits), len(hits), f"top-1 accuracy on class {names[c]!r}")
                for c, hits in sorted(_by_class(records).items())
            },
        }
        if records and "label_set" in records[0]:
            metrics["multilabel"] = multilabel_metrics(records)
        warnings = []
        top1 = metrics["top1"]["value"]
        chance = 1.0 / ctx.classifier.num_classes
        if top1 is not None and top1 <= 1.5 * chance:
            warnings.append(Warning_("clean_accuracy_near_chance",
                                     f"top-1 accuracy {top1:.3f} is near chance ({chance:.3f}): check the "
                                     "model card's mean/std, class order and input size",
                                     {"top1": top1, "chance": chance}).to_dict())
        ctx.shared["clean"] = partial["samples"]
        return SuiteResult(metrics=metrics, warnings=warnings)


def _mean(values: list[float] | list[bool]) -> float | None:
    return math.fsum(float(v) for v in values) / len(values) if values else None


def _by_class(records: list[dict[str, Any]]) -> dict[int, list[bool]]:
    out: dict[int, list[bool]] = {}
    for r in records:
        out.setdefault(r["label"], []).append(r["correct"])
    return out


def expected_calibration_error(records: list[dict[str, Any]], bins: int) -> float | None:
    """ECE over equal-width bins (lo, hi] of the maximum softmax probability."""
    if not records:
        return None
    conf: dict[int, list[float]] = {}
    hits: dict[int, list[bool]] = {}
    for r in records:
        b = min(bins, max(1, math.ceil(r["confidence"] * bins))) - 1
        conf.setdefault(b, []).append(r["confidence"])
        hits.setdefault(b, []).append(r["correct"])
    gaps = [abs(math.fsum(conf[b]) - sum(hits[b])) for b in conf]
    return math.fsum(gaps) / len(records)
