"""Local command line of the engine: ``robustaudit audit``, ``compare``, ``metrics`` and ``suites``.

Runs with torch alone (``python -m worker.engine audit ...`` on a bare GPU box).
Exit codes of ``audit``: 0 every gate passed, 1 a gate failed, 2 bad input, 3 internal
error, 5 no verdict (no gates were set; 0 with ``--allow-no-gates``), 130 cancelled (Ctrl-C),
141 the reader of our output went away (``| head``).

``--out`` may be reused: what an earlier audit wrote there (report, artifacts) is removed
first, and nothing else. ``--n-samples`` above the dataset's size uses the whole set and the
summary says so (the report's dataset warning ``n_samples_above_dataset``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .compare import compare_reports
from .errors import AuditCancelled, AuditInputError, SpecError
from .gates import Baseline, Gate, Verdict, baseline_gates
from .humanize import fmt_delta, fmt_eps, fmt_levels, fmt_norm, fmt_num, fmt_text, grey_level_note, sample_size_text
from .junit import write_junit
from .metrics import lookup_value

EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_INTERNAL, EXIT_CANCELLED = 0, 1, 2, 3, 130
#: no gates were set, so nothing was judged: as pytest's 5 for "no tests collected", a pipeline
#: whose gates went missing stops instead of passing (``--allow-no-gates`` makes it 0)
EXIT_NO_VERDICT = 5
#: 128 + SIGPIPE, what a shell reports for a command whose reader closed the pipe
EXIT_PIPE = 141


class ProgressBar:
    """One line per suite on a terminal; silent when stderr is not a terminal."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self.current: str | None = None
        self.last = 0.0

    def __call__(self, suite: str, fraction: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if suite == self.current and fraction < 1.0 and now - self.last < 0.1:
            return
        if suite != self.current and self.current is not None:
            self.stream.write("\n")
        self.current, self.last = suite, now
        width = 30
        done = int(round(fraction * width))
        self.stream.write(f"\r{suite:<14} [{'#' * done}{'.' * (width - done)}] {fraction * 100:5.1f}%")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.current is not None:
            self.stream.write("\n")
            self.stream.flush()


class ProgressLog:
    """Progress for a log (CI, a pipe): one line per step, no carriage returns.

    A suite's start, each tenth of it done, and its end; each line flushed at once so that a
    CI log shows it while the audit runs. Suites may report in any order (shards interleave).
    """

    def __init__(self, stream: TextIO, enabled: bool = True, prefix: str = "robustaudit") -> None:
        self.stream, self.enabled, self.prefix = stream, enabled, prefix
        self.started: dict[str, float] = {}
        self.decile: dict[str, int] = {}

    def __call__(self, suite: str, fraction: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if suite not in self.started:
            self.started[suite], self.decile[suite] = now, 0
            self._line(f"{suite}: started")
        if self.decile[suite] >= 10:
            return
        step = min(10, int(math.floor(max(0.0, min(1.0, fraction)) * 10 + 1e-9)))
        if step <= self.decile[suite]:
            return
        self.decile[suite] = step
        took = now - self.started[suite]
        if step == 10:
            # a poll that sees a suite start and finish at once has no duration to tell
            self._line(f"{suite}: finished in {took:.1f} s" if took >= 0.05 else f"{suite}: finished")
        else:
            self._line(f"{suite}: {step * 10}% ({took:.1f} s)")

    def note(self, text: str) -> None:
        """A line of its own (a status change), timed like the progress lines."""
        if self.enabled:
            self._line(text)

    def _line(self, text: str) -> None:
        self.stream.write(f"{self.prefix}: {time.strftime('%H:%M:%S')} {text}\n")
        self.stream.flush()

    def close(self) -> None:
        """Nothing to end: every line is complete."""


def progress_reporter(stream: TextIO, quiet: bool = False) -> ProgressBar | ProgressLog:
    """A bar on a terminal, log lines elsewhere (CI), nothing with ``--quiet``."""
    if quiet:
        return ProgressBar(stream, enabled=False)
    return ProgressBar(stream, enabled=True) if stream.isatty() else ProgressLog(stream)


def add_audit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint: TorchScript (.pt), torch.export (.pt2), ONNX, safetensors or "
                                   "state_dict (for a torchvision, timm or Hugging Face architecture)")
    p.add_argument("--card", help="model card JSON (default: <checkpoint stem>.card.json beside it)")
    p.add_argument("--dataset", help="builtin:digits | imagefolder:PATH | torchvision:NAME:ROOT[:split] | npz:PATH")
    p.add_argument("--n-samples", type=int, help="number of samples (default 100; above the dataset's size: all of "
                                                 "them, with a warning)")
    p.add_argument("--seed", type=int, help="seed for sampling and every suite (default 0)")
    p.add_argument("--classes", nargs="+", help="restrict to these class names")
    p.add_argument("--suite", action="append", default=[], help="suite to run (repeatable); clean always runs")
    p.add_argument("--set", action="append", default=[], metavar="SUITE.PARAM=JSON",
                   help="a suite parameter, e.g. --set clean.ece_bins=10 (value is JSON)")
    p.add_argument("--config", help="audit specification JSON (same shape as the API body); flags override")
    p.add_argument("--gate", action="append", default=[], help="e.g. 'clean.top1>=0.9' (repeatable)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--out", required=True, help="output directory: report.json, report.html and artifacts/ (an "
                                                "earlier audit's files there are removed first)")
    p.add_argument("--shards", type=int, default=1, help="run each suite in this many shards and merge")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--baseline", metavar="REPORT.json", help="an earlier report that gates written against a baseline "
                   "compare with ('clean.top1 >= baseline - 0.05'); the summary lists what changed")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML: one test case per gate (for CI)")


