"""What the API and the scheduler do with audits, apart from HTTP: validate a request with the
engine, create the row (idempotently), cancel, and compare a schedule's runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.engine.card import ModelCard
from worker.engine.datasets import DataRoots
from worker.engine.errors import SpecError
from worker.engine.runner import check_placeholder_gates
from worker.engine.spec import AuditSpec

from .store.models import Audit, AuditStatus, Model, utcnow

#: keys of a request the engine sees (the model comes from the stored model row)
REQUEST_KEYS = ("dataset", "suites", "gates", "seed", "label")


#: suite parameters that refer to another registered model, as ``{"model_id": ...}``
MODEL_REFS = (("attacks", "surrogate"),)

ModelLookup = Callable[[str], "Model | None"]


def resolve_model_refs(suites: Any, lookup: ModelLookup) -> Any:
    """``suites`` with every ``{"model_id": id}`` model reference replaced by the registered
    model's stored checkpoint path and card, so the worker only sees files.

    Raises:
        SpecError: the id is not one of the tenant's models, or the reference also names files.
    """
    if not isinstance(suites, Mapping):
        return suites
    out = dict(suites)
    for suite, key in MODEL_REFS:
        params = out.get(suite)
        if not isinstance(params, Mapping):
            continue
        ref = params.get(key)
        if not isinstance(ref, Mapping) or ref.get("model_id") is None:
            continue
        field = f"suites.{suite}.{key}"
        if ref.get("model") is not None or ref.get("card") is not None:
            raise SpecError(f"{field}: give either model_id or model and card, not both",
                            errors={field: "model_id and model/card are exclusive"})
        found = lookup(str(ref["model_id"]))
        if found is None:
            raise SpecError(f"{field}.model_id: no registered model {ref['model_id']!r}; upload it to /v1/models "
                            "first", errors={f"{field}.model_id": f"no model {ref['model_id']!r}"})
        out[suite] = {**params, key: {"model": found.path, "card": found.card, "model_id": found.id}}
    return out


def build_request(body: Mapping[str, Any], model: Model, roots: DataRoots,
                  lookup: ModelLookup = lambda _id: None) -> dict[str, Any]:
    """The validated, normalised request; raises the engine's input errors (a 422) when it is wrong.

    Everything that can be checked without running is checked here: suite names and
    parameters, dataset reference, that its path lies under the data roots and exists, gate
    metric paths and class names in gates. Model references in suite parameters are
    resolved with ``lookup`` (the tenant's models by id).
    """
    raw = {k: body[k] for k in REQUEST_KEYS if k in body}
    if "suites" in raw:
        raw["suites"] = resolve_model_refs(raw["suites"], lookup)
    spec = AuditSpec.from_dict({**raw, "model": model.path, "card": model.card})
    check_placeholder_gates(spec, ModelCard.from_dict(model.card))
    for path in (spec.dataset.path, spec.dataset.root):
        if path is not None:
            roots.resolve(path)
    full = spec.to_dict()
    return {k: full[k] for k in REQUEST_KEYS}


def engine_spec(request: Mapping[str, Any], model: Model, *, device: str) -> AuditSpec:
    """The engine's spec of a stored request."""
    return AuditSpec.from_dict({**request, "model": model.path, "card": model.card, "device": device})


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


def cancel_audit(audit: Audit) -> None:
    """A queued audit is cancelled at once; a running one is flagged and stops at its next batch."""
    status = AuditStatus(audit.status)
    if status.finished:
        return
    audit.cancel_requested = True
    if status is AuditStatus.QUEUED:
        audit.status = AuditStatus.CANCELLED.value
        audit.finished_at = utcnow()
        audit.error = {"code": "cancelled", "message": "cancelled before it started"}


def headline_metrics(report: Mapping[str, Any] | None) -> dict[str, float | None]:
    """``suite.metric`` -> value of every top-level metric leaf of every suite."""
    out: dict[str, float | None] = {}
    for name, suite in ((report or {}).get("suites") or {}).items():
        for key, leaf in (suite.get("metrics") or {}).items():
            if isinstance(leaf, Mapping) and "value" in leaf:
                value = leaf["value"]
                out[f"{name}.{key}"] = float(value) if isinstance(value, (int, float)) else None
    return out


def runs_with_deltas(audits: Sequence[Audit]) -> list[dict[str, Any]]:
    """A schedule's runs, oldest first, each with its change against the previous succeeded run."""
    runs: list[dict[str, Any]] = []
    previous: dict[str, float | None] | None = None
    for audit in audits:
        metrics = headline_metrics(audit.report)
        delta: dict[str, float | None] = {}
        if audit.status == AuditStatus.SUCCEEDED.value and previous is not None:
            for key, value in metrics.items():
                before = previous.get(key)
                delta[key] = None if value is None or before is None else value - before
        runs.append({"audit_id": audit.id, "status": audit.status, "verdict": audit.verdict,
                     "created_at": audit.created_at, "finished_at": audit.finished_at,
                     "metrics": metrics, "delta": delta})
        if audit.status == AuditStatus.SUCCEEDED.value:
            previous = metrics
    return runs
