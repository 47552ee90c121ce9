"""Shared audits and lost messages end to end: real Redis (its own key prefix), real PostgreSQL,
real ``robustaudit worker`` processes, and a beat (reap + re-dispatch) ticking in a thread.

The numbers of every run are compared with a one-worker run of the same audit done in this
process (:func:`worker.tasks.execute_audit`, the same sandboxed engine).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from service.app import create_app
from service.config import Config
from service.dispatch import CeleryDispatcher
from service.scheduler import reap, redispatch
from service.store import Audit
from service.store.models import ShardClaim
from tests.e2e.conftest import REDIS, Worker, wait_until
from tests.e2e.slow_suite import SlowSuite
from tests.service.conftest import RecordingDispatcher, audit_body, auth, post_audit, upload_demo
from worker.celery_app import create_celery
from worker.engine.suites import SUITES
from worker.tasks import execute_audit

pytestmark = pytest.mark.e2e

#: 20 samples in shards of 5: four shards of each suite; a slow shard takes SLOW_S
SLOW_S = 1.0


@pytest.fixture(scope="module")
def cfg(e2e_config, redis_prefix) -> Config:
    # a queue of its own, so the other e2e modules' worker never takes these audits
    return replace(e2e_config, broker_prefix=f"{redis_prefix}dist:", fanout=2, shard_size=5, redispatch_s=2.0,
                   plugins=("tests.e2e.slow_plugin",))


@pytest.fixture(scope="module", autouse=True)
def slow_registered() -> Iterator[None]:
    had = "slow" in SUITES
    SUITES.setdefault("slow", SlowSuite)
    yield
    if not had:  # the registry of the test process is left as it was found
        SUITES.pop("slow", None)


@pytest.fixture(scope="module")
def dist_app(cfg, e2e_store):
    # only the workers import the plugin: importing it here would register `slow` for good
    bare = replace(cfg, plugins=())
    app = create_app(bare, dispatcher=CeleryDispatcher(create_celery(bare)), store=e2e_store)
    app.config["TESTING"] = True
    return app


@pytest.fixture()
def api(dist_app):
    return dist_app.test_client()


@pytest.fixture(scope="module")
def model(dist_app) -> str:
    resp = upload_demo(dist_app.test_client())
    assert resp.status_code in (200, 201), resp.json
    return str(resp.json["id"])


def body(model: str, **extra: Any) -> dict[str, Any]:
    return audit_body(model, suites={"clean": {}, "slow": {"seconds": SLOW_S}}, **extra)


@pytest.fixture(scope="module")
def reference(cfg, e2e_store, model) -> dict[str, Any]:
    """The metrics of a one-worker run (here, no broker)."""
    app = create_app(replace(cfg, plugins=()), dispatcher=RecordingDispatcher(), store=e2e_store)
    app.config["TESTING"] = True
    audit_id = post_audit(app.test_client(), body(model)).json["id"]
    assert execute_audit(cfg, audit_id).value == "succeeded"
    return metrics(e2e_store, audit_id)


def metrics(store, audit_id: str) -> dict[str, Any]:
    with store.session() as s:
        report = s.get(Audit, audit_id).report
    return {name: suite["metrics"] for name, suite in report["suites"].items()}


class Pool:
    """Worker processes on the module's queue, started and stopped by the tests."""

    def __init__(self, cfg: Config, logs) -> None:
        self.cfg, self.logs, self.workers = cfg, logs, []

    def start(self, n: int = 1) -> list[Worker]:
        new = []
        for _ in range(n):
            w = Worker(self.cfg, self.logs / f"worker{len(self.workers)}.log")
            w.start()
            self.workers.append(w)
            new.append(w)
        for w in new:
            wait_until(lambda w=w: self._ready(w), timeout=90, what="the worker to be ready")
        return new

    @staticmethod
    def _ready(w: Worker) -> bool:
        text = w.log.read_text() if w.log.exists() else ""
        assert w.proc is not None and (w.proc.poll() is None or " ready." in text), f"the worker died: {text[-3000:]}"
        return " ready." in text

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def stop_all(self) -> None:
        for w in self.workers:
            w.stop()


@pytest.fixture(scope="module")
def pool(cfg, tmp_path_factory) -> Iterator[Pool]:
    p = Pool(cfg, tmp_path_factory.mktemp("dist-logs"))
    yield p
    p.stop_all()
    for w in p.workers:
        print(w.log.name, w.log.read_text()[-2000:])


