"""What the API and the scheduler do with audits, apart from HTTP: validate a request with the
engine, create the row (idempotently), cancel, and compare a schedule's runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.engine.card import ModelCard
from worker.engine.compare import compare_reports
from worker.engine.datasets import DataRoots, check_reference_paths
from worker.engine.errors import SpecError
from worker.engine.gates import check_placeholder_gates
from worker.engine.spec import AuditSpec, dataset_references

from .lifecycle import cancel
from .sandboxing import input_name
from .store.models import Audit, AuditStatus, Model, ModelKind, utcnow

#: keys of a request the engine sees (the model comes from the stored model row)
REQUEST_KEYS = ("dataset", "suites", "gates", "seed", "label", "accept_unreliable", "baseline")


@dataclass(frozen=True)
class ModelRef:
    """A suite parameter object that names another registered model.

    Args:
        suite, key: where it sits: ``suites[suite][key]``.
        id_key: the field that holds the id over the API.
        file_keys: the engine's fields for the file and its card (CLI only; refused over the API).
        kind: the kind of model it must be.
    """

    suite: str
    key: str
    id_key: str
    file_keys: tuple[str, str]
    kind: ModelKind

    @property
    def field(self) -> str:
        return f"suites.{self.suite}.{self.key}"


MODEL_REFS = (
    ModelRef("attacks", "transfer", "model_id", ("model", "card"), ModelKind.CLASSIFIER),
    ModelRef("perturbation", "generator_layers", "generator_id", ("generator", "card"), ModelKind.GENERATOR),
)

ModelLookup = Callable[[str], "Model | None"]


def _refs(suites: Any) -> list[tuple[ModelRef, Mapping[str, Any]]]:
    """The model references present in ``suites``: (where, the parameter object)."""
    if not isinstance(suites, Mapping):
        return []
    found = []
    for ref in MODEL_REFS:
        params = suites.get(ref.suite)
        obj = params.get(ref.key) if isinstance(params, Mapping) else None
        if isinstance(obj, Mapping):
            found.append((ref, obj))
    return found


def check_model_refs(suites: Any, lookup: ModelLookup) -> dict[str, Model]:
    """The registered models that ``suites`` names by id, keyed by id.

    Over the API a model is an id of the tenant's, never a path: file fields are refused.

    Raises:
        SpecError: a file field is given, or the id is not one of the tenant's models of that kind.
    """
    models: dict[str, Model] = {}
    for ref, obj in _refs(suites):
        files = [k for k in ref.file_keys if obj.get(k) is not None]
        if files:
            raise SpecError(f"{ref.field}: over the API a model is named by {ref.id_key} (a registered model id), "
                            f"not by {' or '.join(files)}",
                            errors={f"{ref.field}.{k}": f"not accepted over the API; use {ref.id_key}" for k in files})
        model_id = obj.get(ref.id_key)
        if model_id is None:
            continue
        found = lookup(str(model_id)) if isinstance(model_id, str) else None
        if found is None or found.kind != ref.kind.value:
            what = "model" if ref.kind is ModelKind.CLASSIFIER else "generator"
            raise SpecError(f"{ref.field}.{ref.id_key}: no registered {what} {str(model_id)[:64]!r}; upload it to "
                            f"/v1/models first" + (" with kind=generator" if ref.kind is ModelKind.GENERATOR else ""),
                            errors={f"{ref.field}.{ref.id_key}": f"no {what} {str(model_id)[:64]!r}"})
        models[found.id] = found
    return models


def with_model_files(suites: Any, models: Mapping[str, Model]) -> Any:
    """``suites`` with each id reference filled in with the model's file name (as the sandbox
    shows it: :func:`~service.sandboxing.input_name`) and its card, for the engine."""
    if not isinstance(suites, Mapping):
        return suites
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in suites.items()}
    for ref, obj in _refs(suites):
        model_id = obj.get(ref.id_key)
        if model_id is None:
            continue
        model = models[str(model_id)]
        file_key, card_key = ref.file_keys
        out[ref.suite][ref.key] = {**obj, file_key: input_name(model), card_key: model.card}
    return out


def without_model_files(suites: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form: id references keep their id, never a file name or a card."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in suites.items()}
    for ref, obj in _refs(suites):
        if obj.get(ref.id_key) is not None:
            out[ref.suite][ref.key] = {**obj, **{k: None for k in ref.file_keys}}
    return out


def build_request(body: Mapping[str, Any], model: Model, roots: DataRoots,
                  lookup: ModelLookup = lambda _id: None) -> dict[str, Any]:
    """The validated, normalised request; raises the engine's input errors (a 422) when it is wrong.

    Everything that can be checked without running is checked here: suite names and
    parameters, dataset references (the audit's and a suite's own, such as shift's second
    dataset), that their paths (label sets included) lie under the data roots and exist, gate
    metric paths and class names in gates, and that model references are the tenant's
    registered models (``lookup``: the tenant's models by id). No model is loaded: that
    happens in the sandbox, when the audit runs.
    """
    if model.kind != ModelKind.CLASSIFIER.value:
        raise SpecError(f"model {model.id} is a {model.kind}, not a classifier: it cannot be audited",
                        errors={"model": "not a classifier"})
    raw = {k: body[k] for k in REQUEST_KEYS if k in body}
    models = check_model_refs(raw.get("suites"), lookup)
    if "suites" in raw:
        raw["suites"] = with_model_files(raw["suites"], models)
    spec = AuditSpec.from_dict({**raw, "model": input_name(model), "card": model.card})
    check_placeholder_gates(spec, ModelCard.from_dict(model.card))
    for where, ref in dataset_references(spec):  # the audit's dataset and a suite's own (shift)
        check_reference_paths(ref, roots, where=where)
    full = spec.to_dict()
    request = {k: full[k] for k in REQUEST_KEYS}
    request["suites"] = without_model_files(request["suites"])
    return request


@dataclass
class EngineJob:
    """An audit as the sandboxed engine sees it: the spec, with file names, and the files."""

    spec: dict[str, Any]
    inputs: dict[str, Path]


def engine_job(request: Mapping[str, Any], model: Model, lookup: ModelLookup, *, device: str) -> EngineJob:
    """The engine's spec of a stored request, with every referenced model resolved again
    (tenant-scoped ``lookup``), and the files the sandbox must bind.

    Raises:
        SpecError: a referenced model was deleted since the audit was submitted.
    """
    models = check_model_refs(request.get("suites"), lookup)
    suites = with_model_files(request.get("suites") or {}, models)
    spec = {**request, "suites": suites, "model": input_name(model), "card": model.card, "device": device}
    inputs = {input_name(m): Path(m.path) for m in (model, *models.values())}
    return EngineJob(spec, inputs)


def request_hash(body: Any) -> str:
    """Digest of a request body for idempotency: same key with another body is a conflict."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def find_idempotent(session: Session, tenant: str, key: str) -> Audit | None:
    return session.scalar(select(Audit).where(Audit.tenant == tenant, Audit.idempotency_key == key))


def create_audit(session: Session, *, tenant: str, model: Model, request: dict[str, Any],
                 idempotency_key: str | None = None, body_hash: str | None = None,
                 schedule_id: str | None = None) -> Audit:
    """A new queued audit (flushed, not yet committed); progress starts at 0 for every suite."""
    audit = Audit(tenant=tenant, model_id=model.id, schedule_id=schedule_id, label=request.get("label"),
                  status=AuditStatus.QUEUED.value, request=request,
                  progress={name: 0.0 for name in request["suites"]}, idempotency_key=idempotency_key,
                  request_hash=body_hash, cancel_requested=False, attempts=0, created_at=utcnow())
    session.add(audit)
    session.flush()
    return audit


def cancel_audit(session: Session, audit: Audit) -> None:
    """A queued audit is cancelled at once; a running one is flagged and stops at its next batch
    (:func:`service.lifecycle.cancel`); ``audit`` is refreshed to what the store now holds."""
    cancel(session, audit.id)
    session.refresh(audit)


def headline_metrics(report: Mapping[str, Any] | None) -> dict[str, float | None]:
    """``suite.metric`` -> value of every top-level metric leaf of every suite."""
    out: dict[str, float | None] = {}
    for name, suite in ((report or {}).get("suites") or {}).items():
        for key, leaf in (suite.get("metrics") or {}).items():
            if isinstance(leaf, Mapping) and "value" in leaf:
                value = leaf["value"]
                out[f"{name}.{key}"] = float(value) if isinstance(value, (int, float)) else None
    return out


def runs_with_deltas(audits: Sequence[Audit], regressions: int = 5) -> list[dict[str, Any]]:
    """A schedule's runs, oldest first, each with its change against the previous succeeded run:
    headline deltas, and the report comparison (:func:`worker.engine.compare.compare_reports`, the
    same as ``GET /v1/audits/{id}/compare``): its counts and largest ``regressions``."""
    runs: list[dict[str, Any]] = []
    previous: dict[str, float | None] | None = None
    previous_audit: Audit | None = None
    for audit in audits:
        metrics = headline_metrics(audit.report)
        delta: dict[str, float | None] = {}
        run: dict[str, Any] = {"audit_id": audit.id, "status": audit.status, "verdict": audit.verdict,
                               "created_at": audit.created_at, "finished_at": audit.finished_at,
                               "metrics": metrics, "delta": delta, "baseline_id": None}
        if audit.status == AuditStatus.SUCCEEDED.value and previous is not None and previous_audit is not None:
            for key, value in metrics.items():
                before = previous.get(key)
                delta[key] = None if value is None or before is None else value - before
            if audit.report is not None and previous_audit.report is not None:
                result = compare_reports(previous_audit.report, audit.report)
                run.update(baseline_id=previous_audit.id, changes=result["counts"],
                           regressions=[{k: c[k] for k in ("metric", "baseline", "value", "delta")}
                                        for c in result["changes"] if c["change"] == "regression"][:regressions])
        runs.append(run)
        if audit.status == AuditStatus.SUCCEEDED.value:
            previous, previous_audit = metrics, audit
    return runs
