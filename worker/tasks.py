"""The audit task: thin. Claim (or join) the fairest audit in the store (a message is a wake-up:
the audit it names runs when its tenant's turn has come, :mod:`service.fairness`), run the engine
in the sandbox (the uploaded model never runs in the worker process itself), write progress,
heartbeat, worker time, shard claims, report and status back through :mod:`service.lifecycle`;
record an error, then re-raise it.

Several workers share one audit: each takes a copy of the task, joins the attempt and runs
the shards the store grants it; the one granted the final merge writes the report. One that
finds the rest of the shards held by others simply leaves. Every write is guarded by the
attempt's claim token, so a worker whose attempt was reaped and taken over writes nothing.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from service import fairness, lifecycle
from service.audits import EngineJob, engine_job
from service.config import Config
from service.dispatch import TASK_RUN_AUDIT, CeleryDispatcher, Dispatcher, send_audit
from service.lifecycle import ErrorCode, Participation, error_body
from service.sandboxing import SandboxRefused, make_sandbox, run_job
from service.storage import Storage
from service.store import Audit, AuditStatus, Model, Store
from worker.engine.errors import AuditInputError
from worker.engine.gates import verdict_of
from worker.sandbox import SandboxJob

from .celery_app import CONFIG_ATTR

log = logging.getLogger(__name__)

#: bounds on what a sandboxed child may ask for (it runs an uploaded model: never trusted)
MAX_KEY = 200
MAX_KEYS = 100_000


@cache
def _store(url: str) -> Store:
    return Store(url)


def _safe_key(key: Any) -> str | None:
    """A shard key as the checkpoint folder names its files, or None."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY or key.startswith(".") or "/" in key or "\0" in key:
        return None
    return key