@pytest.fixture()
def beat(cfg, e2e_store) -> Iterator[None]:
    """The beat's reaper and re-dispatch, ticking every 0.5 s while the test runs."""
    dispatcher, stop = CeleryDispatcher(create_celery(replace(cfg, plugins=()))), threading.Event()

    def loop() -> None:
        while not stop.wait(0.5):
            reap(e2e_store, dispatcher, cfg)
            redispatch(e2e_store, dispatcher, cfg)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


def get(api, audit_id):
    return api.get(f"/v1/audits/{audit_id}", headers=auth()).json


def finished(api, audit_id, timeout=90.0):
    return wait_until(lambda: (a := get(api, audit_id))["status"] in ("succeeded", "failed", "cancelled") and a,
                      timeout=timeout, what=f"audit {audit_id} to finish")


def flush_broker(prefix: str) -> int:
    """What a Redis restarted without persistence looks like to us: our keys are gone."""
    import redis

    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    return int(client.delete(*keys)) if keys else 0


def test_redis_restarted_empty_while_queued_then_all_complete(api, cfg, e2e_store, model, pool, reference):
    ids = [post_audit(api, audit_body(model, label=f"lost-{i}")).json["id"] for i in range(3)]
    assert flush_broker(cfg.broker_prefix) > 0  # the three messages were in Redis, and are gone
    pool.start(1)
    time.sleep(1.0)
    assert [get(api, i)["status"] for i in ids] == ["queued"] * 3  # nothing left to deliver them
    dispatcher = CeleryDispatcher(create_celery(replace(cfg, plugins=())))
    sent = wait_until(lambda: redispatch(e2e_store, dispatcher, cfg), timeout=10, what="the re-dispatch tick")
    assert sorted(sent) == sorted(ids)
    for audit_id in ids:
        assert finished(api, audit_id)["status"] == "succeeded"


def test_two_workers_share_one_audit_with_one_worker_numbers(api, e2e_store, model, pool, reference):
    pool.start(2 - len(pool.alive()))
    audit_id = post_audit(api, body(model)).json["id"]
    audit = finished(api, audit_id)
    assert audit["status"] == "succeeded", audit
    with e2e_store.session() as s:
        rows = s.query(ShardClaim).filter_by(audit_id=audit_id).all()
    assert len(rows) == 8 and all(r.done for r in rows)
    assert len({r.holder for r in rows}) == 2  # each worker ran at least one shard
    assert metrics(e2e_store, audit_id) == reference
    assert audit["progress"] == {"clean": 1.0, "slow": 1.0}


def test_worker_sigkilled_mid_shard_audit_completes_with_same_numbers(api, e2e_store, model, pool, reference, beat):
    pool.start(2 - len(pool.alive()))
    audit_id = post_audit(api, body(model)).json["id"]
    wait_until(lambda: 0 < get(api, audit_id)["progress"].get("slow", 0) < 0.5, timeout=60, interval=0.05,
               what="a slow shard to run")
    victim = pool.alive()[0]
    victim.kill()
    audit = finished(api, audit_id)
    assert audit["status"] == "succeeded", audit
    assert metrics(e2e_store, audit_id) == reference


def test_reaped_worker_that_comes_back_cannot_overwrite(api, e2e_store, model, pool, reference, beat):
    for w in pool.alive()[1:]:
        w.stop()
    if not pool.alive():
        pool.start(1)
    sleeper = pool.alive()[0]
    audit_id = post_audit(api, audit_body(model, suites={"slow": {"seconds": 1.5}})).json["id"]
    wait_until(lambda: get(api, audit_id)["progress"].get("slow", 0) > 0, timeout=60, what="slow to start")
    with e2e_store.session() as s:
        first = s.get(Audit, audit_id).holder
    os.killpg(sleeper.proc.pid, signal.SIGSTOP)  # the worker hangs: no heartbeat; the reaper requeues
    try:
        wait_until(lambda: get(api, audit_id)["status"] == "queued" or get(api, audit_id)["attempts"] > 1,
                   timeout=30, what="the reaper to requeue the audit")
        pool.start(1)
        audit = finished(api, audit_id)
        assert audit["status"] == "succeeded" and audit["attempts"] >= 2
    finally:
        os.killpg(sleeper.proc.pid, signal.SIGCONT)
    with e2e_store.session() as s:
        after = s.get(Audit, audit_id)
        holder, report, finished_at = after.holder, after.report, after.finished_at
    assert holder != first
    # the old worker wakes up, finds its attempt taken over and writes nothing
    wait_until(lambda: "not ours any more" in sleeper.log.read_text(), timeout=30, what="the old worker to give up")
    with e2e_store.session() as s:
        again = s.get(Audit, audit_id)
        assert (again.status, again.holder, again.report, again.finished_at) == ("succeeded", holder, report,
                                                                                 finished_at)
