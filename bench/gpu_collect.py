"""Assemble bench/gpu.sh's run folder into one JSON document.

For each benchmark the folder holds ``<name>.meta.json`` (command, exit status, wall time, or why it
was skipped), its stdout and stderr, and for some a JSON file of its own. The benchmarks print in
different shapes (fragile.py a JSON object, attacks.py and corruptions.py text tables, autoattack.py
and distributed.py a JSON file); each parser below reads one shape, and whatever it cannot read is
kept as the output's last lines, so a failed or changed benchmark still leaves evidence.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

TAIL = 2000  # characters of stdout/stderr kept for a benchmark that failed or could not be parsed


def last_json_object(text: str) -> dict[str, Any] | None:
    """The last ``{...}`` object that starts a line of ``text`` (fragile.py prints one, then a summary line)."""
    decoder = json.JSONDecoder()
    starts = [m.start(1) for m in re.finditer(r"(?:^|\n)(\{)", text)]
    for start in reversed(starts):
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_fragile(out: str, run: Path) -> dict[str, Any] | None:
    return last_json_object(out)


def parse_pgd(out: str, run: Path) -> dict[str, Any] | None:
    """attacks.py part 1: '  <name>   <rate> it/s   robustaudit / this = <ratio>' lines."""
    rates = {m.group(1).strip(): float(m.group(2))
             for m in re.finditer(r"^\s{2}(\S.*?)\s+([\d.]+) it/s", out, re.MULTILINE)}
    if not rates:
        return None
    result: dict[str, Any] = {"iterations_per_s": rates}
    ours = rates.get("robustaudit PGD")
    if ours:
        result["ours_over"] = {name: round(ours / r, 3) for name, r in rates.items() if r and name != "robustaudit PGD"}
    head = re.search(r"^torch .*$", out, re.MULTILINE)
    if head:
        result["setup"] = head.group(0)
    return result


def parse_corruptions(out: str, run: Path) -> dict[str, Any] | None:
    """corruptions.py: '<name> <ours img/s> <ref img/s> <ratio>' rows, 'nan' where no reference ran."""
    rows: dict[str, dict[str, float | None]] = {}
    for m in re.finditer(r"^([a-z_]+)\s+([\d.]+|nan)\s+([\d.]+|nan)\s+([\d.]+|nan)", out, re.MULTILINE):
        ours, ref, ratio = (float(v) for v in m.group(2, 3, 4))
        rows[m.group(1)] = {"ours_images_per_s": ours, "reference_images_per_s": None if math.isnan(ref) else ref,
                            "ratio": None if math.isnan(ratio) else ratio}
    if not rows:
        return None
    head = re.search(r"^# (.*)$", out, re.MULTILINE)
    return {"setup": head.group(1) if head else None, "per_corruption": rows}


def parse_json_file(name: str) -> Callable[[str, Path], dict[str, Any] | None]:
    def parse(out: str, run: Path) -> dict[str, Any] | None:
        path = run / f"{name}.json"
        if path.is_file():
            value = json.loads(path.read_text())
            return value if isinstance(value, dict) else {"value": value}
        return last_json_object(out)
    return parse


PARSERS: dict[str, Callable[[str, Path], dict[str, Any] | None]] = {
    "fragile": parse_fragile, "pgd": parse_pgd, "corruptions": parse_corruptions,
    "autoattack": parse_json_file("autoattack"), "distributed": parse_json_file("distributed"),
}


def collect(run: Path, name: str) -> dict[str, Any]:
    """One benchmark's entry: its meta, its parsed result or its output's tail, and a status."""
    meta_path = run / f"{name}.meta.json"
    if not meta_path.is_file():
        return {"status": "missing", "error": "the benchmark left no record"}
    entry: dict[str, Any] = json.loads(meta_path.read_text())
    if "skipped" in entry:
        return {"status": "skipped", **entry}
    out = (run / f"{name}.out").read_text(errors="replace") if (run / f"{name}.out").exists() else ""
    err = (run / f"{name}.err").read_text(errors="replace") if (run / f"{name}.err").exists() else ""
    try:
        result = PARSERS[name](out, run)
    except (OSError, ValueError, KeyError) as exc:  # a malformed result file is recorded, not fatal
        result, entry["parse_error"] = None, f"{type(exc).__name__}: {exc}"
    if entry["timed_out"]:
        entry["status"] = "timeout"
    elif entry["rc"] != 0:
        entry["status"] = "failed"
    else:
        entry["status"] = "ok" if result is not None else "unparsed"
    if result is not None:
        entry["result"] = result
    if entry["status"] != "ok":
        entry["stdout_tail"], entry["stderr_tail"] = out[-TAIL:], err[-TAIL:]
    return entry


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # the JSON is still written when torch itself is broken
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="bench/gpu.sh's run folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", type=int, default=0)
    ap.add_argument("--budget", type=float, default=0)
    ap.add_argument("--wall", type=float, default=0)
    ap.add_argument("names", nargs="+")
    args = ap.parse_args(argv)
    benchmarks = {name: collect(args.run, name) for name in args.names}
    doc = {"quick": bool(args.quick), "budget_s": args.budget, "wall_s": args.wall, "environment": environment(),
           "statuses": {name: b["status"] for name, b in benchmarks.items()}, "benchmarks": benchmarks}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}: " + ", ".join(f"{n} {s}" for n, s in doc["statuses"].items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
