"""Baselines over the API: "baseline": AUDIT_ID (tenant-scoped, succeeded only), /compare, schedule runs."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from service.scheduler import tick
from service.store import Audit
from tests.service.conftest import assert_error_body, audit_body, auth
from worker.tasks import execute_audit


def post(client, path, body, tenant="alice"):
    return client.post(path, headers=auth(tenant), data=json.dumps(body), content_type="application/json")


def finished(client, config, body) -> str:
    resp = post(client, "/v1/audits", body)
    assert resp.status_code == 202, resp.json
    execute_audit(config, resp.json["id"])
    return resp.json["id"]


def lower_top1(store, audit_id, by):
    with store.session() as s:  # a regression, written into the stored report
        a = s.get(Audit, audit_id)
        report = json.loads(json.dumps(a.report))
        report["suites"]["clean"]["metrics"]["top1"]["value"] -= by
        a.report = report


def test_baseline_gates_and_compare(client, config, store, model_id, report_validator):
    first = finished(client, config, audit_body(model_id, gates=[]))
    # without gates nothing was judged: the verdict is none, not pass, wherever the API says it
    got = client.get(f"/v1/audits/{first}", headers=auth()).json
    assert got["status"] == "succeeded" and got["verdict"] == "none" and got["report"]["verdict"] == "none"
    report_validator.validate(got["report"])
    assert [(a["id"], a["verdict"]) for a in client.get("/v1/audits", headers=auth()).json["items"]] == [
        (first, "none")]
    page = client.get(f"/v1/audits/{first}/report.html", headers=auth()).get_data(as_text=True)
    assert 'class="verdict verdict-none"' in page and "No verdict" in page
    # and it is a baseline like any other
    second = finished(client, config, audit_body(model_id, baseline=first, gates=[
        "clean.top1 >= baseline - 0.05", "clean.ece <= baseline * 1.1", "clean.top1 > baseline"]))
    audit = client.get(f"/v1/audits/{second}", headers=auth()).json
    assert audit["status"] == "succeeded", audit
    assert audit["request"]["baseline"]["audit_id"] == first
    base_top1 = client.get(f"/v1/audits/{first}", headers=auth()).json["report"]["suites"]["clean"]["metrics"]["top1"]
    loose, ece, strict = audit["report"]["gates"]
    assert loose["baseline"] == base_top1["value"] and loose["delta"] == 0  # same model, same samples
    assert loose["passed"] and ece["passed"] and not strict["passed"]
    assert audit["verdict"] == "fail"
    # /compare: by default against the baseline the audit was judged against
    same = client.get(f"/v1/audits/{second}/compare", headers=auth())
    assert same.status_code == 200, same.json
    assert same.json["baseline"]["audit_id"] == first and same.json["counts"]["regression"] == 0
    lower_top1(store, second, 0.25)
    worse = client.get(f"/v1/audits/{second}/compare?baseline={first}", headers=auth()).json
    top = worse["changes"][0]
    assert (top["metric"], top["change"], top["better"]) == ("clean.top1", "regression", "higher")
    assert abs(top["delta"] + 0.25) < 1e-12 and worse["verdict"] == {"baseline": "none", "current": "fail"}
    # no baseline of its own and none named: 422; another tenant sees nothing
    assert_error_body(client.get(f"/v1/audits/{first}/compare", headers=auth()), 422, "validation_error")
    assert_error_body(client.get(f"/v1/audits/{second}/compare", headers=auth("bob")), 404)
    assert_error_body(client.get(f"/v1/audits/{second}/compare?baseline=nope", headers=auth()), 422)


def test_bad_baselines_are_refused_with_a_json_body(client, config, dispatcher, model_id):
    body = audit_body(model_id, gates=["clean.top1 >= baseline - 0.05"])
    err = assert_error_body(post(client, "/v1/audits", body), 422, "validation_error")
    assert "baseline" in err["message"]
    assert_error_body(post(client, "/v1/audits", {**body, "baseline": "no-such-audit"}), 422, "validation_error")
    queued = post(client, "/v1/audits", audit_body(model_id)).json["id"]
    err = assert_error_body(post(client, "/v1/audits", {**body, "baseline": queued}), 409, "baseline_not_ready")
    assert err["details"]["audit_status"] == "queued"
    # another tenant's succeeded audit is not a baseline of yours
    bob_model = post_model_as_bob(client)
    bobs = post(client, "/v1/audits", audit_body(bob_model), tenant="bob").json["id"]
    execute_audit(config, bobs)
    assert_error_body(post(client, "/v1/audits", {**body, "baseline": bobs}), 422, "validation_error")
    assert_error_body(post(client, "/v1/audits", {**body, "baseline": 7}), 422, "validation_error")


def post_model_as_bob(client) -> str:
    from tests.service.conftest import upload_demo

    resp = upload_demo(client, tenant="bob")
    assert resp.status_code == 201, resp.json
    return str(resp.json["id"])


def test_schedule_runs_compare_with_the_previous_successful_run(client, config, store, dispatcher, model_id):
    body = {**audit_body(model_id, gates=["clean.top1 >= baseline - 0.05"]), "cron": "0 * * * *"}
    resp = post(client, "/v1/schedules", body)
    assert resp.status_code == 201, resp.json  # a schedule needs no baseline: its runs compare with the last one
    sid = resp.json["id"]
    now = datetime.now(timezone.utc)
    first = tick(store, dispatcher, now + timedelta(hours=1))[0]
    execute_audit(config, first)
    run1 = client.get(f"/v1/audits/{first}", headers=auth()).json
    assert run1["request"]["baseline"] is None
    assert not run1["report"]["gates"][0]["passed"] and "has none" in run1["report"]["gates"][0]["reason"]
    lower_top1(store, first, -0.5)  # the first night looked better than it was: the next run regresses
    second = tick(store, dispatcher, now + timedelta(hours=3))[0]
    execute_audit(config, second)
    run2 = client.get(f"/v1/audits/{second}", headers=auth()).json
    assert run2["request"]["baseline"]["audit_id"] == first
    (gate,) = run2["report"]["gates"]
    assert abs(gate["delta"] + 0.5) < 1e-9 and not gate["passed"]
    runs = client.get(f"/v1/schedules/{sid}/runs", headers=auth()).json["items"]
    assert runs[0]["baseline_id"] is None and runs[1]["baseline_id"] == first
    assert runs[1]["regressions"][0]["metric"] == "clean.top1" and runs[1]["changes"]["regression"] >= 1
    compared = client.get(f"/v1/audits/{second}/compare", headers=auth()).json
    assert compared["baseline"]["audit_id"] == first and compared["changes"][0]["metric"] == "clean.top1"

