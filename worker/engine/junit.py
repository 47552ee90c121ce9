"""JUnit XML for CI systems: one test case per gate, so a pipeline shows which gate failed and why.

A failed gate's ``<failure>`` carries the value, the threshold (resolved, and as written for a
baseline gate), the baseline and delta, and its flags (unreliable, few samples). An audit that
could not run at all is one test case with an ``<error>``, so the CI page says why instead of
"no tests". An audit without gates has no verdict: one test case marked ``<skipped>`` with the
reason, never a passing one.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .gates import Verdict
from .humanize import fmt_delta, fmt_num, fmt_text

SUITE_NAME = "robustaudit"
#: the reason of the skipped test case of an audit without gates
NO_GATES_REASON = "no verdict: no gates were set, so nothing was checked against a threshold"


def gate_message(gate: Mapping[str, Any]) -> str:
    """``value 0.83 < threshold 0.85 (baseline - 0.05; baseline 0.9, -0.07); unreliable: masking``."""
    parts = [f"value {fmt_num(gate.get('value'))} {gate['op']} threshold {fmt_num(gate.get('threshold'))} "
             f"is {'true' if gate.get('passed') else 'false'}"]
    if "baseline" in gate:
        parts.append(f"threshold written {gate.get('expression')}; baseline {fmt_num(gate.get('baseline'))}, "
                     f"delta {fmt_delta(gate.get('delta'))}")
    if gate.get("status") == "unreliable":
        parts.append(f"unreliable: {', '.join(gate.get('flags') or [])}"
                     + (" (accepted by the request)" if gate.get("accepted") else ""))
    if gate.get("reason"):
        parts.append(fmt_text(str(gate["reason"])))
    if gate.get("few_samples"):
        parts.append(f"few samples: {fmt_text(str(gate.get('note', '')))}")
    return "; ".join(parts)


def junit_xml(report: Mapping[str, Any] | None, *, error: str | None = None, seconds: float | None = None) -> bytes:
    """The JUnit document of a finished report, or of an audit that ended with ``error``."""
    suite = ET.Element("testsuite", name=SUITE_NAME)
    cases = 0
    failures = errors = skipped = 0
    if report is None:
        case = ET.SubElement(suite, "testcase", classname=SUITE_NAME, name="audit")
        ET.SubElement(case, "error", message=error or "the audit did not finish").text = error or ""
        cases, errors = 1, 1
    else:
        for gate in report.get("gates") or []:
            name = f"{gate['metric']} {gate['op']} {gate.get('expression') or fmt_num(gate.get('threshold'))}"
            case = ET.SubElement(suite, "testcase", classname=f"{SUITE_NAME}.{gate['metric'].split('.', 1)[0]}",
                                 name=name)
            message = gate_message(gate)
            cases += 1
            if not gate.get("passed"):
                failures += 1
                ET.SubElement(case, "failure", message=message, type=str(gate.get("status", "fail"))).text = message
            elif gate.get("few_samples") or gate.get("status") == "unreliable":
                ET.SubElement(case, "system-out").text = message  # passed, but a reader should know
        if not cases:  # no gates: nothing was judged, and a CI page must not show it as passed
            case = ET.SubElement(suite, "testcase", classname=SUITE_NAME, name=f"audit verdict {Verdict.NONE.value}")
            ET.SubElement(case, "skipped", message=NO_GATES_REASON).text = NO_GATES_REASON
            cases, skipped = 1, 1
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    if seconds is not None:
        suite.set("time", f"{seconds:.3f}")
    root = ET.Element("testsuites", name=SUITE_NAME, tests=str(cases), failures=str(failures), errors=str(errors),
                      skipped=str(skipped))
    root.append(suite)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


def write_junit(path: str | Path, report: Mapping[str, Any] | None, *, error: str | None = None,
                seconds: float | None = None) -> Path:
    """Write the JUnit file (parents created); returns its path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(junit_xml(report, error=error, seconds=seconds))
    return out
