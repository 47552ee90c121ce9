"""``GET /v1/audits/{id}/report.html``: the report as one self-contained page for people.

The page is rendered here from the stored report (the job store's copy, which the worker's
merge step wrote) and the audit's artifact files; a ``report.html`` lying in the audit's
output folder is never served, since a sandboxed model can write into that folder. Rendering
reads numbers and strings and base64-encodes PNG files: no model code runs here.
"""

from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint

from worker.engine.html import render_report_html

from .audits_api import get_audit
from .auth import authenticate
from .context import services
from .errors import ApiError

blp = Blueprint("reports", __name__, url_prefix="/v1/audits",
                description="Reports for people: the audit report as a self-contained HTML page")
blp.before_request(authenticate)

#: the page needs nothing but its own inline CSS and data: images; the header repeats its meta tag
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


PAGE_DOC = ("report.html: verdict, gates, warnings, per-suite numbers and plots, gallery (inline CSS and images; "
            "links to artifacts relative to the page)")


@blp.route("/<audit_id>/report.html")
class AuditReportHtml(MethodView):
    @blp.doc(responses={"200": {"description": PAGE_DOC, "content": {"text/html": {"schema": {"type": "string"}}}}})
    @blp.response(200, description=PAGE_DOC, content_type="text/html")
    def get(self, audit_id: str) -> Any:
        """The report of a succeeded audit as a page (409 while it is not done)."""
        svc = services()
        with svc.store.session() as s:
            audit = get_audit(s, audit_id)
            if audit.report is None:
                raise ApiError(409, f"audit {audit_id} is {audit.status}; it has no report",
                               code="report_not_ready", audit_status=audit.status)
            report = audit.report
        page = render_report_html(report, svc.storage.audit_dir(audit_id))
        return Response(page, status=200, mimetype="text/html", headers={
            "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store"})
