import pytest

from worker.engine.errors import SpecError
from worker.engine.gates import Gate, GateOp, check_gates, evaluate_gates
from worker.engine.metrics import Unit, metric

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
