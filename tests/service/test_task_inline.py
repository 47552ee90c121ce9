"""The audit task's logic (``execute_audit``) in-process, without Celery: report, failure, claims."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.scheduler import reap
from service.store import Audit
from service.store.models import utcnow
from tests.service.conftest import assert_error_body, audit_body, auth, post_audit
from worker.tasks import execute_audit


def test_execute_writes_report_progress_and_artifacts(client, config, model_id, report_validator):
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    assert execute_audit(config, audit_id).value == "succeeded"
    got = client.get(f"/v1/audits/{audit_id}", headers=auth()).json
    assert got["status"] == "succeeded" and got["verdict"] == "pass" and got["progress"] == {"clean": 1.0}
    assert got["attempts"] == 1 and got["started_at"] and got["finished_at"]
    report = client.get(f"/v1/audits/{audit_id}/report", headers=auth()).json
    report_validator.validate(report)
    assert report == got["report"] and report["dataset"]["n_samples"] == 20
    # clean writes no artifacts; put one where a suite would, and serve it
    art_file = config.storage_dir / "audits" / audit_id / "artifacts" / "clean" / "map.txt"
    art_file.parent.mkdir(parents=True)
    art_file.write_text("hello")
    arts = client.get(f"/v1/audits/{audit_id}/artifacts", headers=auth()).json["items"]
    assert [(a["name"], a["size_bytes"]) for a in arts] == [("clean/map.txt", 5)]
    assert client.get(arts[0]["url"], headers=auth()).get_data() == b"hello"
    assert_error_body(client.get(arts[0]["url"], headers=auth("bob")), 404)
    assert_error_body(client.get(f"/v1/audits/{audit_id}/artifacts/../report.json", headers=auth()), 404)
    assert execute_audit(config, audit_id) is None  # a duplicate delivery does nothing
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'robustaudit_suite_duration_seconds_count{suite="clean"} 1.0' in metrics


def test_corrupt_dataset_fails_with_reason(client, config, model_id):
    root = config.data_roots[0]
    root.mkdir(parents=True)
    (root / "corrupt.npz").write_bytes(b"not an npz archive")
    body = audit_body(model_id, dataset={"kind": "npz", "path": "corrupt.npz", "n_samples": 5})
    audit_id = post_audit(client, body).json["id"]
    assert execute_audit(config, audit_id).value == "failed"
    got = client.get(f"/v1/audits/{audit_id}", headers=auth()).json
    assert got["status"] == "failed" and got["error"]["code"] == "dataset_error"
    assert "corrupt.npz" in got["error"]["message"] and got["report"] is None


def test_cancelled_before_start_is_not_run(client, config, model_id):
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    client.delete(f"/v1/audits/{audit_id}", headers=auth())
    assert execute_audit(config, audit_id) is None


def _set_running(store, audit_id, heartbeat, attempts=1):
    """As a worker's claim leaves it (with a claim token that no live process has)."""
    with store.session() as s:
        a = s.get(Audit, audit_id)
        a.status, a.heartbeat_at, a.attempts, a.holder = "running", heartbeat, attempts, "f" * 32


def test_reaper_requeues_then_fails(client, config, store, dispatcher, model_id):
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    _set_running(store, audit_id, utcnow() - timedelta(seconds=5))
    assert reap(store, dispatcher, config) == {"requeued": [], "failed": []}  # heartbeat still fresh
    _set_running(store, audit_id, utcnow() - timedelta(seconds=config.heartbeat_timeout_s + 5))
    assert reap(store, dispatcher, config)["requeued"] == [audit_id]
    assert dispatcher.sent[-1] == audit_id
    assert client.get(f"/v1/audits/{audit_id}", headers=auth()).json["status"] == "queued"
    _set_running(store, audit_id, utcnow() - timedelta(hours=1), attempts=config.max_attempts)
    assert reap(store, dispatcher, config)["failed"] == [audit_id]
    got = client.get(f"/v1/audits/{audit_id}", headers=auth()).json
    assert got["status"] == "failed" and got["error"]["code"] == "worker_lost"


def test_stale_running_audit_is_taken_over(client, config, store, model_id):
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    _set_running(store, audit_id, utcnow() - timedelta(seconds=config.heartbeat_timeout_s + 1))
    assert execute_audit(config, audit_id).value == "succeeded"
    got = client.get(f"/v1/audits/{audit_id}", headers=auth()).json
    assert got["attempts"] == 2 and got["status"] == "succeeded"


def test_live_attempt_is_joined_not_taken_over(client, config, store, model_id):
    """A duplicate delivery while the holder is alive joins its attempt (same token, attempts
    unchanged) and runs only what nobody holds: here the holder holds nothing yet."""
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    _set_running(store, audit_id, utcnow())
    assert execute_audit(config, audit_id).value == "succeeded"
    with store.session() as s:
        audit = s.get(Audit, audit_id)
        assert audit.attempts == 1 and audit.holder == "f" * 32 and audit.finalizer is not None


def test_soft_time_limit_and_internal_error_are_recorded(client, config, model_id, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    import worker.tasks as tasks

    def raise_(exc):
        def run(*args, **kwargs):
            raise exc
        return run

    monkeypatch.setattr(tasks, "run_sandboxed_audit", raise_(SoftTimeLimitExceeded()))
    slow = post_audit(client, audit_body(model_id)).json["id"]
    assert execute_audit(config, slow).value == "failed"
    assert client.get(f"/v1/audits/{slow}", headers=auth()).json["error"]["code"] == "time_limit"

    monkeypatch.setattr(tasks, "run_sandboxed_audit", raise_(ZeroDivisionError("boom")))
    broken = post_audit(client, audit_body(model_id)).json["id"]
    with pytest.raises(ZeroDivisionError):
        execute_audit(config, broken)
    got = client.get(f"/v1/audits/{broken}", headers=auth()).json
    assert got["status"] == "failed"
    assert got["error"]["code"] == "internal_error" and "boom" not in got["error"]["message"]


class _Killed(BaseException):
    """Stands for SIGKILL of the worker: nothing in the task catches it, the audit stays `running`."""


def test_killed_audit_resumes_from_its_last_finished_shard(client, config, store, model_id, monkeypatch):
    from dataclasses import replace

    from worker.tasks import AuditRecorder

    config = replace(config, shard_size=5)  # 20 samples: 4 shards
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    original = AuditRecorder.on_progress

    def dies_half_way(self, suite, fraction):
        original(self, suite, fraction)
        if fraction >= 0.75:  # three shards reported done: the worker dies, its sandbox with it
            raise _Killed

    monkeypatch.setattr(AuditRecorder, "on_progress", dies_half_way)
    with pytest.raises(_Killed):
        execute_audit(config, audit_id)
    saved = list(config.storage_dir.joinpath("checkpoints", audit_id).glob("*.json"))
    assert 1 <= len(saved) <= 3  # the shards that finished before the kill (the last one may be mid-save)

    monkeypatch.setattr(AuditRecorder, "on_progress", original)
    _set_running(store, audit_id, utcnow() - timedelta(seconds=config.heartbeat_timeout_s + 1))
    assert execute_audit(config, audit_id).value == "succeeded"
    report = client.get(f"/v1/audits/{audit_id}/report", headers=auth()).json
    assert report["suites"]["clean"]["resumed_shards"] == len(saved)
    assert report["suites"]["clean"]["metrics"]["top1"]["n"] == 20
    assert not config.storage_dir.joinpath("checkpoints", audit_id).exists()  # removed once done
