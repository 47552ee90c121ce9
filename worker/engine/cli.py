"""Local command line of the engine: ``robustaudit audit``, ``metrics`` and ``suites``.

Runs with torch alone (``python -m worker.engine audit ...`` on a bare GPU box).
Exit codes of ``audit``: 0 every gate passed, 1 a gate failed, 2 bad input, 3 internal
error, 130 cancelled (Ctrl-C), 141 the reader of our output went away (``| head``).

``--out`` may be reused: what an earlier audit wrote there (report, artifacts) is removed
first, and nothing else. ``--n-samples`` above the dataset's size uses the whole set and the
summary says so (the report's dataset warning ``n_samples_above_dataset``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .errors import AuditCancelled, AuditInputError, SpecError

EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_INTERNAL, EXIT_CANCELLED = 0, 1, 2, 3, 130
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
    p.add_argument("--out", required=True, help="output directory: report.json and artifacts/ (an earlier audit's "
                                                "files there are removed first)")
    p.add_argument("--shards", type=int, default=1, help="run each suite in this many shards and merge")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


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


def headline_values(name: str, metrics: dict[str, Any], limit: int = 12) -> list[tuple[str, Any]]:
    """The suite's headline metrics (its ``headline`` patterns), else its first top-level ones."""
    from .metrics import iter_leaves
    from .suites import SUITES

    patterns = SUITES[name].headline if name in SUITES else ()
    leaves = list(iter_leaves(metrics))
    if patterns:
        chosen = [(p, leaf) for pat in patterns for p, leaf in leaves if fnmatch.fnmatchcase(p, pat)]
    else:
        chosen = [(p, leaf) for p, leaf in leaves if "." not in p]
    return [(p, leaf["value"]) for p, leaf in chosen[:limit]]


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for a person: headline metrics, warnings and each gate."""
    lines = [f"model {report['model']['sha256'][:12]} on {report['dataset']['n_samples']} samples "
             f"({report['environment']['device']})"]
    for w in report["dataset"].get("warnings", []):
        lines.append(f"  warning [{w['code']}]: {w['message']}")
    for name, suite in report["suites"].items():
        lines.append(f"  {name:<12} {suite['status']:<9} {suite['seconds']:7.2f}s")
        shown = [f"{p}={v:.4g}" for p, v in headline_values(name, suite["metrics"]) if v is not None]
        for i in range(0, len(shown), 3):
            lines.append("      " + "   ".join(shown[i:i + 3]))
        for w in suite["warnings"]:
            lines.append(f"    warning [{w['code']}]: {w['message']}")
    for g in report["gates"]:
        mark = "PASS" if g["passed"] else "FAIL"
        lines.append(f"  gate {g['metric']} {g['op']} {g['threshold']:g}: value {g['value']}  {mark}")
    lines.append(f"verdict: {report['verdict']}")
    return lines


def cmd_audit(args: argparse.Namespace) -> int:
    from .runner import clear_outputs, run_audit
    from .spec import AuditSpec

    bar = ProgressBar(sys.stderr, enabled=sys.stderr.isatty() and not args.quiet)
    try:
        spec = AuditSpec.from_dict(spec_from_args(args))
        if args.shards < 1:
            raise SpecError("--shards must be >= 1")
        clear_outputs(args.out)  # a reused --out shows this run only
        report = run_audit(spec, args.out, on_progress=bar, shards=args.shards)
    except AuditInputError as exc:
        bar.close()
        print(f"robustaudit: error: {exc.message}", file=sys.stderr)
        return EXIT_INPUT
    except (AuditCancelled, KeyboardInterrupt):
        bar.close()
        print("robustaudit: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except ModuleNotFoundError as exc:
        # The core needs torch alone; suites' artifacts need numpy (NPZ) and matplotlib (PNG).
        bar.close()
        print(f"robustaudit: error: the Python package {exc.name!r} is missing; the suites' artifacts need "
              "numpy and matplotlib: pip install numpy matplotlib (or carry their wheels)", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception:
        # Never exit 1 (which means "a gate failed") on a crash: a pipeline would misread it.
        bar.close()
        traceback.print_exc()
        print("robustaudit: internal error (a bug: please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    bar.close()
    if not args.quiet:
        print("\n".join(summary_lines(report)))
        print(f"report: {Path(args.out) / 'report.json'}")
    return EXIT_PASS if report["verdict"] == "pass" else EXIT_FAIL


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
    p.set_defaults(func=cmd_audit)
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
