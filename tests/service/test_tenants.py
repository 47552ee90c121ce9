"""One tenant cannot block the others: per-tenant limits (429 with Retry-After, nothing created) and
fair scheduling (the next audit a worker takes is the least served tenant's), as a hostile client
would try it. No audit runs here: workers are played by :func:`service.lifecycle.claim_next`."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from service import fairness, lifecycle
from service.app import create_app
from service.config import Config, ConfigError
from service.scheduler import tick
from service.store import Audit
from service.store.models import Schedule, utcnow
from service.tenant_limits import LimitsTable, TenantLimits
from tests.service.conftest import assert_error_body, audit_body, auth, post_audit, upload_demo

LIMITS = LimitsTable(TenantLimits(max_active_audits=3, max_schedules=2))


@pytest.fixture()
def limited(config, store, dispatcher):
    """The app with low limits: 3 audits at once, 2 schedules."""
    app = create_app(replace(config, tenant_limits=LIMITS), dispatcher=dispatcher, store=store)
    app.config["TESTING"] = True
    return app.test_client()


def count(store, model=Audit, **where) -> int:
    with store.session() as s:
        return int(s.scalar(select(func.count()).select_from(model).filter_by(**where)))


def test_limits_are_read_per_tenant_with_defaults():
    env = {"ROBUSTAUDIT_TENANT_LIMITS": json.dumps({"*": {"max_active_audits": 7},
                                                    "ci": {"max_schedules": 40, "max_cost": 1e9}})}
    table = Config.from_env(env).tenant_limits
    assert table.of("anyone") == TenantLimits(max_active_audits=7)
    assert table.of("ci") == TenantLimits(max_active_audits=7, max_schedules=40, max_cost=1e9)
    assert LimitsTable.parse(table.to_json()) == table
    for bad in ('{"*": {"max_active_audits": 0}}', '{"*": {"audits": 3}}', "[1]", "{not json",
                '{"t": {"min_schedule_interval_s": -1}}', '{"t": {"max_upload_checks": 1.5}}'):
        with pytest.raises(ConfigError, match="ROBUSTAUDIT_TENANT_LIMITS"):
            Config.from_env({"ROBUSTAUDIT_TENANT_LIMITS": bad})


def test_flood_is_refused_at_the_limit_and_the_other_tenant_starts_next(limited, store, dispatcher, model_id,
                                                                        config):
    ids = [post_audit(limited, audit_body(model_id, label=f"a{i}")).json["id"] for i in range(3)]
    refused = [post_audit(limited, audit_body(model_id, label=f"over{i}")) for i in range(5)]
    for resp in refused:
        body = assert_error_body(resp, 429, "tenant_limit")
        assert body["details"] == {"limit": "max_active_audits", "allowed": 3, "current": 3}
        assert 5 <= int(resp.headers["Retry-After"]) <= 3600
    # the side effect did not happen: nothing stored, nothing sent
    assert count(store, tenant="alice") == 3 and dispatcher.sent == ids
    # a fresh Idempotency-Key makes no difference
    assert post_audit(limited, audit_body(model_id), headers={"Idempotency-Key": "k1"}).status_code == 429

    bob_model = upload_demo(limited, "bob").json["id"]
    bob = post_audit(limited, audit_body(bob_model), tenant="bob")
    assert bob.status_code == 202, bob.json  # another tenant is not affected
    # a worker is busy with alice's first audit; the next message (alice's second) wakes another
    first = lifecycle.claim_next(store, ids[0], worker="w1", stale_s=30, half_life_s=3600,
                                 resend=dispatcher.send)
    assert first is not None and first.audit_id == ids[0]
    sent = len(dispatcher.sent)
    second = lifecycle.claim_next(store, ids[1], worker="w2", stale_s=30, half_life_s=3600,
                                  resend=dispatcher.send)
    assert second is not None and second.audit_id == bob.json["id"]
    # alice's second audit lost its message to bob's: it is sent again, so it cannot be forgotten
    assert dispatcher.sent[sent:] == [ids[1]]
    # finishing one frees a place: alice may submit again
    assert lifecycle.fail(store, first, lifecycle.error_body("internal_error", "test"))
    assert post_audit(limited, audit_body(model_id, label="again")).status_code == 202


def test_least_recent_worker_time_goes_first_fifo_within_a_tenant(client, store, model_id):
    bob_model = upload_demo(client, "bob").json["id"]
    alice = [post_audit(client, audit_body(model_id, label=f"a{i}")).json["id"] for i in range(4)]
    bob = [post_audit(client, audit_body(bob_model, label=f"b{i}"), tenant="bob").json["id"] for i in range(2)]
    # alice used workers for an hour, bob for a minute: bob's audits go first, oldest first
    fairness.charge(store, "alice", 3600.0, half_life_s=3600)
    fairness.charge(store, "bob", 60.0, half_life_s=3600)
    taken = []
    for _ in range(3):
        part = lifecycle.claim_next(store, alice[0], worker="w", stale_s=30, half_life_s=3600)
        taken.append(part.audit_id)
    # bob first; then, with one audit running each, alice (fewest running wins over worker time)
    assert taken == [bob[0], alice[0], bob[1]]
    # the message of a cancelled audit wakes a worker that takes the next fair one
    client.delete(f"/v1/audits/{alice[1]}", headers=auth())
    assert lifecycle.claim_next(store, alice[1], worker="w", stale_s=30, half_life_s=3600).audit_id == alice[2]
    assert lifecycle.claim_next(store, None, worker="w", stale_s=30, half_life_s=3600).audit_id == alice[3]
    # nothing queued: a copy of a running audit joins it, one of a cancelled audit does nothing
    assert not lifecycle.claim_next(store, alice[3], worker="w", stale_s=30, half_life_s=3600).fresh
    assert lifecycle.claim_next(store, alice[1], worker="w", stale_s=30, half_life_s=3600) is None


def test_a_running_hint_is_joined_only_when_its_tenant_is_due(client, store, model_id):
    a1 = post_audit(client, audit_body(model_id)).json["id"]
    a2 = post_audit(client, audit_body(model_id)).json["id"]
    first = lifecycle.claim_next(store, a1, worker="w1", stale_s=30, half_life_s=3600)
    assert first.audit_id == a1 and first.fresh
    # a fan-out copy of a1: same tenant, so the worker joins a1 rather than starting a2
    join = lifecycle.claim_next(store, a1, worker="w2", stale_s=30, half_life_s=3600)
    assert join.audit_id == a1 and join.holder == first.holder and not join.fresh
    bob = post_audit(client, audit_body(upload_demo(client, "bob").json["id"]), tenant="bob").json["id"]
    # another copy of a1 now: bob has nothing running, so his audit starts instead
    assert lifecycle.claim_next(store, a1, worker="w3", stale_s=30, half_life_s=3600).audit_id == bob
    assert count(store, status="queued") == 1 and a2


def test_charges_decay_with_the_half_life(store):
    now = utcnow()
    fairness.charge(store, "t", 100.0, half_life_s=60, now=now - timedelta(seconds=120))
    fairness.charge(store, "t", 10.0, half_life_s=60, now=now)
    with store.session() as s:
        rank = fairness.tenant_ranks(s, half_life_s=60, now=now)
    assert rank == {}  # no queued or running work: not ranked
    from service.store.models import TenantUsage

    with store.session() as s:
        row = s.get(TenantUsage, "t")
        assert fairness.decayed(row.worker_seconds, row.updated_at, now, 60) == pytest.approx(35.0)


def test_queue_position_and_estimated_start(client, store, model_id):
    alice = [post_audit(client, audit_body(model_id, label=f"a{i}")).json["id"] for i in range(3)]
    bob = post_audit(client, audit_body(upload_demo(client, "bob").json["id"]), tenant="bob").json["id"]
    got = {i: client.get(f"/v1/audits/{i}", headers=auth("bob" if i == bob else "alice")).json for i in alice + [bob]}
    assert [got[i]["queue"]["position"] for i in alice] == [1, 3, 4]  # bob's one goes between alice's first two
    assert got[bob]["queue"]["position"] == 2 and got[bob]["queue"]["basis"] == "default"
    starts = [got[i]["queue"]["estimated_start_at"] for i in (alice[0], bob, alice[1], alice[2])]
    assert starts == sorted(starts)
    part = lifecycle.claim(store, alice[0], worker="w", stale_s=30)
    running = client.get(f"/v1/audits/{alice[0]}", headers=auth()).json
    assert running["status"] == "running" and running["queue"] is None
    assert client.get(f"/v1/audits/{bob}", headers=auth("bob")).json["queue"]["position"] == 1
    # it finishes after 40 s (charged to alice, as a worker's heartbeats do): a measured duration
    # replaces the default, and bob, who has used no worker time, goes first
    with store.session() as s:
        a = s.get(Audit, alice[0])
        a.status, a.started_at, a.finished_at = "succeeded", utcnow() - timedelta(seconds=40), utcnow()
    fairness.charge(store, "alice", 40.0, half_life_s=3600)
    assert part is not None
    queue = client.get(f"/v1/audits/{alice[1]}", headers=auth()).json["queue"]
    assert queue["basis"] == "measured" and queue["position"] == 2


def test_schedule_count_and_interval_limits(limited, store, model_id):
    def post(cron):
        return limited.post("/v1/schedules", headers=auth(), json={**audit_body(model_id), "cron": cron})

    body = assert_error_body(post("* * * * * *"), 422, "tenant_limit")  # every second
    assert body["details"] == {"limit": "min_schedule_interval_s", "allowed": 3600.0, "current": 1.0}
    assert_error_body(post("0,30 2 * * *"), 422, "tenant_limit")  # two runs 30 minutes apart
    assert_error_body(post("0 0 31 2 *"), 422, "validation_error")  # never runs
    assert count(store, Schedule) == 0
    assert post("0 2 * * *").status_code == 201 and post("0 3 * * *").status_code == 201
    resp = post("0 4 * * *")
    assert assert_error_body(resp, 429, "tenant_limit")["details"]["limit"] == "max_schedules"
    assert int(resp.headers["Retry-After"]) >= 1 and count(store, Schedule) == 2


def test_a_scheduled_run_over_the_limit_is_recorded_failed_not_queued(client, store, dispatcher, model_id):
    sid = client.post("/v1/schedules", headers=auth(), json={**audit_body(model_id), "cron": "0 * * * *"}).json["id"]
    for i in range(2):
        post_audit(client, audit_body(model_id, label=f"a{i}"))
    sent = list(dispatcher.sent)
    assert tick(store, dispatcher, utcnow() + timedelta(hours=1),
                limits=LimitsTable(TenantLimits(max_active_audits=2))) == []
    assert dispatcher.sent == sent  # nothing queued, nothing sent
    (run,) = client.get(f"/v1/schedules/{sid}/runs", headers=auth()).json["items"]
    audit = client.get(f"/v1/audits/{run['audit_id']}", headers=auth()).json
    assert audit["status"] == "failed" and audit["error"]["code"] == "tenant_limit"
