import math

import pytest
import torch

from worker.engine.errors import SpecError
from worker.engine.gates import (
    Baseline,
    BaselineOp,
    Gate,
    GateOp,
    Relative,
    Verdict,
    baseline_gates,
    check_gates,
    evaluate_gates,
    verdict_of,
)
from worker.engine.metrics import Z95, Unit, metric, proportion, wilson_interval

CATALOG = {"clean": ["top1", "top5", "per_class.{class}"]}


@pytest.mark.parametrize("text, metric_name, op, thr", [
    ("clean.top1>=0.9", "clean.top1", GateOp.GE, 0.9),
    (" clean.top1 <  1e-1 ", "clean.top1", GateOp.LT, 0.1),
    ("clean.per_class.7 != 0", "clean.per_class.7", GateOp.NE, 0.0),
])
def test_parse_string(text, metric_name, op, thr):
    g = Gate.parse(text)
    assert (g.metric, g.op, g.threshold) == (metric_name, op, thr)


def test_parse_object_round_trip():
    g = Gate.parse({"metric": "clean.top1", "op": ">", "threshold": 0.5})
    assert Gate.parse(g.to_dict()) == g


@pytest.mark.parametrize("bad", [
    "clean.top1 => 0.9", "clean.top1 >= high", "top1 >= 0.9", "", 42,
    {"metric": "clean.top1", "op": "~", "threshold": 1}, {"metric": "clean.top1", "threshold": 1},
    {"metric": "clean.top1", "op": ">=", "threshold": "x"}, {"metric": "clean.top1", "op": ">=", "threshold": True},
])
def test_parse_errors(bad):
    with pytest.raises(SpecError):
        Gate.parse(bad)


def test_check_refuses_unknown_metric_and_unrequested_suite():
    check_gates([Gate.parse("clean.top1>=0.5"), Gate.parse("clean.per_class.cat>=0.5")], CATALOG)
    with pytest.raises(SpecError, match="does not produce"):
        check_gates([Gate.parse("clean.top3>=0.5")], CATALOG)
    with pytest.raises(SpecError, match="not requested"):
        check_gates([Gate.parse("fragile.r20.loose_shift.mean<=0.1")], CATALOG)
    with pytest.raises(SpecError, match="does not produce"):
        check_gates([Gate.parse("clean.per_class.a.b>=0.5")], CATALOG)


def test_evaluate_each_operator_and_missing_values():
    metrics = {"clean": {"top1": metric(0.9, Unit.FRACTION, 10, "t"), "top5": metric(None, Unit.FRACTION, 0, "t")}}
    rows = evaluate_gates([Gate.parse(s) for s in (
        "clean.top1>=0.9", "clean.top1>0.9", "clean.top1<=0.9", "clean.top1<0.95", "clean.top1==0.9",
        "clean.top1!=0.9", "clean.top5>=0", "clean.per_class.x>=0")], metrics)
    assert [r["passed"] for r in rows] == [True, False, True, True, True, False, False, False]
    assert rows[6]["reason"] == "metric undefined for this sample"
    assert rows[7]["reason"] == "metric not present in the report"
    assert rows[0]["value"] == 0.9


# --- 95% intervals -----------------------------------------------------------------------------

@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (1, 1), (57, 200)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    """Wilson's bounds are the p where |k/n - p| = z sqrt(p (1 - p) / n); at 0/n and n/n one is 0 or 1."""
    low, high = wilson_interval(k, n)
    p_hat = k / n
    assert 0 <= low <= p_hat <= high <= 1
    for bound in (low, high):
        if bound in (0.0, 1.0) and bound == p_hat:
            continue
        assert abs(abs(p_hat - bound) - Z95 * math.sqrt(bound * (1 - bound) / n)) < 1e-9
    assert wilson_interval(0, 0) is None


def test_proportion_leaf_carries_its_interval_and_method():
    leaf = proportion(0.3, 10, "share")
    assert leaf["unit"] == "fraction" and leaf["ci95_method"] == "wilson"
    assert leaf["ci95"] == pytest.approx([0.10779, 0.60322], abs=1e-5)  # the textbook 3/10 interval
    assert proportion(None, 0, "share")["ci95"] is None
    assert "ci95" not in metric(0.3, Unit.FRACTION, 10, "a mean, not a share")