def add_allow_no_gates(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-no-gates", action="store_true",
                   help=f"exit 0 when no gate was set (default: exit {EXIT_NO_VERDICT}, no verdict)")


#: said on stderr when an audit without gates ends
NO_GATES_NOTE = ("no verdict: no gates were set, so nothing was checked against a threshold; add gates "
                 f"(--gate), or pass --allow-no-gates to accept an audit without them (exit {EXIT_NO_VERDICT})")


def verdict_exit_code(verdict: str, allow_no_gates: bool = False) -> int:
    """The exit code of a finished audit: 0 pass, 1 fail (or anything unknown), 5 no verdict
    (0 when ``allow_no_gates``)."""
    if verdict == Verdict.PASS.value:
        return EXIT_PASS
    if verdict == Verdict.NONE.value:
        return EXIT_PASS if allow_no_gates else EXIT_NO_VERDICT
    return EXIT_FAIL


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Merge --config with the flags into one raw spec dict (validated later, in one place)."""
    raw: dict[str, Any] = {}
    if args.config:
        try:
            raw = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpecError(f"cannot read --config {args.config}: {exc}") from None
        if not isinstance(raw, dict):
            raise SpecError("--config must hold a JSON object")
    if args.model:
        raw["model"] = args.model
    if args.card:
        raw["card"] = args.card
    dataset = raw.get("dataset")
    if args.dataset:
        dataset = args.dataset
    if dataset is None:
        raise SpecError("--dataset is required (or 'dataset' in --config)")
    if isinstance(dataset, str):
        dataset = _dataset_object(dataset)
    elif not isinstance(dataset, dict):
        raise SpecError("'dataset' must be a reference string or object")
    for key, value in (("n_samples", args.n_samples), ("seed", args.seed), ("classes", args.classes)):
        if value is not None:
            dataset = {**dataset, key: value}
    raw["dataset"] = dataset
    if args.seed is not None:
        raw["seed"] = args.seed
    suites = raw.get("suites", {})
    if isinstance(suites, list):
        suites = {n: {} for n in suites}
    if not isinstance(suites, dict):
        raise SpecError("'suites' must be a list of names or an object {name: params}")
    for name in args.suite:
        suites.setdefault(name, {})
    for item in args.set:
        key, sep, value = item.partition("=")
        suite, dot, param = key.partition(".")
        if not sep or not dot or not param:
            raise SpecError(f"--set {item!r}: expected SUITE.PARAM=JSON")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # a bare word is a string
        suites.setdefault(suite, {})
        suites[suite] = {**(suites[suite] or {}), param: parsed}
    raw["suites"] = suites
    raw["gates"] = list(raw.get("gates", [])) + list(args.gate)
    if args.device:
        raw["device"] = args.device
    if "model" not in raw:
        raise SpecError("--model is required (or 'model' in --config)")
    return raw


def _dataset_object(ref: str) -> dict[str, Any]:
    from .datasets import DatasetRef

    return DatasetRef.parse(ref).to_dict()


def headline_leaves(name: str, metrics: dict[str, Any], limit: int = 12) -> list[tuple[str, dict[str, Any]]]:
    """The suite's headline metric leaves (its ``headline`` patterns), else its first top-level ones."""
    from .metrics import iter_leaves
    from .suites import SUITES

    patterns = SUITES[name].headline if name in SUITES else ()
    leaves = list(iter_leaves(metrics))
    if patterns:
        chosen = [(p, leaf) for pat in patterns for p, leaf in leaves if fnmatch.fnmatchcase(p, pat)]
    else:
        chosen = [(p, leaf) for p, leaf in leaves if "." not in p]
    return chosen[:limit]


