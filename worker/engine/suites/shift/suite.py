"""Suite ``shift`` (docs/suites/shift.md): accuracy on a second dataset, controlled for the model's
uncertainty (after Anzaku et al., arXiv 2209.01848).

Shards: shard i of k classifies its share of the audit's samples (the reference) and the i-th of
k contiguous slices of the second dataset's seeded sample (``load_samples(part=(i, k))``), so the
k shards together see both samples exactly once, whichever worker runs which. A shard keeps per-image
records only (uncertainties and correctness); ``finalize`` sorts them by sample id and computes
bins, drops and bootstrap intervals once, so every shard count gives the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import torch

from ...classifier import Classifier
from ...datasets import DataRoots, DatasetRef, load_samples
from ...errors import AuditInputError, SpecError
from ...metrics import Unit, metric, proportion
from ...params import Param, ParamKind, ParamSchema
from ...samples import SampleSet
from ..base import Partial, Suite, SuiteContext, SuiteResult, Warning_
from . import binning


class Uncertainty(StrEnum):
    """What bins the images: 1 − the largest softmax probability, or the predictive entropy (nats)."""

    MAX_SOFTMAX = "max_softmax"
    ENTROPY = "entropy"


#: the record field of each measure
FIELD = {Uncertainty.MAX_SOFTMAX: "one_minus_msp", Uncertainty.ENTROPY: "entropy"}
SETS = ("reference", "other")


class ShiftSuite(Suite):
    """Accuracy on the audit's dataset (reference) and a second one, per uncertainty bin, and the drop
    between them, naive and controlled for the uncertainty distribution."""

    name = "shift"
    description = ("Accuracy under dataset shift controlled for uncertainty (Anzaku et al. 2022): the accuracy "
                   "drop from the audit's dataset to a second one, naive and reweighted to the reference's "
                   "distribution of predictive uncertainty, with accuracy per uncertainty bin on both.")
    headline = ("drop", "controlled_drop", "accuracy.*")
    dataset_params = ("dataset",)
    params = ParamSchema((
        Param("dataset", ParamKind.JSON, None, "the second dataset: a reference in the string or object form of "
              "the audit's dataset (required; its own n_samples and seed, default 100 and 0; over the API its "
              "paths lie under the data roots like the audit's)", nullable=True),
        Param("uncertainty", ParamKind.CHOICE, Uncertainty.MAX_SOFTMAX.value, "what bins the images: "
              "max_softmax (1 - the largest softmax probability) or entropy (of the softmax, in nats)",
              enum=Uncertainty),
        Param("bins", ParamKind.INT, 10, "quantile bins of uncertainty, fixed on the reference", minimum=2,
              maximum=50),
        Param("resamples", ParamKind.INT, 1000, "bootstrap resamples of the 95% intervals of both drops",
              minimum=100, maximum=10_000),
    ))
    demo_params = {"dataset": {"kind": "builtin", "name": "digits", "split": "train", "n_samples": 50},
                   "bins": 5}

    def validate_params(self, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        params = super().validate_params(raw)
        if params["dataset"] is not None:
            try:
                params["dataset"] = DatasetRef.parse(params["dataset"]).to_dict()
            except AuditInputError as exc:
                raise SpecError(f"shift.dataset: {exc.message}", errors={"shift.dataset": exc.message}) from None
        return params

    def check_inputs(self, params: dict[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        if params["dataset"] is None:
            raise SpecError("shift.dataset: give the second dataset (e.g. --set shift.dataset=builtin:digits:train)",
                            errors={"shift.dataset": "required"})

    def metric_paths(self, params: dict[str, Any]) -> list[str]:
        paths = ["accuracy.reference", "accuracy.other", "drop", "controlled_drop", "coverage",
                 "mean_uncertainty.reference", "mean_uncertainty.other"]
        for k in range(params["bins"]):
            paths += [f"bins.{k}.{leaf}" for leaf in ("reference", "other", "count_reference", "count_other")]
        return paths

    def run(self, ctx: SuiteContext, samples: SampleSet, params: dict[str, Any]) -> Partial:
        self.check_inputs(params, samples, ctx.classifier)
        from ...runner import align_labels  # the runner imports the suites: a top-level import is a cycle

        clf = ctx.classifier
        reference = _records(clf, samples, lambda f: ctx.progress(0.5 * f))
        other = load_samples(DatasetRef.parse(params["dataset"]), roots=ctx.roots or DataRoots.from_env(),
                             num_classes=clf.num_classes, part=(ctx.shard, ctx.shards))
        warnings = align_labels(other, clf.card)
        return {"reference": reference, "other": _records(clf, other, lambda f: ctx.progress(0.5 + 0.5 * f)),
                "warnings": warnings}

    def merge(self, a: Partial, b: Partial) -> Partial:
        codes = {w["code"] for w in a["warnings"]}
        return {"reference": {**a["reference"], **b["reference"]}, "other": {**a["other"], **b["other"]},
                "warnings": a["warnings"] + [w for w in b["warnings"] if w["code"] not in codes]}

    def finalize(self, ctx: SuiteContext, partial: Partial, params: dict[str, Any]) -> SuiteResult:
        measure = Uncertainty(params["uncertainty"])
        field = FIELD[measure]
        # sorted by sample id: the bootstrap's draws then never depend on how the shards were cut
        rows = {s: [partial[s][sid] for sid in sorted(partial[s])] for s in SETS}
        u = {s: torch.tensor([r[field] for r in rows[s]], dtype=torch.float64) for s in SETS}
        c = {s: torch.tensor([bool(r["correct"]) for r in rows[s]], dtype=torch.bool) for s in SETS}
        inner = binning.edges(u["reference"].tolist(), params["bins"])
        tab = binning.table(u["reference"], c["reference"], u["other"], c["other"], inner)
        ci_naive, ci_controlled = binning.bootstrap(u["reference"], c["reference"], u["other"], c["other"], inner,
                                                    params["resamples"], ctx.generator())
        unit = Unit.NATS if measure is Uncertainty.ENTROPY else Unit.FRACTION
        n_ref, n_other = tab.n_ref, tab.n_other
        interval = {"ci95_method": "percentile bootstrap", "resamples": params["resamples"], "better": "lower"}
        metrics: dict[str, Any] = {
            "accuracy": {
                "reference": proportion(tab.accuracy_ref(), n_ref, "top-1 accuracy on the audit's dataset "
                                        "(the reference)", better="higher"),
                "other": proportion(tab.accuracy_other(), n_other, "top-1 accuracy on the second dataset",
                                    better="higher"),
            },
            "drop": metric(tab.drop(), Unit.FRACTION, n_ref + n_other, "naive accuracy drop: accuracy on the "
                           "reference minus accuracy on the second dataset (negative: the second scores higher)",
                           ci95=_pair(ci_naive), **interval),
            "controlled_drop": metric(tab.controlled_drop(), Unit.FRACTION, n_ref + n_other,
                                      "accuracy drop controlled for uncertainty: reference accuracy minus the "
                                      "second dataset's per-bin accuracies reweighted to the reference's bin shares "
                                      "(bins the second dataset leaves empty are left out of both)",
                                      ci95=_pair(ci_controlled), uncertainty=measure.value, bins=params["bins"],
                                      **interval),
            "coverage": metric(tab.coverage(), Unit.FRACTION, n_ref, "share of the reference in bins that also "
                               "hold images of the second dataset (the controlled drop's support)", better="higher"),
            "mean_uncertainty": {s: metric(_mean(u[s]), unit, len(rows[s]), f"mean {_measure_words(measure)} on the "
                                           f"{'reference' if s == 'reference' else 'second dataset'}",
                                           better="neither") for s in SETS},
            "bins": _bin_leaves(tab, inner, unit, measure),
        }
        warnings = list(partial["warnings"])
        coverage = tab.coverage()
        if coverage is not None and coverage < 1.0:
            empty = [k for k in range(params["bins"]) if tab.count_ref[k] and not tab.count_other[k]]
            warnings.append(Warning_("shift_empty_bins", f"the second dataset has no image in uncertainty bins "
                                     f"{empty}, which hold {1 - coverage:.1%} of the reference: the controlled "
                                     "drop leaves them out", {"bins": empty, "coverage": coverage}).to_dict())
        requested = int(params["dataset"]["n_samples"])
        if n_other < requested:
            warnings.append(Warning_("n_samples_above_dataset", f"{requested} samples of the second dataset were asked "
                                     f"for but it has {n_other} (after any class filter); all {n_other} are used",
                                     {"dataset": "shift", "requested": requested, "available": n_other}).to_dict())
        metadata = {"dataset": params["dataset"], "uncertainty": measure.value, "edges": inner}
        return SuiteResult(metrics=metrics, warnings=warnings, extra={"metadata": metadata})


def _records(clf: Classifier, samples: SampleSet, progress: Any) -> dict[str, dict[str, Any]]:
    """Per image: 1 − max softmax, entropy (nats) and correctness, from one forward pass in double."""
    x = samples.prepared(clf.card)
    n = len(samples)
    step = max(1, clf.batch.size)
    chunks = []
    for start in range(0, n, step):
        chunks.append(clf.logits(x[start:start + step]))
        progress(min(n, start + step) / max(1, n))
    logits = torch.cat(chunks) if chunks else torch.zeros(0, clf.num_classes, device=clf.device)
    logp = torch.log_softmax(logits.double(), dim=1)
    probs = logp.exp()
    conf, pred = probs.max(dim=1)
    entropy = -(probs * logp).nan_to_num(0.0).sum(dim=1)  # 0 * log 0 = 0
    labels = samples.labels.to(pred.device)
    return {sid: {"one_minus_msp": 1.0 - float(cf), "entropy": float(h), "correct": bool(ok)}
            for sid, cf, h, ok in zip(samples.ids, conf.tolist(), entropy.tolist(), pred.eq(labels).tolist())}


def _bin_leaves(tab: binning.Table, inner: list[float], unit: Unit, measure: Uncertainty) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in range(len(tab.count_ref)):
        span = [inner[k - 1] if k > 0 else None, inner[k] if k < len(inner) else None]
        where = f"uncertainty bin {k} ({_span_words(span)} {_measure_words(measure)})"
        out[str(k)] = {
            "reference": proportion(tab.correct_ref[k] / tab.count_ref[k] if tab.count_ref[k] else None,
                                    tab.count_ref[k], f"accuracy on the reference in {where}", uncertainty=span,
                                    better="higher"),
            "other": proportion(tab.correct_other[k] / tab.count_other[k] if tab.count_other[k] else None,
                                tab.count_other[k], f"accuracy on the second dataset in {where}", uncertainty=span,
                                better="higher"),
            "count_reference": metric(tab.count_ref[k], Unit.COUNT, tab.n_ref, f"reference images in {where}",
                                      better="neither"),
            "count_other": metric(tab.count_other[k], Unit.COUNT, tab.n_other, f"second-dataset images in {where}",
                                  better="neither"),
        }
    return out


def _measure_words(measure: Uncertainty) -> str:
    return "1 - max softmax" if measure is Uncertainty.MAX_SOFTMAX else "entropy"


def _span_words(span: list[float | None]) -> str:
    low, high = span
    if low is None and high is None:
        return "all"
    if low is None:
        return f"<= {high:.4g}"
    if high is None:
        return f"> {low:.4g}"
    return f"({low:.4g}, {high:.4g}]"


def _mean(values: torch.Tensor) -> float | None:
    return math.fsum(values.tolist()) / values.numel() if values.numel() else None


def _pair(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]
