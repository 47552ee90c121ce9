"""GET /v1/audits/{id}/report.html: rendered from the stored report, tenant-scoped, 409 before it is done,
hostile names escaped, a report.html lying in the audit's folder never served."""

from __future__ import annotations

import html

from service.store import Audit
from tests.service.conftest import assert_error_body, audit_body, auth, post_audit
from worker.tasks import execute_audit


def test_page_of_a_succeeded_audit(client, config, model_id):
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    assert_error_body(client.get(f"/v1/audits/{audit_id}/report.html", headers=auth()), 409, "report_not_ready")
    assert execute_audit(config, audit_id).value == "succeeded"
    resp = client.get(f"/v1/audits/{audit_id}/report.html", headers=auth())
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    page = resp.get_data(as_text=True)
    assert '<span id="verdict-value">PASS</span>' in page and 'data-metric="clean.top1"' in page
    assert_error_body(client.get(f"/v1/audits/{audit_id}/report.html", headers=auth("bob")), 404, "not_found")
    assert_error_body(client.get(f"/v1/audits/{audit_id}/report.html"), 401, "unauthorized")
    assert_error_body(client.get("/v1/audits/nope/report.html", headers=auth()), 404, "not_found")


def test_stored_names_are_escaped_and_a_planted_page_is_not_served(client, config, store, model_id):
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    assert execute_audit(config, audit_id).value == "succeeded"
    with store.session() as s:
        row = s.get(Audit, audit_id)
        report = dict(row.report)
        report["model"] = {**report["model"], "name": "<script>alert(1)</script>"}
        row.report = report
    # a sandboxed model can write into its output folder: a page there must never reach a browser
    folder = config.storage_dir / "audits" / audit_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_text("<script>planted()</script>")
    page = client.get(f"/v1/audits/{audit_id}/report.html", headers=auth()).get_data(as_text=True)
    assert "<script>" not in page and "planted" not in page
    assert html.escape("<script>alert(1)</script>") in page
