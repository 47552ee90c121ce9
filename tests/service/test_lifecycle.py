"""service.lifecycle: the guarded transitions, shard claims, re-dispatch and fan-out, on a real
(SQLite) store; no sandbox runs here (the end-to-end tests run real workers)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from service import lifecycle
from service.lifecycle import TRANSITIONS, AuditStatus
from service.scheduler import redispatch, tick
from service.store import Audit
from service.store.models import ShardClaim, utcnow
from tests.service.conftest import audit_body, auth, post_audit
from worker.tasks import AuditRecorder

STALE = 30.0  # the fixture config's heartbeat_timeout_s


def _age(store, audit_id, seconds, *, shards=False):
    """Pretend the audit's (and its shards') last heartbeat was ``seconds`` ago."""
    when = utcnow() - timedelta(seconds=seconds)
    with store.session() as s:
        s.get(Audit, audit_id).heartbeat_at = when
        if shards:
            for row in s.query(ShardClaim).filter_by(audit_id=audit_id):
                row.heartbeat_at = when


def _status(store, audit_id):
    with store.session() as s:
        return s.get(Audit, audit_id).status


@pytest.fixture()
def audit_id(client, model_id):
    return post_audit(client, audit_body(model_id)).json["id"]


def test_finished_statuses_are_final_and_no_other_move_exists():
    for status in AuditStatus:
        assert (TRANSITIONS[status] == frozenset()) == status.finished
    assert not lifecycle.allowed(AuditStatus.QUEUED, AuditStatus.SUCCEEDED)  # only a running audit succeeds


def test_reaped_worker_that_comes_back_writes_nothing(store, config, audit_id):
    old = lifecycle.claim(store, audit_id, worker="a", stale_s=STALE)
    assert old is not None and old.fresh
    assert lifecycle.grant_shard(store, old, key="clean-0", suite="clean", index=0, of=2, stale_s=STALE)
    _age(store, audit_id, STALE + 5, shards=True)
    assert lifecycle.reap(store, stale_s=STALE, max_attempts=3)["requeued"] == [audit_id]
    new = lifecycle.claim(store, audit_id, worker="b", stale_s=STALE)
    assert new is not None and new.fresh and new.holder != old.holder
    assert lifecycle.grant_shard(store, new, key="clean-0", suite="clean", index=0, of=2, stale_s=STALE)
    # the old worker wakes up: every write of its attempt is refused
    assert not lifecycle.heartbeat(store, old, {"clean": 0.9})
    assert not lifecycle.is_current(store, old)
    assert not lifecycle.grant_shard(store, old, key="clean-1", suite="clean", index=1, of=2, stale_s=STALE)
    assert not lifecycle.grant_finalize(store, old)
    assert lifecycle.grant_finalize(store, new)
    assert lifecycle.succeed(store, new, report={"by": "new"}, verdict="pass")
    assert not lifecycle.succeed(store, old, report={"by": "old"}, verdict="fail")
    assert not lifecycle.fail(store, old, lifecycle.error_body("internal_error", "late"))
    assert not lifecycle.cancelled(store, old)
    with store.session() as s:
        audit = s.get(Audit, audit_id)
        assert (audit.status, audit.report, audit.verdict, audit.attempts) == ("succeeded", {"by": "new"}, "pass", 2)


def test_joining_shares_the_attempt_and_shards_go_to_one_member(store, audit_id):
    a = lifecycle.claim(store, audit_id, worker="a", stale_s=STALE)
    b = lifecycle.claim(store, audit_id, worker="b", stale_s=STALE)
    assert a.fresh and not b.fresh and a.holder == b.holder and a.member != b.member
    shard = {"key": "clean-0", "suite": "clean", "index": 0, "of": 2, "stale_s": STALE}
    assert lifecycle.grant_shard(store, a, **shard)
    assert lifecycle.grant_shard(store, a, **shard)  # asking again for one's own shard
    assert not lifecycle.grant_shard(store, b, **shard)  # held by a live member
    with store.session() as s:
        s.get(ShardClaim, (audit_id, "clean-0")).heartbeat_at = utcnow() - timedelta(seconds=STALE + 1)
    assert lifecycle.grant_shard(store, b, **shard)  # its holder stopped beating
    assert lifecycle.held_shards(store, a) == [] and lifecycle.held_shards(store, b) == ["clean-0"]
    lifecycle.mark_done(store, audit_id, ["clean-0"])
    assert lifecycle.shard_progress(store, audit_id) == {"clean": (1, 2)}
    assert lifecycle.grant_finalize(store, b) and not lifecycle.grant_finalize(store, a)  # once
    assert not lifecycle.succeed(store, a, report={}, verdict="pass")  # only the finalizer writes the result
    assert lifecycle.succeed(store, b, report={}, verdict="pass")


def test_cancel_and_dispatch_failure(store, audit_id, client, model_id):
    with store.session() as s:
        lifecycle.cancel(s, audit_id)
    assert _status(store, audit_id) == "cancelled"
    assert not lifecycle.dispatch_failed(store, audit_id, "down")  # a finished audit stays as it is
    running = post_audit(client, audit_body(model_id)).json["id"]
    part = lifecycle.claim(store, running, worker="a", stale_s=STALE)
    with store.session() as s:
        lifecycle.cancel(s, running)
    assert _status(store, running) == "running" and not lifecycle.is_current(store, part)  # it stops at a batch
    assert lifecycle.cancelled(store, part) and _status(store, running) == "cancelled"
    assert lifecycle.claim(store, running, worker="b", stale_s=STALE) is None
    queued = post_audit(client, audit_body(model_id)).json["id"]
    assert lifecycle.dispatch_failed(store, queued, "down")
    with store.session() as s:
        assert s.get(Audit, queued).error["code"] == "broker_unavailable"


def test_reap_fails_after_max_attempts_and_honours_cancel(store, audit_id):
    for _ in range(3):
        lifecycle.claim(store, audit_id, worker="a", stale_s=STALE)
        _age(store, audit_id, STALE + 1)
        out = lifecycle.reap(store, stale_s=STALE, max_attempts=3)
    assert out["failed"] == [audit_id]
    with store.session() as s:
        assert s.get(Audit, audit_id).error["code"] == "worker_lost"


def test_redispatch_sends_lost_queued_audits_once_per_interval(store, config, dispatcher, audit_id):
    config = replace(config, redispatch_s=60)
    assert redispatch(store, dispatcher, config) == []  # just submitted (and sent)
    later = utcnow() + timedelta(seconds=61)
    assert redispatch(store, dispatcher, config, now=later) == [audit_id]
    assert redispatch(store, dispatcher, config, now=later) == []  # sent: the next interval starts now
    assert dispatcher.sent[-1] == audit_id
    lifecycle.claim(store, audit_id, worker="a", stale_s=STALE)
    assert redispatch(store, dispatcher, config, now=later + timedelta(seconds=61)) == []  # running, no dead shard


def test_redispatch_sends_running_audits_with_a_dead_shard_holder(store, config, dispatcher, audit_id):
    config = replace(config, redispatch_s=60)
    part = lifecycle.claim(store, audit_id, worker="a", stale_s=STALE)
    lifecycle.grant_shard(store, part, key="clean-0", suite="clean", index=0, of=1, stale_s=STALE)
    later = utcnow() + timedelta(seconds=61)
    assert redispatch(store, dispatcher, config, now=later) == [audit_id]  # the shard's heartbeat is 61 s old
    lifecycle.mark_done(store, audit_id, ["clean-0"])
    assert redispatch(store, dispatcher, config, now=later + timedelta(seconds=61)) == []


class _BrokenDispatcher:
    def send(self, audit_id):
        raise ConnectionError("broker down")


def test_schedule_run_whose_send_failed_is_sent_by_the_redispatch(client, store, config, dispatcher, model_id):
    resp = client.post("/v1/schedules", headers=auth(), json={**audit_body(model_id), "cron": "0 * * * *"})
    assert resp.status_code == 201
    fired = tick(store, _BrokenDispatcher(), utcnow() + timedelta(hours=1))
    assert len(fired) == 1 and _status(store, fired[0]) == "queued"
    config = replace(config, redispatch_s=60)
    assert redispatch(store, dispatcher, config, now=utcnow() + timedelta(seconds=61)) == fired
    assert dispatcher.sent == fired


def test_fanout_copies_at_submit(client, dispatcher, model_id):
    assert lifecycle.copies({"dataset": {"n_samples": 20}, "suites": {"clean": {}}}, fanout=2, shard_size=256) == 1
    assert lifecycle.copies({"dataset": {"n_samples": 20}, "suites": {"clean": {}}}, fanout=4, shard_size=5) == 4
    assert lifecycle.copies({"dataset": {}, "suites": {"clean": {}}}, fanout=3, shard_size=5) == 3
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    assert dispatcher.sent == [audit_id]  # 20 samples in shards of 256: one worker is enough


def test_recorder_trusts_saved_files_not_messages(store, config, audit_id, tmp_path):
    part = lifecycle.claim(store, audit_id, worker="a", stale_s=STALE)
    rec = AuditRecorder(store, part, config, tmp_path, {"clean": 0.0})
    shard = {"suite": "clean", "of": 2}
    assert not rec.on_claim({"suite": "clean", "shard": 0, "of": 2, "key": "../x"})  # malformed
    assert not rec.on_claim({"suite": "clean", "shard": 2, "of": 2, "key": "k2"})  # out of range
    assert rec.on_claim({**shard, "shard": 0, "key": "k0"})
    rec.on_progress("clean", 0.25)  # half of shard 0 of 2
    assert rec.progress["clean"] == 0.25
    assert not rec.on_claim({"finalize": True, "keys": ["k0", "k1"]})  # no partial saved yet
    (tmp_path / "k0.json").write_text("{}")
    other = lifecycle.claim(store, audit_id, worker="b", stale_s=STALE)
    assert lifecycle.grant_shard(store, other, key="k1", suite="clean", index=1, of=2, stale_s=STALE)
    (tmp_path / "k1.json").write_text("{}")  # another worker saved shard 1
    assert not rec.on_claim({**shard, "shard": 1, "key": "k1"})  # done already: refused, marked done
    assert lifecycle.shard_progress(store, audit_id) == {"clean": (2, 2)}  # k0 settled from its file
    rec.flush()
    assert rec.progress["clean"] == 1.0
    assert rec.on_claim({"finalize": True, "keys": ["k0", "k1"]})
    assert not rec.should_stop()
    with store.session() as s:
        lifecycle.cancel(s, audit_id)
    rec._checked = 0.0
    assert rec.should_stop()


def test_worker_whose_other_shards_are_held_leaves_the_audit_running(store, config, audit_id, monkeypatch):
    import worker.tasks as tasks

    other = lifecycle.claim(store, audit_id, worker="a", stale_s=STALE)
    assert lifecycle.grant_shard(store, other, key="k1", suite="clean", index=1, of=2, stale_s=STALE)

    def child(config, job, out_dir, checkpoint_dir, rec):  # what the sandboxed engine asks, in order
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        assert rec.on_claim({"suite": "clean", "shard": 0, "of": 2, "key": "k0"})
        (checkpoint_dir / "k0.json").write_text("{}")
        assert not rec.on_claim({"suite": "clean", "shard": 1, "of": 2, "key": "k1"})  # a live member has it
        return None  # {"incomplete": True, "ran": ["k0"], "missing": ["k1"]}

    monkeypatch.setattr(tasks, "run_sandboxed_audit", child)
    assert tasks.execute_audit(config, audit_id) is None
    with store.session() as s:
        audit = s.get(Audit, audit_id)
        assert (audit.status, audit.attempts, audit.finalizer) == ("running", 1, None)
        assert {r.key: r.done for r in s.query(ShardClaim).filter_by(audit_id=audit_id)} == {"k0": True, "k1": False}
    assert (config.storage_dir / "checkpoints" / audit_id / "k0.json").exists()  # kept for the finalizer
