"""Schedules: validation, due computation with croniter, the beat tick, runs with deltas."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from service.scheduler import next_run, tick
from service.store import Audit
from tests.service.conftest import assert_error_body, audit_body, auth
from worker.tasks import execute_audit


def post_schedule(client, body, tenant="alice"):
    return client.post("/v1/schedules", headers=auth(tenant), data=json.dumps(body), content_type="application/json")


def test_next_run_is_strictly_after():
    t = datetime(2026, 11, 22, 2, 0, tzinfo=timezone.utc)
    assert next_run("0 2 * * *", t) == t + timedelta(days=1)
    assert next_run("*/15 * * * *", t + timedelta(minutes=1)) == t + timedelta(minutes=15)


def test_schedule_validation(client, model_id):
    assert_error_body(post_schedule(client, {**audit_body(model_id), "cron": "every night"}), 422, "validation_error")
    assert_error_body(post_schedule(client, audit_body(model_id)), 422, "validation_error")  # no cron
    assert_error_body(post_schedule(client, {**audit_body(model_id, gates=["clean.zzz>1"]), "cron": "0 2 * * *"}),
                      422, "invalid_spec")
    assert_error_body(post_schedule(client, {**audit_body(model_id), "cron": "0 2 * * *"}, tenant="bob"), 404)


def test_tick_enqueues_due_schedules_once(client, store, dispatcher, model_id):
    sched = post_schedule(client, {**audit_body(model_id), "cron": "0 2 * * *"})
    assert sched.status_code == 201
    sid = sched.json["id"]
    due_at = datetime.fromisoformat(sched.json["next_run_at"])
    assert tick(store, dispatcher, due_at - timedelta(seconds=1)) == []
    fired = tick(store, dispatcher, due_at + timedelta(seconds=5))
    assert len(fired) == 1 and dispatcher.sent == fired
    assert tick(store, dispatcher, due_at + timedelta(seconds=6)) == []  # not twice
    got = client.get(f"/v1/schedules/{sid}", headers=auth()).json
    assert datetime.fromisoformat(got["next_run_at"]) == due_at + timedelta(days=1)
    audit = client.get(f"/v1/audits/{fired[0]}", headers=auth()).json
    assert audit["schedule_id"] == sid and audit["status"] == "queued"
    assert client.delete(f"/v1/schedules/{sid}", headers=auth()).status_code == 204
    assert tick(store, dispatcher, due_at + timedelta(days=2)) == []
    assert_error_body(client.get(f"/v1/schedules/{sid}", headers=auth("bob")), 404)


def test_runs_show_verdicts_and_deltas(client, config, store, dispatcher, model_id):
    sid = post_schedule(client, {**audit_body(model_id), "cron": "0 * * * *"}).json["id"]
    now = datetime.now(timezone.utc)
    first = tick(store, dispatcher, now + timedelta(hours=1))[0]
    execute_audit(config, first)
    second = tick(store, dispatcher, now + timedelta(hours=3))[0]
    execute_audit(config, second)
    with store.session() as s:  # a regression from one night to the next
        a = s.get(Audit, second)
        report = json.loads(json.dumps(a.report))
        report["suites"]["clean"]["metrics"]["top1"]["value"] -= 0.25
        a.report = report
    runs = client.get(f"/v1/schedules/{sid}/runs", headers=auth()).json["items"]
    assert [r["audit_id"] for r in runs] == [first, second]
    assert runs[0]["verdict"] == "pass" and runs[0]["delta"] == {}
    assert runs[1]["metrics"]["clean.top1"] == runs[0]["metrics"]["clean.top1"] - 0.25
    assert abs(runs[1]["delta"]["clean.top1"] + 0.25) < 1e-12
    assert runs[1]["delta"]["clean.ece"] == 0.0


def test_a_schedule_without_gates_is_refused_and_nothing_is_created(client, store, dispatcher):
    from service.store.models import Schedule

    for gates in ({"gates": []}, {"gates": None}, {}):  # refused before the model is looked up: no upload needed
        body = {**{k: v for k, v in audit_body("some-model").items() if k != "gates"}, **gates, "cron": "* * * * *"}
        err = assert_error_body(post_schedule(client, body), 422, "validation_error")
        assert "a schedule needs at least one gate" in json.dumps(err["details"]["errors"]["gates"]), gates
    with store.session() as s:
        assert s.query(Schedule).count() == 0
    assert client.get("/v1/schedules", headers=auth()).json["total"] == 0
    assert tick(store, dispatcher, datetime.now(timezone.utc) + timedelta(days=1)) == [] and dispatcher.sent == []
