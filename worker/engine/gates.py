"""Gates: pass/fail thresholds on report metrics, e.g. ``clean.top1 >= 0.9``, and the verdict they give."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from .errors import SpecError
from .humanize import fmt_num
from .metrics import INTERVAL_BOUNDS, lookup_value, path_matches

if TYPE_CHECKING:
    from .card import ModelCard
    from .spec import AuditSpec


class GateOp(str, Enum):
    GE = ">="
    GT = ">"
    LE = "<="
    LT = "<"
    EQ = "=="
    NE = "!="


class Verdict(str, Enum):
    """An audit's verdict: the one place its values are defined (report, API, CLI, JUnit, page).

    ``none`` is not a pass: no gate was set, so nothing was judged.
    """

    PASS = "pass"
    FAIL = "fail"
    NONE = "none"


#: the statuses of a gate that was judged: its value compared with its threshold
JUDGED_STATUSES = frozenset({"pass", "fail", "unreliable"})


def verdict_of(gates: Sequence[Mapping[str, Any]]) -> Verdict:
    """The verdict of judged gate rows (:func:`evaluate_gates`): ``none`` without gates; ``pass``
    only when every gate was judged and passed; ``fail`` otherwise, so a gate that was not judged
    (a status outside :data:`JUDGED_STATUSES`, e.g. a part that did not run) never makes a pass."""
    if not gates:
        return Verdict.NONE
    if all(g.get("passed") is True and g.get("status") in JUDGED_STATUSES for g in gates):
        return Verdict.PASS
    return Verdict.FAIL


_COMPARE: dict[GateOp, Callable[[float, float], bool]] = {
    GateOp.GE: operator.ge, GateOp.GT: operator.gt, GateOp.LE: operator.le,
    GateOp.LT: operator.lt, GateOp.EQ: operator.eq, GateOp.NE: operator.ne,
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_GATE_RE = re.compile(r"^\s*([A-Za-z0-9_.\-{}]+?)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")
_BASELINE_RE = re.compile(rf"^baseline(?:\s*([-+*])\s*({_NUMBER}))?$")

#: a gate on fewer samples, or whose 95% interval is wider, says that its verdict is shaky
FEW_SAMPLES, WIDE_INTERVAL = 30, 0.2


class BaselineOp(str, Enum):
    PLUS = "+"
    MINUS = "-"
    TIMES = "*"


@dataclass(frozen=True)
class Relative:
    """A threshold written against the baseline: ``baseline - 0.05``, ``baseline * 1.1``, ``baseline``."""

    op: BaselineOp = BaselineOp.PLUS
    amount: float = 0.0

    def resolve(self, base: float) -> float:
        if self.op is BaselineOp.TIMES:
            return base * self.amount
        return base + self.amount if self.op is BaselineOp.PLUS else base - self.amount

    def __str__(self) -> str:
        if self.op is BaselineOp.PLUS and self.amount == 0:
            return "baseline"
        return f"baseline {self.op.value} {fmt_num(self.amount, 6)}"

    @classmethod
    def parse(cls, text: str) -> Relative | None:
        """``baseline [+-*] NUMBER``, or None when ``text`` is not written against the baseline."""
        m = _BASELINE_RE.match(text.strip())
        if not m:
            return None
        op, amount = m.groups()
        return cls(BaselineOp(op or "+"), float(amount or 0.0))


@dataclass(frozen=True)
class Baseline:
    """What a baseline gate compares with: the values of the same metrics in an earlier report.

    Args:
        source: where they come from, for people ("report.json of the release", "audit ID").
        values: gate metric -> its value in the baseline (None: undefined there); a metric the
            baseline lacks is absent.
        audit_id: the baseline audit over the API, or None for a report file.
    """

    source: str
    values: Mapping[str, float | None]
    audit_id: str | None = None

    @classmethod
    def from_report(cls, report: Mapping[str, Any], gates: list[Gate], *, source: str,
                    audit_id: str | None = None) -> Baseline:
        """The values that ``gates`` need, read from a finished report."""
        suites = report.get("suites") if isinstance(report, Mapping) else None
        if not isinstance(suites, Mapping):
            raise SpecError(f"baseline {source}: not an audit report (no 'suites')")
        values: dict[str, float | None] = {}
        for gate in gates:
            entry = suites.get(gate.suite)
            tree = entry.get("metrics") if isinstance(entry, Mapping) else None
            leaf, value, _ = lookup_value(tree if isinstance(tree, Mapping) else {}, gate.path)
            if leaf is not None:
                values[gate.metric] = value
        return cls(source=source, values=values, audit_id=audit_id)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "audit_id": self.audit_id, "values": dict(self.values)}

    @classmethod
    def from_dict(cls, raw: Any) -> Baseline:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("source"), str):
            raise SpecError("'baseline' must be {source, audit_id, values} (the CLI and the API fill it in)")
        values = raw.get("values", {})
        if not isinstance(values, Mapping) or not all(
                isinstance(k, str) and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      and math.isfinite(v))) for k, v in values.items()):
            raise SpecError("'baseline.values' must map metric names to numbers or null")
        audit_id = raw.get("audit_id")
        if audit_id is not None and not isinstance(audit_id, str):
            raise SpecError("'baseline.audit_id' must be a string")
        return cls(source=raw["source"], values={k: None if v is None else float(v) for k, v in values.items()},
                   audit_id=audit_id)


@dataclass(frozen=True)
class Gate:
    """A threshold on one metric.

    Args:
        metric: ``SUITE.path.to.leaf`` (the leaf's ``value`` is compared); ``PATH.ci95_low`` or
            ``PATH.ci95_high`` compares a bound of the leaf's 95% interval.
        op: comparison.
        threshold: the number compared against, for a fixed gate.
        relative: for a gate written against the baseline (``>= baseline - 0.05``): how the
            threshold follows from the baseline's value of the same metric.
    """

    metric: str
    op: GateOp
    threshold: float | None = None
    relative: Relative | None = None

    @property
    def suite(self) -> str:
        return self.metric.split(".", 1)[0]

    @property
    def path(self) -> str:
        return self.metric.split(".", 1)[1] if "." in self.metric else ""

    @property
    def expression(self) -> str:
        """The right-hand side as written: ``0.9`` or ``baseline - 0.05``."""
        return str(self.relative) if self.relative is not None else fmt_num(self.threshold, 6)

    def to_dict(self) -> dict[str, Any]:
        """``threshold`` is a number, or for a baseline gate the expression (``"baseline - 0.05"``)."""
        return {"metric": self.metric, "op": self.op.value,
                "threshold": str(self.relative) if self.relative is not None else self.threshold}

    def __str__(self) -> str:
        return f"{self.metric} {self.op.value} {self.expression}"

    @classmethod
    def parse(cls, raw: str | Mapping[str, Any]) -> Gate:
        """From ``"clean.top1 >= 0.9"``, ``"clean.top1 >= baseline - 0.05"`` or ``{"metric", "op", "threshold"}``
        (threshold a number or such an expression)."""
        if isinstance(raw, str):
            m = _GATE_RE.match(raw)
            if not m:
                raise SpecError(f"cannot read gate {raw!r}: expected 'SUITE.METRIC OP NUMBER' or "
                                "'SUITE.METRIC OP baseline [+-*] NUMBER', e.g. 'clean.top1 >= 0.9' or "
                                "'clean.top1 >= baseline - 0.05' (OP one of >= > <= < == !=)")
            metric_name, op_s, threshold = m.groups()
        elif isinstance(raw, Mapping):
            unknown = set(raw) - {"metric", "op", "threshold"}
            if unknown or not {"metric", "op", "threshold"} <= set(raw):
                raise SpecError(f"gate {dict(raw)!r} must have exactly the keys metric, op, threshold")
            metric_name, op_s, threshold = raw["metric"], raw["op"], raw["threshold"]
            if not isinstance(metric_name, str):
                raise SpecError("gate 'metric' must be a string")
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float, str)):
                raise SpecError(f"gate {metric_name!r}: threshold must be a number or 'baseline [+-*] NUMBER'")
        else:
            raise SpecError("a gate is a string like 'clean.top1 >= 0.9' or an object {metric, op, threshold}")
        try:
            op = GateOp(op_s)
        except ValueError:
            raise SpecError(f"gate {metric_name!r}: operator {op_s!r} is not one of "
                            f"{[o.value for o in GateOp]}") from None
        if "." not in metric_name:
            raise SpecError(f"gate metric {metric_name!r} must be SUITE.METRIC, e.g. clean.top1")
        relative = Relative.parse(threshold) if isinstance(threshold, str) else None
        if relative is not None:
            if not math.isfinite(relative.amount):
                raise SpecError(f"gate {metric_name!r}: the number after 'baseline' must be finite")
            return cls(metric=metric_name, op=op, relative=relative)
        try:
            value = float(threshold)
        except ValueError:
            raise SpecError(f"gate {metric_name!r}: threshold {threshold!r} is neither a number nor "
                            "'baseline [+-*] NUMBER' (e.g. baseline - 0.05, baseline * 1.1)") from None
        if not math.isfinite(value):
            raise SpecError(f"gate {metric_name!r}: threshold must be finite")
        return cls(metric=metric_name, op=op, threshold=value)


def baseline_gates(gates: list[Gate]) -> list[Gate]:
    """The gates written against a baseline."""
    return [g for g in gates if g.relative is not None]


def check_gates(gates: list[Gate], catalog: Mapping[str, list[str]]) -> None:
    """Refuse, before anything runs, a gate on a metric that the requested suites do not produce.

    ``catalog`` maps each requested suite to its metric path patterns.
    """
    for gate in gates:
        if gate.suite not in catalog:
            raise SpecError(f"gate '{gate}' names suite {gate.suite!r}, which is not requested; "
                            f"requested suites: {sorted(catalog)}", gate=gate.metric)
        patterns = catalog[gate.suite]
        if not _produced(patterns, gate.path):
            shown = ", ".join(f"{gate.suite}.{p}" for p in patterns[:12])
            more = f" and {len(patterns) - 12} more" if len(patterns) > 12 else ""
            raise SpecError(f"gate '{gate}' names a metric that suite {gate.suite!r} does not produce "
                            f"with these parameters; it produces: {shown}{more}", gate=gate.metric)


def _produced(patterns: list[str], path: str) -> bool:
    """``path`` is a produced metric, or a bound of one's interval (``PATH.ci95_low``)."""
    if any(path_matches(p, path) for p in patterns):
        return True
    head, _, bound = path.rpartition(".")
    return bound in INTERVAL_BOUNDS and any(path_matches(p, head) for p in patterns)


def evaluate_gates(gates: list[Gate], suite_metrics: Mapping[str, Mapping[str, Any]], *,
                   unreliable: Mapping[str, Mapping[str, Any] | None] | None = None,
                   accept_unreliable: bool = False, baseline: Baseline | None = None) -> list[dict[str, Any]]:
    """Each gate with the measured value, its status and whether it passed. A missing or
    undefined value fails.

    A gate written against the baseline (``>= baseline - 0.05``) resolves its threshold from
    ``baseline``; its row carries ``expression`` (as written), ``threshold`` (resolved),
    ``baseline`` (the baseline's value) and ``delta`` (value - baseline). With no baseline, or
    a baseline that lacks the metric, it fails and ``reason`` says why.

    A gate on fewer than :data:`FEW_SAMPLES` samples, or on a share whose 95% interval is wider
    than :data:`WIDE_INTERVAL`, keeps its verdict but carries ``few_samples: true`` and a ``note``.

    ``unreliable`` maps a suite to ``{"flags": [...], "metrics": [path patterns]}``: the
    metrics that a sanity flag makes untrustworthy (gradient masking, randomness). A gate on
    one of them has status ``unreliable``, names the flags, and does not pass unless
    ``accept_unreliable`` (the request's explicit choice, recorded in the row).
    """
    out = []
    for gate in gates:
        leaf, value, reason = lookup_value(suite_metrics.get(gate.suite, {}), gate.path)
        threshold, base_reason = _threshold(gate, baseline)
        met = value is not None and threshold is not None and _COMPARE[gate.op](value, threshold)
        row: dict[str, Any] = {"metric": gate.metric, "op": gate.op.value, "threshold": threshold,
                               "expression": gate.expression, "value": value}
        if gate.relative is not None:
            base = None if baseline is None else baseline.values.get(gate.metric)
            row.update(baseline=base, delta=None if value is None or base is None else value - base)
        if reason is not None:
            row["reason"] = reason
        elif base_reason is not None:
            row["reason"] = base_reason
        if leaf is not None:
            _note_few_samples(row, leaf)
        shaky = (unreliable or {}).get(gate.suite)
        head, _, bound = gate.path.rpartition(".")
        leaf_path = head if bound in INTERVAL_BOUNDS and leaf is not None and "ci95" in leaf else gate.path
        if shaky and any(path_matches(p, leaf_path) for p in shaky["metrics"]):  # an interval bound: its leaf
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


def _threshold(gate: Gate, baseline: Baseline | None) -> tuple[float | None, str | None]:
    """(the number to compare with, why there is none)."""
    if gate.relative is None:
        return gate.threshold, None
    if baseline is None:
        return None, (f"the gate is written against a baseline ({gate.expression}) but the audit has none: "
                      "pass --baseline REPORT.json (CLI) or \"baseline\": AUDIT_ID (API)")
    if gate.metric not in baseline.values:
        return None, f"the baseline ({baseline.source}) has no metric {gate.metric}"
    base = baseline.values[gate.metric]
    if base is None:
        return None, f"metric {gate.metric} is undefined in the baseline ({baseline.source})"
    return gate.relative.resolve(base), None


def _note_few_samples(row: dict[str, Any], leaf: Mapping[str, Any]) -> None:
    """Say when the number under a gate rests on too few samples to trust its verdict."""
    n = int(leaf.get("n", 0))
    ci = leaf.get("ci95")
    low, high = (float(ci[0]), float(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
    width = None if low is None or high is None else high - low
    if n >= FEW_SAMPLES and (width is None or width <= WIDE_INTERVAL):
        return
    row["few_samples"] = True
    note = f"measured on {n} sample{'s' if n != 1 else ''}"
    if width is not None:
        note += (f"; its 95% interval [{fmt_num(low, 3)}, {fmt_num(high, 3)}] is {fmt_num(width, 2)} wide, "
                 "so another sample of the same size may well give the other verdict")
    elif n < FEW_SAMPLES:
        note += f" (fewer than {FEW_SAMPLES}): the verdict may not hold on another sample"
    row["note"] = note


def check_placeholder_gates(spec: AuditSpec, card: ModelCard) -> None:
    """A gate like ``clean.per_class.cat`` can only be checked once the class names are known:
    its class (or group) segment must be one of the model's."""
    from .spec import metric_catalog  # spec imports this module: a top-level import would be a cycle

    values = {"{class}": set(card.class_names), "{group}": set(card.hierarchy.values())}
    catalog = metric_catalog(spec.suites)
    for gate in spec.gates:
        for pattern in catalog.get(gate.suite, []):
            if not path_matches(pattern, gate.path):
                continue
            for pat_seg, seg in zip(pattern.split("."), gate.path.split(".")):
                allowed = values.get(pat_seg)
                if allowed is not None and seg not in allowed:
                    raise SpecError(f"gate '{gate}': {seg!r} is not a known {pat_seg.strip('{}')} of this "
                                    f"model; known: {sorted(allowed)[:20]}", gate=gate.metric)
