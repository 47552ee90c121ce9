"""Fair scheduling end to end: real PostgreSQL, real Redis, a real ``robustaudit worker``. Tenant
alice queues a backlog; tenant bob's one audit, submitted after it, starts before alice's backlog
(after at most the audit the worker is busy with), although the broker holds alice's messages
first."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import wait_until
from tests.service.conftest import audit_body, auth, post_audit, upload_demo

pytestmark = pytest.mark.e2e

BACKLOG = 4


def get(client, audit_id, tenant):
    return client.get(f"/v1/audits/{audit_id}", headers=auth(tenant)).json


def test_the_second_tenant_starts_before_the_first_ones_backlog(client, worker):
    models = {t: upload_demo(client, t).json["id"] for t in ("alice", "bob")}
    alice = [post_audit(client, audit_body(models["alice"], label=f"backlog-{i}")).json["id"] for i in range(BACKLOG)]
    bob = post_audit(client, audit_body(models["bob"], label="after the backlog"), tenant="bob").json["id"]
    queued = get(client, bob, "bob")
    if queued["status"] == "queued":  # its place: at most one of alice's goes before it
        assert queued["queue"]["position"] <= 2, queued["queue"]
    wait_until(lambda: get(client, bob, "bob")["status"] != "queued", timeout=180, what="bob's audit to start")
    started = [i for i in alice if get(client, i, "alice")["started_at"] is not None]
    assert len(started) <= 1, started  # at most the one the worker was busy with: not the backlog
    for audit_id in alice:  # the rest of the backlog is not needed
        client.delete(f"/v1/audits/{audit_id}", headers=auth())
    done = wait_until(lambda: (a := get(client, bob, "bob"))["status"] in ("succeeded", "failed") and a,
                      timeout=180, what="bob's audit to finish")
    assert done["status"] == "succeeded", done
    assert all(get(client, i, "alice")["started_at"] is None for i in alice if i not in started)
    wait_until(lambda: all(get(client, i, "alice")["status"] in ("succeeded", "failed", "cancelled") for i in alice),
               timeout=120, what="alice's backlog to end")