class AuditRecorder:
    """One participant's link to the store while its sandbox runs: heartbeat and progress
    (throttled), shard and finalize claims, and "stop?" (cancelled, failed or taken over).

    Args:
        store: the job store.
        part: this worker's participation in the audit's current attempt.
        config: heartbeat period and timeout.
        checkpoint_dir: the audit's shared checkpoint folder (a shard is done once its file is there).
        progress: the audit's progress as stored (every suite, 0 at submit).
        tenant: whose audit it is: each heartbeat charges the time since the last one to it
            (:func:`service.fairness.charge`), which is how workers choose the next tenant.
    """

    def __init__(self, store: Store, part: Participation, config: Config, checkpoint_dir: Path,
                 progress: dict[str, float] | None = None, tenant: str | None = None) -> None:
        self.store, self.part, self.config, self.checkpoint_dir = store, part, config, checkpoint_dir
        self.tenant = tenant
        self._charged = time.monotonic()
        self.audit_id = part.audit_id
        self.progress: dict[str, float] = dict(progress or {})
        self._local: dict[str, float] = {}  # suite -> the fraction our child reports
        self._running: dict[str, tuple[str, int, int]] = {}  # suite -> (key, index, of) of our child's shard
        self._written = 0.0
        self._checked = 0.0
        self._current = True
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> AuditRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.charge()
        except Exception:  # the time is lost to the fairness count, nothing else
            log.exception("audit %s: worker time not recorded", self.audit_id)

    def charge(self) -> None:
        """Record the worker time since the last charge against the audit's tenant."""
        with self._lock:
            now = time.monotonic()
            seconds, self._charged = now - self._charged, now
        if self.tenant is not None:
            fairness.charge(self.store, self.tenant, seconds, half_life_s=self.config.fair_half_life_s)

    def _beat(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            try:
                self.flush()
            except Exception:  # a missed heartbeat is retried at the next one
                log.exception("heartbeat of audit %s failed", self.audit_id)

    def _summed(self) -> dict[str, float]:
        """Progress per suite: shards done (by anyone) plus our own shard's part, over all shards."""
        shards = lifecycle.shard_progress(self.store, self.audit_id)
        with self._lock:
            local, running = dict(self._local), dict(self._running)
            out = dict(self.progress)
        for suite in set(local) | set(shards):
            if suite in shards:
                done, of = shards[suite]
                own = 0.0
                if suite in running:  # the child reports (index + fraction of its shard) / of
                    _key, index, n = running[suite]
                    own = min(1.0, max(0.0, local.get(suite, 0.0) * n - index))
                value = min(1.0, (done + own) / max(1, of))
            else:
                value = local[suite]
            out[suite] = max(out.get(suite, 0.0), round(value, 4))  # never goes back
        return out

    def flush(self) -> None:
        progress = self._summed()
        with self._lock:
            self.progress = progress
        if not lifecycle.heartbeat(self.store, self.part, progress):
            self._current = False  # reaped and taken over, or ended by another participant
        self._written = time.monotonic()
        if self._written - self._charged >= self.config.heartbeat_s:
            self.charge()

    def on_progress(self, suite: str, fraction: float) -> None:
        with self._lock:
            self._local[suite] = fraction
        if time.monotonic() - self._written > 0.5 or fraction >= 1.0:
            self.flush()

    def should_stop(self) -> bool:
        if self._current and time.monotonic() - self._checked > 0.5:
            self._checked = time.monotonic()
            self._current = lifecycle.is_current(self.store, self.part)
        return not self._current

    def saved(self, key: str) -> bool:
        return (self.checkpoint_dir / f"{key}.json").is_file()

    def settle(self) -> None:
        """Mark done the shards we hold whose partial is saved (the file, not the child's word)."""
        done = [k for k in lifecycle.held_shards(self.store, self.part) if self.saved(k)]
        lifecycle.mark_done(self.store, self.audit_id, done)
        with self._lock:
            for suite, (key, _i, _n) in list(self._running.items()):
                if key in done:
                    del self._running[suite]

    def on_claim(self, claim: dict[str, Any]) -> bool:
        """The child asks for a shard, or for the final merge; a malformed claim is refused."""
        try:
            if claim.get("finalize") is True:
                return self._finalize(claim.get("keys"))
            return self._shard(claim)
        except Exception:  # a store hiccup refuses the claim; the shard is redone later
            log.exception("audit %s: claim %r failed", self.audit_id, str(claim)[:200])
            return False

    def _shard(self, claim: dict[str, Any]) -> bool:
        suite, index, of, key = claim.get("suite"), claim.get("shard"), claim.get("of"), _safe_key(claim.get("key"))
        if not (isinstance(suite, str) and 0 < len(suite) <= 64 and isinstance(index, int) and isinstance(of, int)
                and 0 <= index < of <= MAX_KEYS and key is not None):
            return False
        self.settle()
        if self.saved(key):  # another worker finished it meanwhile
            lifecycle.mark_done(self.store, self.audit_id, [key])
            return False
        granted = lifecycle.grant_shard(self.store, self.part, key=key, suite=suite, index=index, of=of,
                                        stale_s=self.config.heartbeat_timeout_s)
        if granted:
            with self._lock:
                self._running[suite] = (key, index, of)
        return granted

    def _finalize(self, keys: Any) -> bool:
        if not isinstance(keys, list) or len(keys) > MAX_KEYS:
            return False
        safe = [_safe_key(k) for k in keys]
        if any(k is None for k in safe):
            return False
        self.settle()
        checked = [k for k in safe if k is not None]
        if not all(self.saved(k) for k in checked):  # a shard's partial is missing: not yet
            return False
        lifecycle.mark_done(self.store, self.audit_id, checked)
        return lifecycle.grant_finalize(self.store, self.part)


def _load_job(store: Store, config: Config, audit_id: str) -> tuple[EngineJob, dict[str, float], str]:
    """(the engine's job, the stored progress, the tenant) of an audit."""
    with store.session() as s:
        audit = s.get(Audit, audit_id)
        assert audit is not None
        model = s.get(Model, audit.model_id)
        assert model is not None
        tenant = audit.tenant

        def lookup(model_id: str) -> Model | None:
            return s.scalar(select(Model).where(Model.id == model_id, Model.tenant == tenant))

        job = engine_job(dict(audit.request), model, lookup, device=config.device)
        return job, dict(audit.progress or {}), tenant


def _ended(storage: Storage, part: Participation, written: bool, status: AuditStatus) -> AuditStatus | None:
    """After our write of an outcome: the checkpoints go only if the write was ours (a reaped
    worker must not delete what the new holder is using)."""
    if not written:
        log.warning("audit %s: not ours any more (taken over, or ended by another worker); nothing written",
                    part.audit_id)
        return None
    storage.clear_checkpoints(part.audit_id)
    return status


def execute_audit(config: Config, audit_id: str, *, worker: str = "") -> AuditStatus | None:
    """Take part in this one audit in the sandbox; the status this worker wrote, or None when it
    wrote none (nothing to do, or its shards are done and others hold the rest)."""
    store = _store(config.database_url)
    part = lifecycle.claim(store, audit_id, worker=worker or socket.gethostname(), stale_s=config.heartbeat_timeout_s)
    if part is None:
        log.info("audit %s: not claimable (finished, cancelled or gone)", audit_id)
        return None
    return run_claimed(config, part)


def execute_next(config: Config, hint: str | None, *, worker: str = "",
                 dispatcher: Dispatcher | None = None) -> tuple[str, AuditStatus | None] | None:
    """What a delivered message does: take the fairest work across tenants (``hint``, the audit the
    message names, only when its tenant's turn has come) and run it. (audit id, the status this
    worker wrote), or None when there was nothing to take. ``dispatcher`` sends the hint again
    when its message went to a fairer audit (:func:`service.lifecycle.claim_next`)."""
    store = _store(config.database_url)
    resend = (lambda audit_id: send_audit(dispatcher, store, audit_id)) if dispatcher is not None else None
    part = lifecycle.claim_next(store, hint, worker=worker or socket.gethostname(),
                                stale_s=config.heartbeat_timeout_s, half_life_s=config.fair_half_life_s,
                                resend=resend)
    if part is None:
        log.info("message for audit %s: nothing to claim (finished, cancelled or taken)", hint)
        return None
    if part.audit_id != hint:
        log.info("message for audit %s: took audit %s, the fairest work", hint, part.audit_id)
    return part.audit_id, run_claimed(config, part)


def run_claimed(config: Config, part: Participation) -> AuditStatus | None:
    """Run this worker's part of a claimed audit and write the outcome through the lifecycle."""
    store, storage = _store(config.database_url), Storage(config.storage_dir)
    audit_id = part.audit_id
    # no start-up clear of the audit's folder: it is new (a uuid), a retry rewrites the same
    # files, and a slow worker's clear could delete what another participant is writing
    checkpoints = storage.checkpoint_dir(audit_id)
    try:
        job, progress, tenant = _load_job(store, config, audit_id)
        with AuditRecorder(store, part, config, checkpoints, progress, tenant=tenant) as rec:
            report = run_sandboxed_audit(config, job, storage.audit_dir(audit_id), checkpoints, rec)
            rec.settle()
    except AuditInputError as exc:
        return _ended(storage, part, lifecycle.fail(store, part, exc.to_dict()), AuditStatus.FAILED)
    except SandboxRefused as exc:
        if exc.code == ErrorCode.CANCELLED.value:
            return _ended(storage, part, lifecycle.cancelled(store, part), AuditStatus.CANCELLED)
        log.error("audit %s: %s: %s", audit_id, exc.code, exc.message)
        return _ended(storage, part, lifecycle.fail(store, part, error_body(exc.code, exc.message)),
                      AuditStatus.FAILED)
    except SoftTimeLimitExceeded:
        return _ended(storage, part, lifecycle.fail(store, part, error_body(
            ErrorCode.TIME_LIMIT, f"the audit ran longer than {config.soft_time_limit_s:g} s")), AuditStatus.FAILED)
    except Exception:
        # the exception's text stays in the worker's log: never in an answer
        log.exception("audit %s: internal error", audit_id)
        _ended(storage, part, lifecycle.fail(store, part, error_body(
            ErrorCode.INTERNAL_ERROR, "the worker failed while it ran the audit; the incident was logged")),
            AuditStatus.FAILED)
        raise
    if report is None:
        log.info("audit %s: this worker's shards are done; other workers hold the rest", audit_id)
        return None
    written = lifecycle.succeed(store, part, report=report, verdict=report["verdict"],
                                progress={name: 1.0 for name in report["suites"]},
                                suite_seconds={name: suite["seconds"] for name, suite in report["suites"].items()})
    return _ended(storage, part, written, AuditStatus.SUCCEEDED)


def run_sandboxed_audit(config: Config, job: EngineJob, out_dir: Path, checkpoint_dir: Path,
                        rec: AuditRecorder) -> dict[str, Any] | None:
    """The engine's report of ``job``, run in the sandbox; progress, claims and cancel go through
    ``rec``. None when the child ran what it was granted and other workers hold the rest.

    Raises:
        SandboxedInputError: the model, the data or the request is wrong.
        SandboxRefused: the sandbox cannot run, the audit was cancelled, or the child died.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    gpu = config.device != "cpu" and any(Path("/dev").glob("nvidia[0-9]*"))
    payload = {"spec": job.spec, "data_roots": [str(r) for r in config.data_roots], "shard_size": config.shard_size,
               "plugins": list(config.plugins), "claims": True}
    sjob = SandboxJob("audit", payload, inputs=job.inputs, output_dir=out_dir, checkpoint_dir=checkpoint_dir,
                      data_roots=config.data_roots, gpu=gpu)

    def on_message(message: dict[str, Any]) -> None:
        progress = message.get("progress")
        if isinstance(progress, dict) and isinstance(progress.get("suite"), str):
            fraction = progress.get("fraction")
            if isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0:
                rec.on_progress(progress["suite"][:64], float(fraction))

    sandbox = make_sandbox(config, wall_s=config.soft_time_limit_s, gpu=gpu)
    result = run_job(sandbox, sjob, on_message=on_message, should_stop=rec.should_stop, on_claim=rec.on_claim)
    if result.get("incomplete") is True:  # its shards are done; others hold the rest, or the merge
        return None
    gates = result.get("gates")
    # the verdict must be the one its gates give (none without gates): never a pass the gates do not back
    if (not isinstance(gates, list) or not all(isinstance(g, dict) for g in gates)
            or result.get("verdict") != verdict_of(gates).value or not isinstance(result.get("suites"), dict)):
        raise SandboxRefused(ErrorCode.SANDBOX_FAILED.value, "the sandboxed engine returned no valid report")
    return result


@shared_task(name=TASK_RUN_AUDIT, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_audit_task(self: Task, audit_id: str) -> None:
    """Celery entry point: the configuration travels on the app; the message is a wake-up that
    names an audit, and the worker takes the fairest work across tenants (:func:`execute_next`)."""
    config: Config = getattr(self.app, CONFIG_ATTR, None) or Config.from_env()
    execute_next(config, audit_id, worker=str(self.request.hostname or ""), dispatcher=CeleryDispatcher(self.app))
