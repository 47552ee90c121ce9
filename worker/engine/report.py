"""The audit report: versioned JSON, its schema in api_spec/report.schema.json."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .classifier import Classifier
from .gates import verdict_of
from .samples import SampleSet

#: 1.1: the verdict may be "none" (no gates were set)
SCHEMA_VERSION = "1.1"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def environment(device: torch.device) -> dict[str, Any]:
    """What produced the numbers, so that two reports can be compared."""
    env: dict[str, Any] = {
        "robustaudit": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(terse=True), "device": str(device),
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:  # a bare GPU box may have torch only
        env["torchvision"] = None
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
    env["threads"] = torch.get_num_threads()
    return env


def dataset_section(samples: SampleSet, warnings: list[dict[str, Any]]) -> dict[str, Any]:
    counts = (torch.bincount(samples.labels, minlength=samples.num_classes).tolist() if len(samples)
              else [0] * samples.num_classes)
    return {"reference": samples.reference, "n_samples": len(samples),
            "classes": [{"name": n, "n": c} for n, c in zip(samples.class_names, counts)],
            "warnings": warnings}


def build_report(*, spec: dict[str, Any], started: str, finished: str, classifier: Classifier,
                 samples: SampleSet, suites: dict[str, dict[str, Any]], gates: list[dict[str, Any]],
                 warnings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "audit": {"spec": spec, "started": started, "finished": finished},
        "model": classifier.describe(),
        "dataset": dataset_section(samples, warnings or []),
        "environment": environment(classifier.device),
        "suites": suites,
        "gates": gates,
        "verdict": verdict_of(gates).value,
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write then rename, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