def headline_values(name: str, metrics: dict[str, Any], limit: int = 12) -> list[tuple[str, Any]]:
    """(path, value) of the suite's headline metrics."""
    return [(p, leaf["value"]) for p, leaf in headline_leaves(name, metrics, limit)]


def metric_label(path: str, leaf: dict[str, Any] | None = None) -> str:
    """A metric's path for people: the budget key as the eps people read (``linf(eps 8/255)``)."""
    head, _, last = path.rpartition(".")
    if leaf is not None and isinstance(leaf.get("eps"), (int, float)) and last.startswith("eps"):
        return f"{head}(eps {fmt_eps(float(leaf['eps']))})" if head else f"eps {fmt_eps(float(leaf['eps']))}"
    return path


def leaf_text(leaf: dict[str, Any]) -> str:
    """A value for people, with its 95% interval when it has one: ``0.9 [0.78, 0.96]``; a perturbation
    size in grey levels of an 8-bit image (``0.078/255``)."""
    text = fmt_norm(leaf.get("value"), leaf.get("unit"))
    ci = leaf.get("ci95")
    if isinstance(ci, list) and len(ci) == 2:
        text += f" [{fmt_num(ci[0], 3)}, {fmt_num(ci[1], 3)}]"
    return text


def gate_lines(gate: dict[str, Any], leaf: dict[str, Any] | None = None) -> list[str]:
    """One gate result for people: the gate as written (with its eps as people read it, from the
    metric's ``leaf``), the resolved threshold, value, baseline and delta, then why it failed or
    why its verdict is shaky."""
    mark = {"pass": "PASS", "fail": "FAIL", "unreliable": "UNRELIABLE"}.get(gate.get("status", ""),
                                                                          "PASS" if gate["passed"] else "FAIL")
    if gate.get("status") == "unreliable" and gate["passed"]:
        mark = "PASS (unreliable, accepted)"
    expression = gate.get("expression") or fmt_num(gate.get("threshold"))
    resolved = ("" if "baseline" not in gate or gate.get("threshold") is None
                else f" (= {fmt_num(gate['threshold'])})")
    eps = leaf.get("eps") if leaf is not None else None
    where = f" (eps {fmt_eps(float(eps))})" if isinstance(eps, (int, float)) and "eps" in gate["metric"] else ""
    value = gate.get("value")
    levels = (f" ({fmt_levels(value)})" if leaf is not None and isinstance(value, (int, float))
              and leaf.get("unit") in ("linf_norm", "l2_norm") else "")
    text = (f"  gate {gate['metric']}{where} {gate['op']} {expression}{resolved}: "
            f"value {fmt_num(value)}{levels}")
    if "baseline" in gate:
        text += f", baseline {fmt_num(gate.get('baseline'))} ({fmt_delta(gate.get('delta'))})"
    lines = [f"{text}  {mark}"]
    if gate.get("reason") and not gate["passed"]:
        lines.append(f"      {fmt_text(gate['reason'])}")
    if gate.get("note"):
        lines.append(f"      note: {fmt_text(gate['note'])}")
    return lines


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for a person: headline metrics (with 95% intervals), warnings and each gate.

    Numbers are rounded for reading and eps written as people read them; report.json keeps the
    exact floats.
    """
    lines = [f"model {report['model']['sha256'][:12]} on {sample_size_text(report)} "
             f"({report['environment']['device']})"]
    for w in report["dataset"].get("warnings", []):
        lines.append(f"  warning [{w['code']}]: {fmt_text(w['message'])}")
    for name, suite in report["suites"].items():
        lines.append(f"  {name:<12} {suite['status']:<9} {fmt_num(suite['seconds'], 3):>7} s")
        headline = [(p, h) for p, h in headline_leaves(name, suite["metrics"]) if h.get("value") is not None]
        shown = [f"{metric_label(p, h)}={leaf_text(h)}" for p, h in headline]
        for i in range(0, len(shown), 3):
            lines.append("      " + "   ".join(shown[i:i + 3]))
        for p, h in headline:
            note = grey_level_note(f"{name}.{p}", h["value"], h.get("unit"))
            if note:
                lines.append(f"    note: {note}")
        for w in suite["warnings"]:
            lines.append(f"    warning [{w['code']}]: {fmt_text(w['message'])}")
    baseline = (report.get("audit", {}).get("spec") or {}).get("baseline")
    if baseline:
        lines.append(f"  baseline: {baseline['source']}")
    for g in report["gates"]:
        suite, _, path = str(g["metric"]).partition(".")
        leaf, _, _ = lookup_value((report["suites"].get(suite) or {}).get("metrics") or {}, path)
        lines.extend(gate_lines(g, leaf))
    verdict = report["verdict"]
    lines.append(f"verdict: {verdict}" + (" (no gates were set)" if verdict == Verdict.NONE.value else ""))
    return lines


def cmd_audit(args: argparse.Namespace) -> int:
    from .runner import clear_outputs, run_audit
    from .spec import AuditSpec

    bar = progress_reporter(sys.stderr, args.quiet)
    t0 = time.monotonic()
    baseline_report: dict[str, Any] | None = None
    try:
        raw = spec_from_args(args)
        # --config may name a baseline report file; the API's "baseline" (an audit id) is resolved by the server.
        config_baseline = raw.pop("baseline", None) if isinstance(raw.get("baseline"), str) else None
        spec = AuditSpec.from_dict(raw)
        baseline_path = args.baseline or config_baseline
        if baseline_path:
            baseline_report = read_report(baseline_path, "--baseline")
            spec.baseline = Baseline.from_report(baseline_report, baseline_gates(spec.gates), source=baseline_path,
                                                 audit_id=(baseline_report.get("audit") or {}).get("id"))
        require_baseline(spec.gates, spec.baseline is not None, "pass --baseline REPORT.json")
        if args.shards < 1:
            raise SpecError("--shards must be >= 1")
        clear_outputs(args.out)  # a reused --out shows this run only
        report = run_audit(spec, args.out, on_progress=bar, shards=args.shards)
        html = _write_html(report, args.out)
    except AuditInputError as exc:
        bar.close()
        print(f"robustaudit: error: {exc.message}", file=sys.stderr)
        return _junit_error(args, exc.message, t0, EXIT_INPUT)
    except (AuditCancelled, KeyboardInterrupt):
        bar.close()
        print("robustaudit: cancelled", file=sys.stderr)
        return _junit_error(args, "cancelled", t0, EXIT_CANCELLED)
    except ModuleNotFoundError as exc:
        # The core needs torch alone; suites' artifacts need numpy (NPZ) and matplotlib (PNG).
        bar.close()
        print(f"robustaudit: error: the Python package {exc.name!r} is missing; the suites' artifacts need "
              "numpy and matplotlib: pip install numpy matplotlib (or carry their wheels)", file=sys.stderr)
        return _junit_error(args, f"the Python package {exc.name!r} is missing", t0, EXIT_INTERNAL)
    except Exception:
        # Never exit 1 (which means "a gate failed") on a crash: a pipeline would misread it.
        bar.close()
        traceback.print_exc()
        print("robustaudit: internal error (a bug: please report it with the traceback above)", file=sys.stderr)
        return _junit_error(args, "internal error (see the log)", t0, EXIT_INTERNAL)
    bar.close()
    if args.junit:
        write_junit(args.junit, report, seconds=time.monotonic() - t0)
    if not args.quiet:
        print("\n".join(summary_lines(report)))
        if baseline_report is not None:
            print("\n".join(comparison_lines(compare_reports(baseline_report, report), limit=5)))
        print(f"report: {Path(args.out) / 'report.json'}")
        if html is not None:
            print(f"report for people: {html}")
        if args.junit:
            print(f"junit: {args.junit}")
    code = verdict_exit_code(report["verdict"], getattr(args, "allow_no_gates", False))
    if code == EXIT_NO_VERDICT:
        print(f"robustaudit: {NO_GATES_NOTE}", file=sys.stderr)
    return code


def read_report(path: str, what: str) -> dict[str, Any]:
    """A report.json read for a comparison or a baseline; a bad file is an input error."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("suites"), dict):
        raise SpecError(f"{what} {path} is not an audit report (report.json with 'suites')")
    return report


