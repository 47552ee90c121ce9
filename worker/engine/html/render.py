"""report.html from a report dict: the context the template reads, and the rendering.

Everything a person reads goes through :mod:`..humanize`; everything from the report is
escaped by Jinja's autoescaping (the model card's names are hostile input). The page has no
script and no external URL: CSS inline, images as ``data:`` URIs, and a Content-Security-Policy
that would refuse anything else.
"""

from __future__ import annotations

import base64
import fnmatch
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..gates import Verdict
from ..humanize import fmt_eps, fmt_norm, fmt_num, grey_level_note, sample_size_text
from ..metrics import is_leaf, iter_leaves
from .gallery import DEFAULT_LIMITS, GalleryLimits, build_gallery
from .plots import suite_plots
from .words import GATE_STATUS_WORDS, explain

#: how many headline numbers a suite shows at most (the rest are in report.json)
HEADLINE_LIMIT = 24
#: classes listed per table at most (a card may name 100,000; the rest are in report.json)
PER_CLASS_ROWS = 200
REPORT_HTML = "report.html"


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    # autoescape=True for every template (not by extension): nothing reaches the page unescaped.
    env = Environment(loader=PackageLoader("worker.engine.html", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=fmt_num, eps=fmt_eps, b64=lambda data: base64.b64encode(data).decode("ascii"))
    return env


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def gate_margin(op: str, value: float | None, threshold: float | None) -> float | None:
    """How far the value is on the passing side of the threshold (negative: by how much it misses)."""
    if value is None or threshold is None:
        return None
    if op in (">=", ">"):
        return value - threshold
    if op in ("<=", "<"):
        return threshold - value
    if op == "==":
        return -abs(value - threshold)
    return abs(value - threshold)  # "!=": the further apart, the safer


def gate_rows(gates: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The gates as the page lists them: failed and unreliable first, each with its margin."""
    rows = []
    for i, g in enumerate(gates):
        value, threshold = _number(g.get("value")), _number(g.get("threshold"))
        op = str(g.get("op", ""))
        baseline = g.get("baseline")
        if isinstance(baseline, Mapping):  # {value, audit...}: show the number, name the rest
            baseline_value = _number(baseline.get("value"))
            baseline_note = ", ".join(f"{k} {v}" for k, v in baseline.items() if k != "value")
        else:
            baseline_value, baseline_note = _number(baseline), ""
        status = str(g.get("status") or ("pass" if g.get("passed") else "fail"))
        rows.append({
            "order": i, "metric": str(g.get("metric", "")), "op": op, "passed": bool(g.get("passed")),
            "status": status, "status_words": GATE_STATUS_WORDS.get(status, status),
            "value": value, "threshold": threshold, "margin": gate_margin(op, value, threshold),
            "has_baseline": "baseline" in g, "baseline": baseline_value, "baseline_note": baseline_note,
            "delta": _number(g.get("delta")), "reason": g.get("reason"),
            "flags": [str(f) for f in g.get("flags") or []], "accepted": g.get("accepted"),
            # a threshold written against the baseline ("baseline - 0.05") is shown as written
            "expression": g.get("expression") if "baseline" in str(g.get("expression", "")) else None,
            "note": g.get("note"),
        })
    rows.sort(key=lambda r: (r["passed"], r["order"]))
    return rows


def _parent(tree: Mapping[str, Any], path: str) -> Mapping[str, Any] | None:
    node: Any = tree
    for part in path.split(".")[:-1]:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else None


def leaf_interval(leaf: Mapping[str, Any], parent: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """A leaf's 95% interval: ``ci95`` on the leaf, else the bootstrap ``ci95_low``/``ci95_high`` beside it."""
    ci = leaf.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        low, high = _number(ci[0]), _number(ci[1])
        if low is not None and high is not None:
            return low, high
    if parent is not None and is_leaf(parent.get("ci95_low")) and is_leaf(parent.get("ci95_high")):
        low, high = _number(parent["ci95_low"]["value"]), _number(parent["ci95_high"]["value"])
        if low is not None and high is not None:
            return low, high
    return None


def headline_rows(name: str, metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The suite's headline leaves (its registry patterns; else its top-level leaves), ready to show."""
    from ..suites import SUITES

    patterns = SUITES[name].headline if name in SUITES else ()
    leaves = list(iter_leaves(metrics))
    if patterns:
        chosen = [(p, leaf) for pat in patterns for p, leaf in leaves if fnmatch.fnmatchcase(p, pat)]
    else:
        chosen = [(p, leaf) for p, leaf in leaves if "." not in p]
    rows = []
    for path, leaf in chosen[:HEADLINE_LIMIT]:
        context = []
        if _number(leaf.get("eps")) is not None:
            context.append(f"eps {fmt_eps(float(leaf['eps']))}")
        if _number(leaf.get("r")) is not None:
            context.append(f"r {fmt_num(float(leaf['r']))}")
        value, unit = _number(leaf.get("value")), leaf.get("unit")
        rows.append({"path": f"{name}.{path}", "value": value, "unit": unit, "text": fmt_norm(value, unit),
                     "note": grey_level_note(f"{name}.{path}", value, unit),
                     "n": leaf.get("n"), "description": str(leaf.get("description", "")),
                     "context": ", ".join(context), "ci95": leaf_interval(leaf, _parent(metrics, path))})
    return rows


#: per-class leaves a suite's section lists in one table: suite -> (column title, path to the class dict)
PER_CLASS: dict[str, tuple[tuple[str, str], ...]] = {
    "clean": (("top-1 accuracy", "per_class"),),
    "attacks": (("modify rate", "targeted.modify"), ("mimic rate", "targeted.mimic")),
}


def per_class_table(name: str, metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """Class names (as written in the card: shown as text, whatever they hold) with their per-class numbers."""
    columns = []
    for title, path in PER_CLASS.get(name, ()):
        node: Any = metrics
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and node:
            columns.append((title, node))
    if not columns:
        return None
    classes = list(dict.fromkeys(c for _, node in columns for c in node))
    rows = [{"name": str(c), "cells": [_number((node.get(c) or {}).get("value")) for _, node in columns],
             "n": [(node.get(c) or {}).get("n") for _, node in columns]} for c in classes[:PER_CLASS_ROWS]]
    return {"columns": [t for t, _ in columns], "rows": rows, "total": len(classes)}


#: suitability flags (attacks.suitability.flags.<flag>) that the warnings section names whenever an image carries one
SUITABILITY_WARNED = ("falls_at_every_budget", "falls_at_no_budget", "low_margin")


def _warnings(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = [{"where": "dataset", **explain(w)} for w in report.get("dataset", {}).get("warnings") or []]
    for name, entry in (report.get("suites") or {}).items():
        own = [w for w in entry.get("warnings") or [] if isinstance(w, dict)]
        found += [{"where": name, **explain(w)} for w in own]
        found += [{"where": name, **explain(w)} for w in _flag_warnings(entry, {str(w.get("code")) for w in own})]
    return found


def _flag_warnings(entry: Mapping[str, Any], have: set[str]) -> list[dict[str, Any]]:
    """Suitability flags on some images that the suite's warnings do not name (a report from an
    earlier engine has the counts only): the page never says "None" while they exist."""
    flags = ((entry.get("metrics") or {}).get("suitability") or {}).get("flags") or {}
    out = []
    for code in SUITABILITY_WARNED:
        leaf = flags.get(code) if isinstance(flags, Mapping) else None
        if code in have or not isinstance(leaf, Mapping):
            continue
        count = _number(leaf.get("value"))
        if count:
            out.append({"code": code, "message": f"{fmt_num(count)} of {leaf.get('n')} images are flagged {code} "
                                                 "(attacks.suitability.flags)", "details": {"images": count}})
    return out


def _verdict(report: Mapping[str, Any]) -> Verdict:
    """The report's verdict; one the page does not know is shown as a fail, never as a pass."""
    try:
        return Verdict(report.get("verdict"))
    except ValueError:
        return Verdict.FAIL


def _verdict_sentence(verdict: Verdict, gates: list[dict[str, Any]]) -> str:
    if verdict is Verdict.NONE:
        return ("Nothing was checked against a threshold, so nothing passed or failed: the numbers below are "
                "measurements only. Set gates to get a verdict.")
    if not gates:  # a report written before the verdict "none" existed
        return "No gates were set: nothing was checked against a threshold."
    failed = [g for g in gates if not g["passed"]]
    if verdict is Verdict.PASS:
        return f"All {len(gates)} gate{'s' if len(gates) != 1 else ''} passed."
    return f"{len(failed)} of {len(gates)} gate{'s' if len(gates) != 1 else ''} did not pass."


def report_context(report: Mapping[str, Any], out_dir: Path | None,
                   limits: GalleryLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """What the template reads, built from the report alone (and the artifact files in ``out_dir``)."""
    from .. import __version__

    suites_in = report.get("suites") or {}
    gates = gate_rows(report.get("gates") or [])
    suites = []
    for name, entry in suites_in.items():
        plots = suite_plots(name, entry, report.get("gates") or [])
        suites.append({"name": name, "status": entry.get("status"), "seconds": _number(entry.get("seconds")),
                       "headline": headline_rows(name, entry.get("metrics") or {}), "plots": plots,
                       "per_class": per_class_table(name, entry.get("metrics") or {}),
                       "unreliable": entry.get("unreliable"),
                       "n_artifacts": len(entry.get("artifacts") or [])})
    verdict = _verdict(report)
    return {"verdict": verdict.value, "verdict_sentence": _verdict_sentence(verdict, gates), "gates": gates,
            "failed": [g for g in gates if not g["passed"]], "warnings": _warnings(report),
            "model": report.get("model") or {}, "dataset": report.get("dataset") or {},
            "sample_size": sample_size_text(report),
            "environment": report.get("environment") or {}, "audit": report.get("audit") or {},
            "suites": suites, "gallery": build_gallery(suites_in, out_dir, limits),
            "engine_version": __version__, "schema_version": report.get("schema_version")}


def render_report_html(report: Mapping[str, Any], out_dir: str | Path | None = None, *,
                       limits: GalleryLimits = DEFAULT_LIMITS) -> str:
    """The page for ``report``; artifact files are read from ``out_dir`` (None: no gallery images)."""
    context = report_context(report, Path(out_dir) if out_dir is not None else None, limits)
    return str(_environment().get_template("report.html.j2").render(**context))


def write_report_html(report: Mapping[str, Any], out_dir: str | Path, *,
                      limits: GalleryLimits = DEFAULT_LIMITS) -> Path:
    """Write ``out_dir/report.html`` beside report.json (write then rename: never half a page)."""
    out = Path(out_dir)
    html = render_report_html(report, out, limits=limits)
    out.mkdir(parents=True, exist_ok=True)
    target = out / REPORT_HTML
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{REPORT_HTML}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(html)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