def test_gate_on_an_interval_bound():
    metrics = {"clean": {"top1": proportion(0.8, 100, "t"), "ece": metric(0.1, Unit.FRACTION, 100, "e")}}
    check_gates([Gate.parse("clean.top1.ci95_low >= 0.5"), Gate.parse("clean.top1.ci95_high<=1")], CATALOG)
    with pytest.raises(SpecError, match="does not produce"):
        check_gates([Gate.parse("clean.top1.ci95_mid >= 0.5")], CATALOG)
    low, high = metrics["clean"]["top1"]["ci95"]
    rows = evaluate_gates([Gate.parse("clean.top1.ci95_low >= 0.75"), Gate.parse("clean.top1.ci95_high <= 0.85"),
                           Gate.parse("clean.ece.ci95_low >= 0")], metrics)
    assert [r["value"] for r in rows[:2]] == [low, high]
    assert [r["passed"] for r in rows] == [low >= 0.75, high <= 0.85, False]
    assert "no 95% interval" in rows[2]["reason"]


def test_gate_on_few_samples_says_so_and_keeps_its_verdict():
    metrics = {"clean": {"top1": proportion(0.9, 10, "t"), "top5": proportion(0.9, 2000, "t"),
                         "ece": metric(0.1, Unit.FRACTION, 12, "e")}}
    small, big, ece = evaluate_gates([Gate.parse("clean.top1>=0.5"), Gate.parse("clean.top5>=0.5"),
                                      Gate.parse("clean.ece<=0.5")], metrics)
    assert small["passed"] and small["few_samples"] and "10 samples" in small["note"] and "interval" in small["note"]
    assert big["passed"] and "few_samples" not in big and "note" not in big
    assert ece["few_samples"] and "fewer than 30" in ece["note"]


# --- gates against a baseline ------------------------------------------------------------------

@pytest.mark.parametrize("text, op, amount, shown", [
    ("clean.top1 >= baseline - 0.05", BaselineOp.MINUS, 0.05, "clean.top1 >= baseline - 0.05"),
    ("clean.ece<=baseline*1.1", BaselineOp.TIMES, 1.1, "clean.ece <= baseline * 1.1"),
    ("clean.top1 > baseline", BaselineOp.PLUS, 0.0, "clean.top1 > baseline"),
    ("clean.top1 < baseline + 1e-2", BaselineOp.PLUS, 0.01, "clean.top1 < baseline + 0.01"),
])
def test_parse_baseline_gates(text, op, amount, shown):
    g = Gate.parse(text)
    assert g.relative == Relative(op, amount) and g.threshold is None and str(g) == shown
    assert Gate.parse(g.to_dict()) == g
    assert Gate.parse({"metric": "clean.top1", "op": ">=", "threshold": "baseline - 0.05"}).relative == \
        Relative(BaselineOp.MINUS, 0.05)
    assert baseline_gates([g, Gate.parse("clean.top1 >= 0.5")]) == [g]


@pytest.mark.parametrize("bad", ["clean.top1 >= baseline / 2", "clean.top1 >= baseline - x", "clean.top1 >= base",
                                 "clean.top1 >= baseline - inf", "clean.top1 >= 0.5 - baseline"])
def test_parse_baseline_gate_errors(bad):
    with pytest.raises(SpecError):
        Gate.parse(bad)


