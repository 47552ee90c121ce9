"""Run an audit end to end: resolve the model and the data, run the suites, judge the gates.

The same function serves the CLI, a Celery task and a bare GPU box. An audit runs in two
phases: every shard of every suite (any worker may take any shard, see :class:`ShardClaim`),
then the exact merge of each suite's partials, its finalize and the gates.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import reduce
from pathlib import Path
from typing import Any

import torch

from .card import ModelCard
from .checkpoints import Checkpoints, as_json_data, shard_key
from .classifier import Classifier
from .datasets import DataRoots, load_samples
from .errors import AuditCancelled, SpecError
from .gates import check_placeholder_gates, evaluate_gates
from .models import load_classifier
from .report import build_report, utc_now, write_json_atomic
from .samples import SampleSet
from .spec import AuditSpec
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
        if samples.label_sets is not None:  # the same classes as the labels: re-indexed alike
            samples.label_sets = [tuple(sorted(int(index[c]) for c in s)) for s in samples.label_sets]
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
    check_multilabel_gates(spec, samples)
    found = list(warnings or []) + align_labels(samples, classifier.card)
    for name, params in spec.suites.items():
        get_suite(name).check_inputs(params, samples, classifier)
    return AuditInputs(classifier, samples, found)


#: the metric subtree that exists only when the dataset carries label sets
MULTILABEL = "multilabel"


def check_multilabel_gates(spec: AuditSpec, samples: SampleSet) -> None:
    """A gate on a multi-label metric (``clean.multilabel.top1``) needs a dataset with label sets:
    refused before anything runs, rather than failing at the end for a metric never produced."""
    if samples.label_sets is not None:
        return
    for gate in spec.gates:
        if gate.path.split(".")[0] == MULTILABEL:
            raise SpecError(f"gate '{gate}' names a multi-label metric, but the dataset carries no label sets "
                            "(an npz 'label_sets' array or a 'label_sets' file in the dataset reference)",
                            gate=gate.metric)


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


@dataclass(frozen=True)
class ShardClaim:
    """One unit of an audit that any worker may run: shard ``shard`` of ``of`` of ``suite``.

    ``key`` is the shard's checkpoint key: where its partial is saved and what a claim names.
    """

    suite: str
    shard: int
    of: int
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "shard": self.shard, "of": self.of, "key": self.key}


#: asked before a shard runs; False leaves it to another worker
ClaimFn = Callable[[ShardClaim], bool]
#: asked once every shard's partial is saved, with every shard key; False leaves the merge to another worker
FinalizeFn = Callable[[list[str]], bool]


@dataclass(frozen=True)
class Shard:
    """A planned shard: its claim, its suite's parameters and its samples."""

    claim: ShardClaim
    params: dict[str, Any]
    samples: SampleSet


@dataclass(frozen=True)
class Incomplete:
    """A claimed run that could not finish the audit here: shards others hold, or a merge another does."""

    ran: list[str]
    missing: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"incomplete": True, "ran": list(self.ran), "missing": list(self.missing)}


def plan_suite(name: str, params: dict[str, Any], samples: SampleSet, shards: int, seed: int) -> list[Shard]:
    """The shards of one suite, in order; an empty sample set is one (empty) shard."""
    parts = samples.shards(shards) if len(samples) else [samples]
    return [Shard(ShardClaim(name, i, len(parts), shard_key(name, i, len(parts), params=params, seed=seed,
                                                              sample_ids=part.ids)), params, part)
            for i, part in enumerate(parts)]


def suite_context(ctx: SuiteContext, suite: str, index: int = 0, count: int = 1) -> SuiteContext:
    """A copy of ``ctx`` for one suite (or one of its ``count`` shards) that reports its progress as
    the suite's fraction done. The caller's context is never changed, so a suite that raises leaves
    nothing behind; ``shared`` stays the same dict, where finalize publishes for later suites."""
    outer = ctx.on_progress

    def scaled(s: str, f: float) -> None:
        if outer is not None:
            outer(s, (index + f) / count)

    return replace(ctx, suite=suite, on_progress=scaled if count > 1 else outer, shard=index, shards=count)


def _run_shard(shard: Shard, ctx: SuiteContext, checkpoints: Checkpoints | None) -> Partial:
    """Run one shard with a context of its own; save its partial when there is a store."""
    c = shard.claim
    partial = get_suite(c.suite).run(suite_context(ctx, c.suite, c.shard, c.of), shard.samples, shard.params)
    if checkpoints is not None:
        partial = as_json_data(partial)
        checkpoints.save(c.key, partial)
    return partial


def _finish_suite(name: str, params: dict[str, Any], ctx: SuiteContext, partials: list[Partial],
                  seconds: float, resumed: int) -> dict[str, Any]:
    """Merge a suite's partials (in shard order), finalize, and build its report entry."""
    suite = get_suite(name)
    sctx = suite_context(ctx, name)
    t0 = time.perf_counter()
    result = suite.finalize(sctx, reduce(suite.merge, partials), params)
    sctx.progress(1.0)
    entry = {"status": result.status.value, "params": params, "metrics": result.metrics,
             "artifacts": result.artifacts, "warnings": result.warnings,
             "seconds": round(seconds + time.perf_counter() - t0, 3), **result.extra}
    if resumed:
        entry["resumed_shards"] = resumed
    return entry


