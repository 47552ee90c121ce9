"""Two reports side by side: every metric that changed, the largest regressions first.

One comparison serves ``robustaudit compare A.json B.json``, ``GET /v1/audits/{id}/compare``
and a schedule's runs (each run against the schedule's previous successful one).

Which way a metric improves comes from :func:`~worker.engine.metrics.better` (the leaf's own
``better`` field, its unit, or its path). Changes are ranked by their size: in points of a
share for fractions (0.9 -> 0.85 is 0.05), relative to the baseline for other units
(2.0 -> 2.5 s is 0.25); timings are listed after everything else, since they change on every run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Any

from .metrics import Better, Unit, better, iter_leaves

#: units whose changes are machine noise more than model behaviour
TIMING_UNITS = frozenset({Unit.SECONDS.value, Unit.PER_SECOND.value})


class Change(str, Enum):
    REGRESSION = "regression"
    CHANGED = "changed"  # a metric that improves neither way (a correlation, a count)
    IMPROVEMENT = "improvement"
    TIMING = "timing"
    ADDED = "added"  # only in the current report
    REMOVED = "removed"  # only in the baseline


_ORDER = {c: i for i, c in enumerate(Change)}


def report_leaves(report: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``suite.path``, leaf) for every metric leaf of a report."""
    for name, suite in (report.get("suites") or {}).items():
        if isinstance(suite, Mapping) and isinstance(suite.get("metrics"), Mapping):
            for path, leaf in iter_leaves(suite["metrics"]):
                yield f"{name}.{path}", leaf


def _size(delta: float, before: float, unit: str) -> float:
    """How big a change is, comparable across metrics: points for shares, relative otherwise."""
    if unit in (Unit.FRACTION.value, Unit.CORRELATION.value):
        return abs(delta)
    return abs(delta) / abs(before) if before else math.inf


def _outside(value: float, leaf: Mapping[str, Any]) -> bool | None:
    """Whether ``value`` lies outside the baseline leaf's 95% interval (None: it has none)."""
    ci = leaf.get("ci95")
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return None
    return bool(value < ci[0] or value > ci[1])


def compare_reports(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from ``baseline`` to ``current``.

    Returns ``{"baseline": ..., "current": ... (who they are), "verdict": {baseline, current},
    "counts": {change kind: number, "unchanged": number}, "warnings": [...],
    "changes": [{metric, change, better, unit, baseline, value, delta, size, outside_baseline_ci95}]}``,
    regressions first (largest first), then other changes, improvements, timings, and metrics
    that only one report has. A metric is unchanged when both values are equal (both undefined
    included).
    """
    before = dict(report_leaves(baseline))
    after = dict(report_leaves(current))
    changes: list[dict[str, Any]] = []
    unchanged = 0
    for metric_name, leaf in after.items():
        old = before.get(metric_name)
        unit = str(leaf.get("unit"))
        direction = better(metric_name, leaf)
        row: dict[str, Any] = {"metric": metric_name, "unit": unit, "better": direction.value,
                               "baseline": None if old is None else old.get("value"), "value": leaf.get("value"),
                               "delta": None, "size": None}
        if old is None:
            changes.append({**row, "change": Change.ADDED.value})
            continue
        a, b = old.get("value"), leaf.get("value")
        if a == b:
            unchanged += 1
            continue
        if a is None or b is None:  # defined on one side only: listed, not ranked
            changes.append({**row, "change": Change.CHANGED.value})
            continue
        delta = float(b) - float(a)
        row.update(delta=delta, size=_size(delta, float(a), unit), outside_baseline_ci95=_outside(float(b), old))
        if unit in TIMING_UNITS:
            kind = Change.TIMING
        elif direction is Better.NEITHER:
            kind = Change.CHANGED
        else:
            worse = delta < 0 if direction is Better.HIGHER else delta > 0
            kind = Change.REGRESSION if worse else Change.IMPROVEMENT
        changes.append({**row, "change": kind.value})
    for metric_name, leaf in before.items():
        if metric_name not in after:
            changes.append({"metric": metric_name, "unit": str(leaf.get("unit")),
                            "better": better(metric_name, leaf).value, "baseline": leaf.get("value"),
                            "value": None, "delta": None, "size": None, "change": Change.REMOVED.value})
    changes.sort(key=lambda c: (_ORDER[Change(c["change"])], -(c["size"] if c["size"] is not None else -1.0),
                                c["metric"]))
    counts = {c.value: 0 for c in Change}
    for c in changes:
        counts[c["change"]] += 1
    counts["unchanged"] = unchanged
    return {"baseline": describe(baseline), "current": describe(current),
            "verdict": {"baseline": baseline.get("verdict"), "current": current.get("verdict")},
            "counts": counts, "warnings": comparability(baseline, current), "changes": changes}


def describe(report: Mapping[str, Any]) -> dict[str, Any]:
    """Who a report is: its audit id (over the API), model, sample count and end time."""
    audit = report.get("audit") or {}
    return {"audit_id": audit.get("id"), "finished": audit.get("finished"),
            "model_sha256": (report.get("model") or {}).get("sha256"),
            "n_samples": (report.get("dataset") or {}).get("n_samples")}


def comparability(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Why two reports' numbers may differ for reasons other than the model: other samples,
    other suite parameters, another engine."""
    out: list[str] = []
    spec_a = (baseline.get("audit") or {}).get("spec") or {}
    spec_b = (current.get("audit") or {}).get("spec") or {}
    if spec_a.get("dataset") != spec_b.get("dataset"):
        out.append("the reports measured different samples (dataset reference, sample count, seed or classes "
                   "differ); a change may come from the data, not the model")
    for name in sorted(set(spec_a.get("suites") or {}) & set(spec_b.get("suites") or {})):
        if spec_a["suites"][name] != spec_b["suites"][name]:
            out.append(f"suite {name} ran with different parameters")
    if spec_a.get("seed") != spec_b.get("seed"):
        out.append("the reports used different seeds")
    env_a, env_b = baseline.get("environment") or {}, current.get("environment") or {}
    for key in ("robustaudit", "torch"):
        if env_a.get(key) != env_b.get(key):
            out.append(f"{key} {env_a.get(key)} produced the baseline, {env_b.get(key)} the current report")
    return out