def test_baseline_gates_resolve_their_threshold_and_carry_baseline_and_delta():
    metrics = {"clean": {"top1": proportion(0.82, 100, "t"), "ece": metric(0.12, Unit.FRACTION, 100, "e"),
                         "per_class": {"a": proportion(0.5, 50, "a"), "b": proportion(0.5, 50, "b")}}}
    base_report = {"suites": {"clean": {"metrics": {"top1": proportion(0.9, 100, "t"),
                                                    "ece": metric(0.1, Unit.FRACTION, 100, "e"),
                                                    "per_class": {"a": proportion(None, 0, "a")}}}}}
    gates = [Gate.parse(s) for s in ("clean.top1 >= baseline - 0.05", "clean.ece <= baseline * 1.1",
                                     "clean.top1 >= baseline - 0.1", "clean.per_class.a >= baseline",
                                     "clean.per_class.b >= baseline", "clean.top1 >= 0.5")]
    baseline = Baseline.from_report(base_report, baseline_gates(gates), source="base.json")
    assert "clean.per_class.b" not in baseline.values and baseline.values["clean.per_class.a"] is None
    assert Baseline.from_dict(baseline.to_dict()) == baseline
    tight, ece, loose, undefined, missing, fixed = evaluate_gates(gates, metrics, baseline=baseline)
    assert tight["threshold"] == pytest.approx(0.85) and tight["baseline"] == 0.9
    assert tight["delta"] == pytest.approx(-0.08) and not tight["passed"]
    assert tight["expression"] == "baseline - 0.05"
    assert ece["threshold"] == pytest.approx(0.11) and not ece["passed"]  # 0.12 > 0.1 * 1.1
    assert loose["passed"] and loose["threshold"] == pytest.approx(0.8)
    assert not undefined["passed"] and "undefined in the baseline" in undefined["reason"]
    assert not missing["passed"] and missing["reason"] == "the baseline (base.json) has no metric clean.per_class.b"
    assert fixed["passed"] and "baseline" not in fixed and fixed["threshold"] == 0.5
    (nothing,) = evaluate_gates(gates[:1], metrics)
    assert not nothing["passed"] and nothing["threshold"] is None and "has none" in nothing["reason"]


def test_interval_bound_of_an_unreliable_metric_is_unreliable_too():
    metrics = {"attacks": {"robust_accuracy": {"linf": {"eps_0p1": proportion(0.9, 100, "r")}}}}
    shaky = {"attacks": {"flags": ["nan_gradients"], "metrics": ["robust_accuracy.linf.eps_0p1"]}}
    (row,) = evaluate_gates([Gate.parse("attacks.robust_accuracy.linf.eps_0p1.ci95_low >= 0.5")], metrics,
                            unreliable=shaky)
    assert row["status"] == "unreliable" and not row["passed"] and row["value"] > 0.5


def test_in_memory_audit_takes_a_baseline_report():
    from tests.tiny import TinyNet, random_samples
    from worker.engine.api import audit

    samples = random_samples(16)
    images, labels = torch.stack(samples.images), samples.labels
    first = audit(TinyNet(1, 10, seed=2), images, labels, gates=["clean.top1 >= 0"])
    gates = ["clean.top1 >= baseline", "clean.top1 > baseline"]
    with pytest.raises(SpecError, match="baseline"):
        audit(TinyNet(1, 10, seed=2), images, labels, gates=gates)
    again = audit(TinyNet(1, 10, seed=2), images, labels, gates=gates, baseline=first)
    equal, better = again["gates"]
    assert equal["passed"] and equal["delta"] == 0 and not better["passed"]
    assert equal["baseline"] == first["suites"]["clean"]["metrics"]["top1"]["value"]


def test_verdict_is_none_without_gates_and_pass_only_when_every_gate_was_judged_and_passed():
    metrics = {"clean": {"top1": metric(0.8, Unit.FRACTION, 100, "t")}}
    assert verdict_of([]) is Verdict.NONE
    passed = evaluate_gates([Gate.parse("clean.top1 >= 0.5")], metrics)
    failed = evaluate_gates([Gate.parse("clean.top1 >= 0.9")], metrics)
    assert verdict_of(passed) is Verdict.PASS and verdict_of(passed + failed) is Verdict.FAIL
    # an unreliable gate passes only when the request accepted it
    shaky = {"clean": {"flags": ["zero_gradients"], "metrics": ["top1"]}}
    assert verdict_of(evaluate_gates([Gate.parse("clean.top1 >= 0.5")], metrics, unreliable=shaky)) is Verdict.FAIL
    assert verdict_of(evaluate_gates([Gate.parse("clean.top1 >= 0.5")], metrics, unreliable=shaky,
                                     accept_unreliable=True)) is Verdict.PASS
    # a gate that was not judged (a part that did not run) never makes a pass, even marked passed
    not_run = [{**passed[0], "status": "not_run", "passed": False}]
    assert verdict_of(not_run) is Verdict.FAIL
    assert verdict_of([{**passed[0], "status": "not_run"}]) is Verdict.FAIL
    assert verdict_of([{k: v for k, v in passed[0].items() if k != "status"}]) is Verdict.FAIL
    assert verdict_of([{**passed[0], "passed": 1}]) is Verdict.FAIL  # only True is a pass
    assert [v.value for v in Verdict] == ["pass", "fail", "none"]
