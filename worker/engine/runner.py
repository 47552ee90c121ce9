"""Run an audit end to end: resolve the model and the data, run the suites, judge the gates.

The same function serves the CLI, a Celery task and a bare GPU box. Suites are run shard by
shard and merged exactly, which is the path a distributed audit takes as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import torch

from .card import ModelCard
from .checkpoints import Checkpoints, as_json_data, shard_key
from .classifier import Classifier
from .datasets import DataRoots, load_samples
from .errors import SpecError
from .gates import evaluate_gates
from .metrics import path_matches
from .models import load_classifier
from .report import build_report, utc_now, write_json_atomic
from .samples import SampleSet
from .spec import AuditSpec, metric_catalog
from .suites import SuiteContext, get_suite
from .suites.base import ArtifactStore, Partial, ProgressFn, Warning_


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present; asking for CUDA on a machine without it is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device {name!r} requested but CUDA is not available on this machine")
    return dev


@dataclass
class AuditInputs:
    """The resolved model and samples of a spec, and what was noticed on the way."""

    classifier: Classifier
    samples: SampleSet
    warnings: list[dict[str, Any]] = field(default_factory=list)


def align_labels(samples: SampleSet, card: ModelCard) -> list[dict[str, Any]]:
    """Map dataset labels to the model's class indices by class name.

    An image folder sorts its class names alphabetically; the model may order them
    otherwise. When every dataset class name is one of the model's, labels are re-indexed
    by name; when the names differ, labels are taken as indices and a warning says so.
    """
    model_names = list(card.class_names)
    data_names = list(samples.class_names)
    if data_names == model_names[:len(data_names)]:
        return []
    if set(data_names) <= set(model_names):
        index = torch.tensor([model_names.index(n) for n in data_names], dtype=torch.long)
        samples.labels = index[samples.labels]
        samples.class_names = model_names
        return []
    samples.class_names = model_names
    return [Warning_("class_names_differ",
                     "the dataset's class names differ from the model card's; labels are taken as class "
                     "indices in the model's order",
                     {"dataset": data_names[:20], "model": model_names[:20]}).to_dict()]


def resolve_inputs(spec: AuditSpec, roots: DataRoots | None = None) -> AuditInputs:
    """Load the model and draw the samples; every problem is a typed input error."""
    device = resolve_device(spec.device)
    card: ModelCard | str | dict | None = spec.card
    classifier = load_classifier(spec.model, card, device=device)
    samples = load_samples(spec.dataset, roots=roots or DataRoots.from_env(), num_classes=classifier.num_classes)
    warnings: list[dict[str, Any]] = []
    if len(samples) < spec.dataset.n_samples:
        # Stratified sampling takes the whole (filtered) set then; a number in the report must not overstate it.
        warnings.append(Warning_("n_samples_above_dataset",
                                 f"{spec.dataset.n_samples} samples were asked for but the dataset has "
                                 f"{len(samples)} (after any class filter); all {len(samples)} are used",
                                 {"requested": spec.dataset.n_samples, "available": len(samples)}).to_dict())
    return prepare_inputs(spec, classifier, samples, warnings)


def prepare_inputs(spec: AuditSpec, classifier: Classifier, samples: SampleSet,
                   warnings: list[dict[str, Any]] | None = None) -> AuditInputs:
    """The checks every audit makes once its model and samples are in hand (file-based or in memory)."""
    check_placeholder_gates(spec, classifier.card)
    found = list(warnings or []) + align_labels(samples, classifier.card)
    for name, params in spec.suites.items():
        get_suite(name).check_inputs(params, samples, classifier)
    return AuditInputs(classifier, samples, found)


#: what an audit writes in its output folder, and nothing else is removed before a new one
REPORT_FILES = ("report.json", "report.html")


def clear_outputs(out_dir: str | Path) -> None:
    """Remove what an earlier audit wrote in ``out_dir``, so a reused folder shows only this run.

    Only our own files go: the report files and the files in ``artifacts/<suite>/`` folders of
    registered suites (then those folders, when empty). Anything else stays. A symbolic link
    there is removed itself, never followed: its target is left alone.
    """
    from .suites import SUITES

    out = Path(out_dir)
    for name in REPORT_FILES:
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()
    artifacts = out / "artifacts"
    if not artifacts.is_dir() or artifacts.is_symlink():
        return
    for suite in SUITES:
        folder = artifacts / suite
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in folder.iterdir():
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()


def check_placeholder_gates(spec: AuditSpec, card: ModelCard) -> None:
    """A gate like ``clean.per_class.cat`` can only be checked once the class names are known."""
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


def run_suite(name: str, params: dict[str, Any], ctx: SuiteContext, samples: SampleSet,
              shards: int = 1, checkpoints: Checkpoints | None = None) -> dict[str, Any]:
    """Run one suite over ``shards`` shards, merge, finalize; the report's entry for it.

    With ``checkpoints``, each finished shard's partial is saved, and a shard already saved
    by an earlier attempt is loaded instead of run.
    """
    suite = get_suite(name)
    suite.check_inputs(params, samples, ctx.classifier)
    ctx.suite = name
    t0 = time.perf_counter()
    parts = samples.shards(shards) if len(samples) else [samples]
    partials: list[Partial] = []
    outer = ctx.on_progress
    resumed = 0

    for i, shard in enumerate(parts):
        def scaled(s: str, f: float, i: int = i) -> None:
            if outer is not None:
                outer(s, (i + f) / len(parts))

        ctx.on_progress = scaled
        key = shard_key(name, i, len(parts), params=params, seed=ctx.seed, sample_ids=shard.ids)
        saved = checkpoints.load(key) if checkpoints is not None else None
        if saved is not None:
            partials.append(saved)
            resumed += 1
            ctx.progress(1.0)
            continue
        partial = suite.run(ctx, shard, params)
        if checkpoints is not None:
            partial = as_json_data(partial)
            checkpoints.save(key, partial)
        partials.append(partial)
    ctx.on_progress = outer
    merged = reduce(suite.merge, partials)
    result = suite.finalize(ctx, merged, params)
    ctx.progress(1.0)
    entry = {"status": result.status.value, "params": params, "metrics": result.metrics,
             "artifacts": result.artifacts, "warnings": result.warnings,
             "seconds": round(time.perf_counter() - t0, 3), **result.extra}
    if resumed:
        entry["resumed_shards"] = resumed
    return entry


def shard_count(n_samples: int, shards: int, shard_size: int | None) -> int:
    """``shards`` as given, or enough shards of at most ``shard_size`` samples."""
    if shard_size is not None:
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        return max(1, -(-n_samples // shard_size))
    return shards


def run_audit(spec: AuditSpec, out_dir: str | Path, *, on_progress: ProgressFn | None = None,
              should_stop: Callable[[], bool] | None = None, roots: DataRoots | None = None,
              shards: int = 1, shard_size: int | None = None, checkpoints: Checkpoints | None = None,
              inputs: AuditInputs | None = None) -> dict[str, Any]:
    """Run ``spec`` and write ``out_dir/report.json`` (and ``out_dir/artifacts/``); return the report.

    Raises an :class:`~worker.engine.errors.AuditInputError` for bad input and
    :class:`~worker.engine.errors.AuditCancelled` when ``should_stop`` turns true. No report
    file is written unless every suite completed.
    """
    out = Path(out_dir)
    started = utc_now()
    inputs = inputs or resolve_inputs(spec, roots)
    torch.manual_seed(spec.seed)
    ctx = SuiteContext(classifier=inputs.classifier, artifacts=ArtifactStore(out / "artifacts"),
                       seed=spec.seed, on_progress=on_progress, should_stop=should_stop)
    suites: dict[str, dict[str, Any]] = {}
    for name, params in spec.suites.items():
        suites[name] = run_suite(name, params, ctx, inputs.samples, checkpoints=checkpoints,
                                 shards=shard_count(len(inputs.samples), shards, shard_size))
    gates = evaluate_gates(spec.gates, {n: s["metrics"] for n, s in suites.items()},
                           unreliable={n: s.get("unreliable") for n, s in suites.items()},
                           accept_unreliable=spec.accept_unreliable)
    report = build_report(spec=spec.to_dict(), started=started, finished=utc_now(),
                          classifier=inputs.classifier, samples=inputs.samples, suites=suites, gates=gates,
                          warnings=inputs.warnings)
    write_json_atomic(out / "report.json", report)
    return report
