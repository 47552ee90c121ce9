"""Gates: pass/fail thresholds on report metrics, e.g. ``clean.top1 >= 0.9``."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import SpecError
from .metrics import lookup, path_matches


class GateOp(str, Enum):
    GE = ">="
    GT = ">"
    LE = "<="
    LT = "<"
    EQ = "=="
    NE = "!="


_COMPARE: dict[GateOp, Callable[[float, float], bool]] = {
    GateOp.GE: operator.ge, GateOp.GT: operator.gt, GateOp.LE: operator.le,
    GateOp.LT: operator.lt, GateOp.EQ: operator.eq, GateOp.NE: operator.ne,
}
_GATE_RE = re.compile(r"^\s*([A-Za-z0-9_.\-{}]+?)\s*(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Gate:
    """A threshold on one metric.

    Args:
        metric: ``SUITE.path.to.leaf`` (the leaf's ``value`` is compared).
        op: comparison.
        threshold: the number compared against.
    """

    metric: str
    op: GateOp
    threshold: float

    @property
    def suite(self) -> str:
        return self.metric.split(".", 1)[0]

    @property
    def path(self) -> str:
        return self.metric.split(".", 1)[1] if "." in self.metric else ""

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "op": self.op.value, "threshold": self.threshold}

    def __str__(self) -> str:
        return f"{self.metric} {self.op.value} {self.threshold:g}"

    @classmethod
    def parse(cls, raw: str | Mapping[str, Any]) -> Gate:
        """From ``"clean.top1 >= 0.9"`` or ``{"metric", "op", "threshold"}``."""
        if isinstance(raw, str):
            m = _GATE_RE.match(raw)
            if not m:
                raise SpecError(f"cannot read gate {raw!r}: expected 'SUITE.METRIC OP NUMBER', "
                                "e.g. 'clean.top1 >= 0.9' (OP one of >= > <= < == !=)")
            metric_name, op_s, thr_s = m.groups()
            try:
                threshold = float(thr_s)
            except ValueError:
                raise SpecError(f"gate {raw!r}: threshold {thr_s!r} is not a number") from None
        elif isinstance(raw, Mapping):
            unknown = set(raw) - {"metric", "op", "threshold"}
            if unknown or not {"metric", "op", "threshold"} <= set(raw):
                raise SpecError(f"gate {dict(raw)!r} must have exactly the keys metric, op, threshold")
            metric_name, op_s, threshold = raw["metric"], raw["op"], raw["threshold"]
            if not isinstance(metric_name, str):
                raise SpecError("gate 'metric' must be a string")
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                raise SpecError(f"gate {metric_name!r}: threshold must be a number")
        else:
            raise SpecError("a gate is a string like 'clean.top1 >= 0.9' or an object {metric, op, threshold}")
        try:
            op = GateOp(op_s)
        except ValueError:
            raise SpecError(f"gate {metric_name!r}: operator {op_s!r} is not one of "
                            f"{[o.value for o in GateOp]}") from None
        if not math.isfinite(float(threshold)):
            raise SpecError(f"gate {metric_name!r}: threshold must be finite")
        if "." not in metric_name:
            raise SpecError(f"gate metric {metric_name!r} must be SUITE.METRIC, e.g. clean.top1")
        return cls(metric=metric_name, op=op, threshold=float(threshold))


def check_gates(gates: list[Gate], catalog: Mapping[str, list[str]]) -> None:
    """Refuse, before anything runs, a gate on a metric that the requested suites do not produce.

    ``catalog`` maps each requested suite to its metric path patterns.
    """
    for gate in gates:
        if gate.suite not in catalog:
            raise SpecError(f"gate '{gate}' names suite {gate.suite!r}, which is not requested; "
                            f"requested suites: {sorted(catalog)}", gate=gate.metric)
        patterns = catalog[gate.suite]
        if not any(path_matches(p, gate.path) for p in patterns):
            shown = ", ".join(f"{gate.suite}.{p}" for p in patterns[:12])
            more = f" and {len(patterns) - 12} more" if len(patterns) > 12 else ""
            raise SpecError(f"gate '{gate}' names a metric that suite {gate.suite!r} does not produce "
                            f"with these parameters; it produces: {shown}{more}", gate=gate.metric)


def evaluate_gates(gates: list[Gate], suite_metrics: Mapping[str, Mapping[str, Any]], *,
                   unreliable: Mapping[str, Mapping[str, Any] | None] | None = None,
                   accept_unreliable: bool = False) -> list[dict[str, Any]]:
    """Each gate with the measured value, its status and whether it passed. A missing or
    undefined value fails.

    ``unreliable`` maps a suite to ``{"flags": [...], "metrics": [path patterns]}``: the
    metrics that a sanity flag makes untrustworthy (gradient masking, randomness). A gate on
    one of them has status ``unreliable``, names the flags, and does not pass unless
    ``accept_unreliable`` (the request's explicit choice, recorded in the row).
    """
    out = []
    for gate in gates:
        leaf = lookup(suite_metrics.get(gate.suite, {}), gate.path)
        value = None if leaf is None else leaf["value"]
        met = value is not None and _COMPARE[gate.op](value, gate.threshold)
        row: dict[str, Any] = {**gate.to_dict(), "value": value}
        if leaf is None:
            row["reason"] = "metric not present in the report"
        elif value is None:
            row["reason"] = "metric undefined for this sample"
        shaky = (unreliable or {}).get(gate.suite)
        if shaky and any(path_matches(p, gate.path) for p in shaky["metrics"]):
            flags = list(shaky["flags"])
            row.update(status="unreliable", flags=flags, accepted=accept_unreliable,
                       passed=bool(met and accept_unreliable))
            row.setdefault("reason", f"sanity flags {flags} invalidate gradient attacks and no gradient-free "
                           "attack backs this metric" + ("; accepted by the request (accept_unreliable)"
                                                         if accept_unreliable else
                                                         "; set accept_unreliable to let it pass"))
        else:
            row.update(status="pass" if met else "fail", passed=bool(met))
        out.append(row)
    return out