def require_baseline(gates: list[Gate], have: bool, how: str) -> None:
    """Refuse up front gates written against a baseline when there is none to compare with."""
    needing = baseline_gates(gates)
    if needing and not have:
        raise SpecError(f"gate '{needing[0]}' is written against a baseline, but there is none: {how}",
                        gate=needing[0].metric)


def _junit_error(args: argparse.Namespace, message: str, t0: float, code: int) -> int:
    """On an audit that did not finish, --junit still writes a file that says why."""
    if getattr(args, "junit", None):
        write_junit(args.junit, None, error=message, seconds=time.monotonic() - t0)
    return code


def comparison_lines(result: dict[str, Any], limit: int | None = 20) -> list[str]:
    """A comparison for people: counts, warnings, then the changes, largest regressions first."""
    counts = result["counts"]
    lines = [f"compared with the baseline: {counts['regression']} regressions, {counts['improvement']} "
             f"improvements, {counts['changed']} other changes, {counts['timing']} timings, "
             f"{counts['unchanged']} unchanged" + (f", {counts['added']} new, {counts['removed']} gone"
                                                   if counts["added"] or counts["removed"] else "")]
    verdict = result["verdict"]
    if verdict["baseline"] != verdict["current"]:
        lines.append(f"  verdict: {verdict['baseline']} -> {verdict['current']}")
    for w in result["warnings"]:
        lines.append(f"  warning: {w}")
    shown = [c for c in result["changes"] if c["change"] != "timing"]
    for c in shown[:limit]:
        where = "" if c.get("outside_baseline_ci95") is not True else "  (outside the baseline's 95% interval)"
        if c["change"] in ("added", "removed"):
            lines.append(f"  {c['change']:<11} {c['metric']}")
            continue
        lines.append(f"  {c['change']:<11} {c['metric']}: {fmt_num(c['baseline'])} -> {fmt_num(c['value'])} "
                     f"({fmt_delta(c['delta'])}){where}")
    if limit is not None and len(shown) > limit:
        lines.append(f"  ... and {len(shown) - limit} more (robustaudit compare --all, or --json)")
    return lines


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        before = read_report(args.baseline, "baseline")
        after = read_report(args.current, "report")
    except AuditInputError as exc:
        print(f"robustaudit: error: {exc.message}", file=sys.stderr)
        return EXIT_INPUT
    result = compare_reports(before, after)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(comparison_lines(result, limit=None if args.all else args.limit)))
    return EXIT_PASS


