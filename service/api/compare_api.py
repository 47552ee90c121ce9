"""``GET /v1/audits/{id}/compare?baseline=ID``: what changed since another audit of the tenant's."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from worker.engine.compare import compare_reports

from ..baselines import baseline_audit
from .audits_api import get_audit
from .auth import authenticate, tenant
from .context import services
from .errors import ApiError
from .schemas import CompareQuerySchema, ComparisonSchema

blp = Blueprint("compare", __name__, url_prefix="/v1/audits",
                description="Comparisons: every metric that changed between two audits, regressions first")
blp.before_request(authenticate)


@blp.route("/<audit_id>/compare")
class AuditCompare(MethodView):
    @blp.arguments(CompareQuerySchema, location="query")
    @blp.response(200, ComparisonSchema)
    def get(self, query: dict[str, Any], audit_id: str) -> Any:
        """Every metric that changed from the baseline audit to this one, the largest regressions first
        (direction-aware). Without ``baseline``, the one this audit was judged against (a schedule's
        run: the schedule's previous successful run). Both audits must have succeeded (409 otherwise)."""
        with services().store.session() as s:
            audit = get_audit(s, audit_id)
            if audit.report is None:
                raise ApiError(409, f"audit {audit_id} is {audit.status}; it has no report",
                               code="report_not_ready", audit_status=audit.status)
            ref = query.get("baseline") or ((audit.request or {}).get("baseline") or {}).get("audit_id")
            if not ref:
                raise ApiError(422, f"audit {audit_id} was not judged against a baseline: name one with "
                                    "?baseline=AUDIT_ID", code="validation_error",
                               errors={"baseline": ["required: this audit has no baseline of its own"]})
            base = baseline_audit(s, tenant(), str(ref))
            result = compare_reports(base.report or {}, audit.report)
            result["baseline"]["audit_id"], result["current"]["audit_id"] = base.id, audit.id
            return result
