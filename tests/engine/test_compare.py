"""Comparing two reports: direction-aware regressions first, timings last, one-sided metrics named."""

import copy

import pytest

from worker.engine.compare import compare_reports
from worker.engine.metrics import Better, Unit, better, metric, proportion


def report(**suites):
    return {"audit": {"id": None, "finished": "2026-12-01T00:00:00Z",
                      "spec": {"dataset": {"kind": "builtin", "name": "digits", "n_samples": 100}, "seed": 0,
                               "suites": {n: {} for n in suites}}},
            "model": {"sha256": "ab" * 32}, "dataset": {"n_samples": 100},
            "environment": {"robustaudit": "1", "torch": "2"}, "verdict": "pass",
            "suites": {name: {"metrics": m} for name, m in suites.items()}}


@pytest.fixture()
def pair():
    before = report(
        clean={"top1": proportion(0.9, 100, "t"), "ece": metric(0.05, Unit.FRACTION, 100, "e"),
               "nll": metric(0.3, Unit.NATS, 100, "n"), "mean_confidence": metric(0.8, Unit.FRACTION, 100, "c"),
               "per_class": {"a": proportion(0.8, 50, "a"), "b": proportion(1.0, 50, "b")}},
        attacks={"robust_accuracy": {"linf": {"eps_0p03137": proportion(0.4, 100, "r", eps=8 / 255)}},
                 "targeted": {"success_rate": proportion(0.2, 100, "s")}, "seconds": metric(10, Unit.SECONDS, 1, "s"),
                 "gone": metric(1, Unit.COUNT, 1, "g")})
    after = copy.deepcopy(before)
    c, a = after["suites"]["clean"]["metrics"], after["suites"]["attacks"]["metrics"]
    c["top1"] = proportion(0.88, 100, "t")                      # -0.02, higher is better: regression
    c["ece"] = metric(0.04, Unit.FRACTION, 100, "e")            # -0.01, lower is better: improvement
    c["mean_confidence"] = metric(0.7, Unit.FRACTION, 100, "c")  # neither way: changed
    c["per_class"]["b"] = proportion(0.9, 50, "b")              # -0.1: the largest regression
    a["targeted"]["success_rate"] = proportion(0.25, 100, "s")  # +0.05, lower is better: regression
    a["seconds"] = metric(12, Unit.SECONDS, 1, "s")             # timing
    del a["gone"]
    a["new"] = metric(3, Unit.COUNT, 1, "n")
    after["verdict"] = "fail"
    return before, after


def test_regressions_first_largest_first_then_changes_improvements_timings(pair):
    result = compare_reports(*pair)
    got = [(c["metric"], c["change"]) for c in result["changes"]]
    assert got == [("clean.per_class.b", "regression"), ("attacks.targeted.success_rate", "regression"),
                   ("clean.top1", "regression"), ("clean.mean_confidence", "changed"),
                   ("clean.ece", "improvement"), ("attacks.seconds", "timing"),
                   ("attacks.new", "added"), ("attacks.gone", "removed")]
    assert result["counts"] == {"regression": 3, "changed": 1, "improvement": 1, "timing": 1, "added": 1,
                                "removed": 1, "unchanged": 3}
    top = result["changes"][0]
    assert (top["baseline"], top["value"], top["better"]) == (1.0, 0.9, "higher")
    assert top["delta"] == pytest.approx(-0.1)
    assert result["verdict"] == {"baseline": "pass", "current": "fail"}
    assert result["warnings"] == []


def test_outside_the_baseline_interval_is_flagged(pair):
    rows = {c["metric"]: c for c in compare_reports(*pair)["changes"]}
    assert rows["clean.top1"]["outside_baseline_ci95"] is False  # 0.88 is inside the 95% interval of 90/100
    assert rows["clean.per_class.b"]["outside_baseline_ci95"] is True  # 0.9 is below the interval of 50/50
    assert rows["clean.ece"]["outside_baseline_ci95"] is None  # not a share: no interval


def test_identical_reports_have_no_changes_and_different_samples_are_warned(pair):
    before, _ = pair
    same = compare_reports(before, copy.deepcopy(before))
    assert same["changes"] == [] and same["counts"]["unchanged"] == 10
    other = copy.deepcopy(before)
    other["audit"]["spec"]["dataset"]["n_samples"] = 200
    other["audit"]["spec"]["seed"] = 3
    warnings = compare_reports(before, other)["warnings"]
    assert any("different samples" in w for w in warnings) and any("seeds" in w for w in warnings)


@pytest.mark.parametrize("path, leaf, expected", [
    ("clean.top1", {"unit": "fraction"}, Better.HIGHER),
    ("clean.per_class.error", {"unit": "fraction"}, Better.HIGHER),  # a class named "error" is still an accuracy
    ("clean.ece", {"unit": "fraction"}, Better.LOWER),
    ("clean.nll", {"unit": "nats"}, Better.LOWER),
    ("attacks.targeted.modify.clean", {"unit": "fraction"}, Better.LOWER),
    ("attacks.robust_accuracy.l2.eps_0p5", {"unit": "fraction"}, Better.HIGHER),
    ("attacks.minimal_perturbation.linf.median", {"unit": "linf_norm"}, Better.HIGHER),
    ("attacks.minimal_perturbation.linf.found", {"unit": "fraction"}, Better.LOWER),
    ("perturbation.corruptions.fog.s3", {"unit": "fraction"}, Better.HIGHER),
    ("perturbation.corruptions.fog.error", {"unit": "fraction"}, Better.LOWER),
    ("fragile.r12_5.strict_shift.overall.mean", {"unit": "fraction"}, Better.LOWER),
    ("fragile.r12_5.region_accuracy.mean", {"unit": "fraction"}, Better.HIGHER),
    ("attacks.targeted.spearman", {"unit": "correlation"}, Better.NEITHER),
    ("clean.top1", {"unit": "fraction", "better": "lower"}, Better.LOWER),  # the leaf's own word wins
])
def test_which_way_a_metric_improves(path, leaf, expected):
    assert better(path, leaf) is expected