def _write_html(report: dict[str, Any], out: str) -> Path | None:
    """OUT/report.html beside report.json; on a bare box without jinja2/matplotlib, a note instead.

    The verdict stands either way: report.json is written and the page is a convenience.
    """
    from .html import write_report_html

    try:
        return write_report_html(report, out)
    except ModuleNotFoundError as exc:
        print(f"robustaudit: report.html not written: the Python package {exc.name!r} is missing "
              "(pip install jinja2 matplotlib)", file=sys.stderr)
        return None


def cmd_metrics(args: argparse.Namespace) -> int:
    from .spec import metric_catalog, validate_suites
    from .suites import SUITES

    names = args.suite or sorted(SUITES)
    try:
        suites = validate_suites({n: {} for n in names})
    except SpecError as exc:
        print(f"robustaudit: error: {exc.message}", file=sys.stderr)
        return EXIT_INPUT
    catalog = {n: p for n, p in metric_catalog(suites).items() if n in names}
    if args.json:
        print(json.dumps(catalog, indent=2))
    else:
        for name, paths in catalog.items():
            print(f"{name}:")
            for path in paths:
                print(f"  {name}.{path}")
        print("(with default parameters; {class} and {group} stand for a class or group name)")
    return EXIT_PASS


def cmd_suites(args: argparse.Namespace) -> int:
    from .suites import SUITES

    if args.json:
        print(json.dumps({n: {"description": c.description, "params": c.params.describe()}
                          for n, c in SUITES.items()}, indent=2))
        return EXIT_PASS
    for name, cls in SUITES.items():
        print(f"{name}: {cls.description}")
        _print_params(cls.params.describe(), "  ")
    return EXIT_PASS


