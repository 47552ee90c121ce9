"""End to end: the API (in-process) on real PostgreSQL, real Redis as the broker, and real
Celery worker processes (not eager mode)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.scheduler import reap, tick
from service.store.models import utcnow
from tests.e2e.conftest import wait_until
from tests.e2e.slow_suite import SlowSuite
from tests.service.conftest import assert_error_body, audit_body, auth, post_audit, upload_demo
from worker.engine.suites import SUITES

pytestmark = pytest.mark.e2e


@pytest.fixture()
def model_id(client) -> str:
    resp = upload_demo(client)
    assert resp.status_code in (200, 201), resp.json
    return resp.json["id"]


@pytest.fixture()
def slow_suite(monkeypatch):
    """The API process learns suite ``slow`` here; the workers load it as a plugin."""
    monkeypatch.setitem(SUITES, "slow", SlowSuite)


def get(client, audit_id, tenant="alice"):
    return client.get(f"/v1/audits/{audit_id}", headers=auth(tenant)).json


def finished(client, audit_id, timeout=60.0):
    return wait_until(lambda: (a := get(client, audit_id))["status"] in ("succeeded", "failed", "cancelled") and a,
                      timeout=timeout, what=f"audit {audit_id} to finish")


def test_submit_poll_report(client, worker, model_id, report_validator):
    resp = post_audit(client, audit_body(model_id))
    assert resp.status_code == 202
    audit = finished(client, resp.json["id"])
    assert audit["status"] == "succeeded", audit
    assert audit["verdict"] == "pass" and audit["progress"] == {"clean": 1.0}
    report = client.get(f"/v1/audits/{audit['id']}/report", headers=auth()).json
    report_validator.validate(report)
    assert report["dataset"]["n_samples"] == 20 and report["gates"][0]["passed"] is True
    # tenant isolation on the same real store
    assert_error_body(client.get(f"/v1/audits/{audit['id']}", headers=auth("bob")), 404)
    listed = client.get("/v1/audits?status=succeeded", headers=auth()).json
    assert audit["id"] in [a["id"] for a in listed["items"]]


def test_failing_gate_and_failed_audit(client, worker, model_id, e2e_config):
    fail = post_audit(client, audit_body(model_id, gates=["clean.top1 > 1.5"])).json["id"]
    root = e2e_config.data_roots[0]
    root.mkdir(parents=True, exist_ok=True)
    (root / "corrupt.npz").write_bytes(b"not an npz archive")
    bad = post_audit(client, audit_body(model_id, dataset={"kind": "npz", "path": "corrupt.npz"})).json["id"]
    assert finished(client, fail)["verdict"] == "fail"
    failed = finished(client, bad)
    assert failed["status"] == "failed" and failed["error"]["code"] == "dataset_error"


def test_idempotent_submit_runs_once(client, worker, model_id):
    key = {"Idempotency-Key": f"e2e-{utcnow().timestamp()}"}
    a = post_audit(client, audit_body(model_id, label="idem"), headers=key).json["id"]
    b = post_audit(client, audit_body(model_id, label="idem"), headers=key).json["id"]
    assert a == b
    assert finished(client, a)["attempts"] == 1
    assert_error_body(post_audit(client, audit_body(model_id, label="other"), headers=key), 409)


def test_cancel_running_audit(client, worker, model_id, slow_suite):
    audit_id = post_audit(client, audit_body(model_id, suites={"slow": {"seconds": 30}})).json["id"]
    wait_until(lambda: get(client, audit_id)["progress"].get("slow", 0) > 0, timeout=30, what="slow to start")
    assert client.delete(f"/v1/audits/{audit_id}", headers=auth()).status_code == 202
    audit = finished(client, audit_id, timeout=10)
    assert audit["status"] == "cancelled" and audit["report"] is None
    assert audit["progress"]["slow"] < 1.0


def test_schedule_fires(client, worker, model_id, e2e_store, dispatcher):
    resp = client.post("/v1/schedules", headers=auth(), json={**audit_body(model_id), "cron": "0 * * * *"})
    assert resp.status_code == 201
    sid = resp.json["id"]
    fired = tick(e2e_store, dispatcher, utcnow() + timedelta(hours=1))
    assert len(fired) == 1
    audit = finished(client, fired[0])
    assert audit["status"] == "succeeded" and audit["schedule_id"] == sid
    runs = client.get(f"/v1/schedules/{sid}/runs", headers=auth()).json["items"]
    assert [r["audit_id"] for r in runs] == fired and runs[0]["verdict"] == "pass"
    assert "clean.top1" in runs[0]["metrics"]
    client.delete(f"/v1/schedules/{sid}", headers=auth())


def test_killed_worker_audit_is_redelivered_and_completes(client, worker, model_id, slow_suite):
    """acks_late + reject_on_worker_lost: Redis redelivers after the visibility timeout; the new
    worker finds the heartbeat stale, takes the audit over and finishes it."""
    audit_id = post_audit(client, audit_body(model_id, suites={"slow": {"seconds": 6}})).json["id"]
    wait_until(lambda: get(client, audit_id)["progress"].get("slow", 0) > 0.1, timeout=30, what="slow to start")
    worker.kill()
    assert get(client, audit_id)["status"] == "running"
    worker.start()
    audit = finished(client, audit_id, timeout=90)
    assert audit["status"] == "succeeded", audit
    # the restarted worker either takes the attempt over (its heartbeat was stale: attempt 2) or joins
    # it and takes the dead member's shard once that claim is stale (attempt 1): both finish it
    assert audit["attempts"] in (1, 2) and audit["report"]["suites"]["slow"]["metrics"]["n"]["value"] == 20


def test_reaper_requeues_dead_workers_audit(client, worker, model_id, slow_suite, e2e_config, e2e_store, dispatcher):
    audit_id = post_audit(client, audit_body(model_id, suites={"slow": {"seconds": 6}})).json["id"]
    wait_until(lambda: get(client, audit_id)["progress"].get("slow", 0) > 0.1, timeout=30, what="slow to start")
    worker.kill()
    assert reap(e2e_store, dispatcher, e2e_config)["requeued"] == []  # heartbeat not stale yet
    requeued = wait_until(lambda: reap(e2e_store, dispatcher, e2e_config)["requeued"], timeout=15,
                          what="the reaper to requeue")
    assert requeued == [audit_id] and get(client, audit_id)["status"] == "queued"
    worker.start()
    audit = finished(client, audit_id, timeout=90)
    assert audit["status"] == "succeeded" and audit["attempts"] == 2


def test_postgres_schema_matches_models(e2e_store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from service.store.models import Base

    with e2e_store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
