"""The audit task: thin. Claim the audit in the store, run the engine in the sandbox (the
uploaded model never runs in the worker process itself), write progress, heartbeat, report
and status back; record an error, then re-raise it.

A redelivered message (its worker was killed) finds the audit ``running`` with a stale
heartbeat and takes it over; a duplicate finds it held by a live worker, or finished, and
does nothing.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import or_, select, update

from service.audits import EngineJob, engine_job
from service.config import Config
from service.dispatch import TASK_RUN_AUDIT
from service.sandboxing import SandboxRefused, make_sandbox, run_job
from service.storage import Storage
from service.store import Audit, AuditStatus, Model, Store
from service.store.models import utcnow
from worker.engine.errors import AuditInputError
from worker.sandbox import SandboxJob

from .celery_app import CONFIG_ATTR

log = logging.getLogger(__name__)


@cache
def _store(url: str) -> Store:
    return Store(url)


class AuditRecorder:
    """Writes a running audit's progress and heartbeat (throttled) and answers "cancelled?".

    Args:
        store: the job store.
        audit_id: the audit.
        config: heartbeat period.
    """

    def __init__(self, store: Store, audit_id: str, config: Config) -> None:
        self.store, self.audit_id, self.config = store, audit_id, config
        self.progress: dict[str, float] = {}
        self._written = 0.0
        self._checked = 0.0
        self._cancelled = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> AuditRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            try:
                self.flush()
            except Exception:  # a missed heartbeat is retried at the next one
                log.exception("heartbeat of audit %s failed", self.audit_id)

    def flush(self) -> None:
        with self._lock:  # the heartbeat thread and the engine's progress callback both flush
            progress = dict(self.progress)
        with self.store.session() as s:
            s.execute(update(Audit).where(Audit.id == self.audit_id, Audit.status == AuditStatus.RUNNING.value)
                      .values(heartbeat_at=utcnow(), progress=progress))
        self._written = time.monotonic()

    def on_progress(self, suite: str, fraction: float) -> None:
        with self._lock:
            self.progress[suite] = round(fraction, 4)
        if time.monotonic() - self._written > 0.5 or fraction >= 1.0:
            self.flush()

    def should_stop(self) -> bool:
        if not self._cancelled and time.monotonic() - self._checked > 0.5:
            self._checked = time.monotonic()
            with self.store.session() as s:
                audit = s.get(Audit, self.audit_id)
                self._cancelled = audit is None or audit.cancel_requested
        return self._cancelled


class AuditHeld(Exception):
    """Another worker runs this audit and its heartbeat is fresh."""


def claim(store: Store, audit_id: str, config: Config, worker: str) -> bool:
    """Atomically move the audit to ``running`` if it is queued, or running with a dead worker.

    Raises:
        AuditHeld: it is running with a fresh heartbeat (the caller may look again later).
    """
    stale = utcnow() - timedelta(seconds=config.heartbeat_timeout_s)
    with store.session() as s:
        result = s.execute(update(Audit).where(
            Audit.id == audit_id, Audit.cancel_requested.is_(False),
            or_(Audit.status == AuditStatus.QUEUED.value,
                (Audit.status == AuditStatus.RUNNING.value) & (Audit.heartbeat_at < stale)))
            .values(status=AuditStatus.RUNNING.value, started_at=utcnow(), heartbeat_at=utcnow(),
                    worker=worker, attempts=Audit.attempts + 1, error=None))
        if result.rowcount == 1:  # type: ignore[attr-defined]
            return True
        audit = s.get(Audit, audit_id)
        if audit is not None and audit.status == AuditStatus.RUNNING.value and not audit.cancel_requested:
            raise AuditHeld(audit_id)
        return False


def finish(store: Store, audit_id: str, status: AuditStatus, **values: Any) -> None:
    with store.session() as s:
        s.execute(update(Audit).where(Audit.id == audit_id)
                  .values(status=status.value, finished_at=utcnow(), **values))


def execute_audit(config: Config, audit_id: str, *, worker: str = "") -> AuditStatus | None:
    """Run one audit end to end in the sandbox; None when it was not ours to run."""
    store, storage = _store(config.database_url), Storage(config.storage_dir)
    if not claim(store, audit_id, config, worker or socket.gethostname()):
        log.info("audit %s: not claimable (finished, cancelled or held by a live worker)", audit_id)
        return None
    checkpoints = storage.checkpoint_dir(audit_id)
    if not any(checkpoints.glob("*.json")):
        storage.clear_audit(audit_id)  # a fresh start; a retry keeps the artifacts of finished shards
    try:
        with store.session() as s:
            audit = s.get(Audit, audit_id)
            assert audit is not None
            model = s.get(Model, audit.model_id)
            assert model is not None
            tenant = audit.tenant

            def lookup(model_id: str) -> Model | None:
                return s.scalar(select(Model).where(Model.id == model_id, Model.tenant == tenant))

            job = engine_job(dict(audit.request), model, lookup, device=config.device)
        with AuditRecorder(store, audit_id, config) as rec:
            report = run_sandboxed_audit(config, job, storage.audit_dir(audit_id), checkpoints, rec)
    except AuditInputError as exc:
        storage.clear_checkpoints(audit_id)
        finish(store, audit_id, AuditStatus.FAILED, error=exc.to_dict())
        return AuditStatus.FAILED
    except SandboxRefused as exc:
        storage.clear_checkpoints(audit_id)
        if exc.code == "cancelled":
            finish(store, audit_id, AuditStatus.CANCELLED, error={"code": "cancelled", "message": "cancelled"})
            return AuditStatus.CANCELLED
        log.error("audit %s: %s: %s", audit_id, exc.code, exc.message)
        finish(store, audit_id, AuditStatus.FAILED, error={"code": exc.code, "message": exc.message})
        return AuditStatus.FAILED
    except SoftTimeLimitExceeded:
        storage.clear_checkpoints(audit_id)
        finish(store, audit_id, AuditStatus.FAILED, error={
            "code": "time_limit", "message": f"the audit ran longer than {config.soft_time_limit_s:g} s"})
        return AuditStatus.FAILED
    except Exception as exc:
        storage.clear_checkpoints(audit_id)
        finish(store, audit_id, AuditStatus.FAILED,
               error={"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"})
        raise
    storage.clear_checkpoints(audit_id)
    finish(store, audit_id, AuditStatus.SUCCEEDED, report=report, verdict=report["verdict"],
           progress={name: 1.0 for name in report["suites"]},
           suite_seconds={name: suite["seconds"] for name, suite in report["suites"].items()})
    return AuditStatus.SUCCEEDED


def run_sandboxed_audit(config: Config, job: EngineJob, out_dir: Path, checkpoint_dir: Path,
                        rec: AuditRecorder) -> dict[str, Any]:
    """The engine's report of ``job``, run in the sandbox; progress and cancel go through ``rec``.

    Raises:
        SandboxedInputError: the model, the data or the request is wrong.
        SandboxRefused: the sandbox cannot run, the audit was cancelled, or the child died.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    gpu = config.device != "cpu" and any(Path("/dev").glob("nvidia[0-9]*"))
    payload = {"spec": job.spec, "data_roots": [str(r) for r in config.data_roots], "shard_size": config.shard_size,
               "plugins": list(config.plugins)}
    sjob = SandboxJob("audit", payload, inputs=job.inputs, output_dir=out_dir, checkpoint_dir=checkpoint_dir,
                      data_roots=config.data_roots, gpu=gpu)

    def on_message(message: dict[str, Any]) -> None:
        progress = message.get("progress")
        if isinstance(progress, dict) and isinstance(progress.get("suite"), str):
            fraction = progress.get("fraction")
            if isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0:
                rec.on_progress(progress["suite"][:64], float(fraction))

    sandbox = make_sandbox(config, wall_s=config.soft_time_limit_s, gpu=gpu)
    report = run_job(sandbox, sjob, on_message=on_message, should_stop=rec.should_stop)
    if report.get("verdict") not in ("pass", "fail") or not isinstance(report.get("suites"), dict):
        raise SandboxRefused("sandbox_failed", "the sandboxed engine returned no valid report")
    return report


@shared_task(name=TASK_RUN_AUDIT, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_audit_task(self: Task, audit_id: str) -> None:
    """Celery entry point: the configuration travels on the app, the audit id in the message."""
    config: Config = getattr(self.app, CONFIG_ATTR, None) or Config.from_env()
    try:
        execute_audit(config, audit_id, worker=str(self.request.hostname or ""))
    except AuditHeld:
        # a redelivered message while the holder's heartbeat is still fresh: look again once it
        # would be stale; if the holder is alive by then, it finishes the audit itself
        raise self.retry(countdown=config.heartbeat_timeout_s + 1, max_retries=3) from None