def _print_params(params: list[dict[str, Any]], indent: str) -> None:
    """One line per parameter; an object parameter's fields follow, indented."""
    for p in params:
        default = "its fields' defaults" if p.get("fields") and p["default"] is None else json.dumps(p["default"])
        print(f"{indent}{p['name']} ({p['type']}, default {default}): {p['help']}")
        if p.get("fields"):
            _print_params(p["fields"], indent + "  ")


def add_engine_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="run an audit locally, without a server")
    add_audit_arguments(p)
    add_allow_no_gates(p)
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("compare", help="what changed between two reports, the largest regressions first")
    p.add_argument("baseline", help="the earlier report.json")
    p.add_argument("current", help="the report.json to judge")
    p.add_argument("--json", action="store_true", help="the full comparison as JSON")
    p.add_argument("--limit", type=int, default=30, help="changes shown (default 30)")
    p.add_argument("--all", action="store_true", help="show every change")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("metrics", help="list every gate-able metric path per suite")
    p.add_argument("--suite", action="append", help="only these suites")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_metrics)
    p = sub.add_parser("suites", help="list suites and their parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suites)


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"robustaudit {__version__}")


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; a closed pipe (``robustaudit metrics | head -1``) ends it quietly."""
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a pipe closed early fails here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        # Python's advice: point stdout at devnull so that the flush at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robustaudit", description="Robustness audits of image classifiers.")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    add_engine_commands(sub)
    args = parser.parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