def run_suite(name: str, params: dict[str, Any], ctx: SuiteContext, samples: SampleSet,
              shards: int = 1, checkpoints: Checkpoints | None = None) -> dict[str, Any]:
    """Run one suite over ``shards`` shards, merge, finalize; the report's entry for it.

    With ``checkpoints``, each finished shard's partial is saved, and a shard already saved
    by an earlier attempt is loaded instead of run. ``ctx`` is left as it was.
    """
    get_suite(name).check_inputs(params, samples, ctx.classifier)
    t0 = time.perf_counter()
    partials: list[Partial] = []
    resumed = 0
    for shard in plan_suite(name, params, samples, shards, ctx.seed):
        saved = checkpoints.load(shard.claim.key) if checkpoints is not None else None
        if saved is None:
            saved = _run_shard(shard, ctx, checkpoints)
        else:
            resumed += 1
            suite_context(ctx, name, shard.claim.shard, shard.claim.of).progress(1.0)
        partials.append(saved)
    return _finish_suite(name, params, ctx, partials, time.perf_counter() - t0, resumed)


def shard_count(n_samples: int, shards: int, shard_size: int | None) -> int:
    """``shards`` as given, or enough shards of at most ``shard_size`` samples."""
    if shard_size is not None:
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        return max(1, -(-n_samples // shard_size))
    return shards


def plan_audit(spec: AuditSpec, samples: SampleSet, shards: int) -> list[Shard]:
    """Every shard of every suite, suites in the spec's order (each after what it requires)."""
    return [s for name, params in spec.suites.items() for s in plan_suite(name, params, samples, shards, spec.seed)]


def _shard_seed(seed: int, claim: ShardClaim) -> int:
    """The global torch seed a shard starts from: a model that draws from the global generator (a
    randomised defence) then sees the same numbers whichever worker runs the shard, after whatever."""
    return (seed * 1_000_003 + zlib.crc32(f"{claim.suite}/{claim.shard}/{claim.of}".encode())) % (2**63)


def run_audit(spec: AuditSpec, out_dir: str | Path, *, on_progress: ProgressFn | None = None,
              should_stop: Callable[[], bool] | None = None, roots: DataRoots | None = None,
              shards: int = 1, shard_size: int | None = None, checkpoints: Checkpoints | None = None,
              inputs: AuditInputs | None = None, claim: ClaimFn | None = None,
              finalize: FinalizeFn | None = None) -> dict[str, Any]:
    """Run ``spec`` and write ``out_dir/report.json`` (and ``out_dir/artifacts/``); return the report.

    Phase 1 runs every shard of every suite (a shard already in ``checkpoints`` is loaded);
    phase 2 merges each suite's partials, finalizes the suites in order and judges the gates.
    With ``claim``, several processes share one audit through one checkpoint store: a shard
    runs here only if ``claim`` grants it, and the merge only once every partial is in the
    store and ``finalize`` (when given) grants it; otherwise the result is
    :meth:`Incomplete.to_dict` (``{"incomplete": True, "ran": [...], "missing": [...]}``).

    Raises an :class:`~worker.engine.errors.AuditInputError` for bad input and
    :class:`~worker.engine.errors.AuditCancelled` when ``should_stop`` turns true. No report
    file is written unless every suite completed.
    """
    if claim is not None and checkpoints is None:
        raise ValueError("a claimed run needs a checkpoint store: other workers' partials arrive through it")
    out = Path(out_dir)
    started = utc_now()
    inputs = inputs or resolve_inputs(spec, roots)  # check_inputs: once per suite in this process
    ctx = SuiteContext(classifier=inputs.classifier, artifacts=ArtifactStore(out / "artifacts"),
                       seed=spec.seed, on_progress=on_progress, should_stop=should_stop, roots=roots)
    plan = plan_audit(spec, inputs.samples, shard_count(len(inputs.samples), shards, shard_size))
    partials: dict[str, Partial] = {}
    seconds: dict[str, float] = dict.fromkeys(spec.suites, 0.0)
    ran: list[str] = []
    for shard in plan:
        c = shard.claim
        saved = checkpoints.load(c.key) if checkpoints is not None else None
        if saved is not None:
            partials[c.key] = saved
            suite_context(ctx, c.suite, c.shard, c.of).progress(1.0)
            continue
        if should_stop is not None and should_stop():
            raise AuditCancelled("the audit was cancelled")
        if claim is not None and not claim(c):
            continue
        t0 = time.perf_counter()
        torch.manual_seed(_shard_seed(spec.seed, c))
        partials[c.key] = _run_shard(shard, ctx, checkpoints)
        seconds[c.suite] += time.perf_counter() - t0
        ran.append(c.key)
    keys = [s.claim.key for s in plan]
    if claim is not None:
        assert checkpoints is not None
        for key in keys:  # other workers saved theirs meanwhile
            if key not in partials and (saved := checkpoints.load(key)) is not None:
                partials[key] = saved
        missing = [k for k in keys if k not in partials]
        if missing or (finalize is not None and not finalize(keys)):
            return Incomplete(ran, missing).to_dict()
    suites: dict[str, dict[str, Any]] = {}
    for name, params in spec.suites.items():
        own = [s.claim.key for s in plan if s.claim.suite == name]
        suites[name] = _finish_suite(name, params, ctx, [partials[k] for k in own], seconds[name],
                                     resumed=sum(k not in ran for k in own))
    gates = evaluate_gates(spec.gates, {n: s["metrics"] for n, s in suites.items()},
                           unreliable={n: s.get("unreliable") for n, s in suites.items()},
                           accept_unreliable=spec.accept_unreliable, baseline=spec.baseline)
    report = build_report(spec=spec.to_dict(), started=started, finished=utc_now(),
                          classifier=inputs.classifier, samples=inputs.samples, suites=suites, gates=gates,
                          warnings=inputs.warnings)
    write_json_atomic(out / "report.json", report)
    return report
