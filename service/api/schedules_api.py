"""``/v1/schedules``: recurring audits of a registered model, and their runs with metric deltas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from croniter import CroniterError
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select

from worker.engine.datasets import DataRoots

from ..audits import build_request, runs_with_deltas
from ..baselines import with_baseline
from ..scheduler import min_interval_s, next_run, valid_cron
from ..store.models import Audit, Schedule, utcnow
from ..tenants import check_schedule_interval, check_schedules, lock_tenant
from .audits_api import load_body
from .auth import authenticate, owned, tenant
from .context import services
from .errors import RETRY_AFTER_DOC, TENANT_LIMIT_DOC, ApiError
from .models_api import find_model, get_model
from .pages import paginate
from .schemas import (
    ErrorSchema,
    PageQuerySchema,
    RunListSchema,
    SchedulePageSchema,
    ScheduleSchema,
    schedule_request_schema,
)

blp = Blueprint("schedules", __name__, url_prefix="/v1/schedules",
                description="Recurring audits (cron, UTC) of registered models")
blp.before_request(authenticate)


def schedule_interval(cron: str, now: datetime) -> float:
    """The shortest time between the schedule's runs; a cron that never runs again is a 422."""
    try:
        return min_interval_s(cron, now)
    except (ValueError, KeyError, OverflowError, CroniterError):
        raise ApiError(422, f"'cron' {cron!r} does not run again (e.g. '0 2 * * *' runs daily)",
                       code="validation_error", errors={"cron": ["no future runs"]}) from None


def get_schedule(session: Any, schedule_id: str) -> Schedule:
    """The tenant's schedule, or 404."""
    return owned(session, Schedule, schedule_id, "schedule")


@blp.route("")
class Schedules(MethodView):
    @blp.doc(requestBody={"required": True, "content": {"application/json": {"schema": "ScheduleRequest"}}})
    @blp.response(201, ScheduleSchema)
    @blp.alt_response(429, schema=ErrorSchema, headers=RETRY_AFTER_DOC, description=TENANT_LIMIT_DOC)
    def post(self) -> Any:
        """Create a schedule; each run is an ordinary audit linked to it."""
        body = load_body(schedule_request_schema())
        cron = body.pop("cron")
        if not valid_cron(cron):
            raise ApiError(422, f"'cron' {cron!r} is not a valid cron expression (e.g. '0 2 * * *')",
                           code="validation_error", errors={"cron": ["invalid cron expression"]})
        limits = services().config.tenant_limits.of(tenant())
        now = utcnow()
        check_schedule_interval(schedule_interval(cron, now), limits)
        with services().store.session() as s:
            model = get_model(s, body["model"])
            body = with_baseline(s, tenant(), body, required=False)  # none: each run compares with the previous
            req = build_request(body, model, DataRoots(services().config.data_roots),
                                lambda model_id: find_model(s, model_id))
            lock_tenant(s, tenant())
            check_schedules(s, tenant(), limits)
            sched = Schedule(tenant=tenant(), model_id=model.id, cron=cron, request=req, label=req.get("label"),
                             created_at=now, next_run_at=next_run(cron, now), enabled=True)
            s.add(sched)
            s.flush()
            return sched

    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, SchedulePageSchema)
    def get(self, query: dict[str, Any]) -> Any:
        """List the tenant's schedules."""
        q = select(Schedule).where(Schedule.tenant == tenant()).order_by(Schedule.created_at.desc(), Schedule.id)
        with services().store.session() as s:
            return paginate(s, q, **query)


@blp.route("/<schedule_id>")
class ScheduleById(MethodView):
    @blp.response(200, ScheduleSchema)
    def get(self, schedule_id: str) -> Any:
        """One schedule."""
        with services().store.session() as s:
            return get_schedule(s, schedule_id)

    @blp.response(204)
    def delete(self, schedule_id: str) -> None:
        """Stop a schedule (its past runs stay)."""
        with services().store.session() as s:
            get_schedule(s, schedule_id).enabled = False


@blp.route("/<schedule_id>/runs")
class ScheduleRuns(MethodView):
    @blp.response(200, RunListSchema)
    def get(self, schedule_id: str) -> Any:
        """The schedule's audits, oldest first, with verdicts and each headline metric's change
        since the previous succeeded run."""
        with services().store.session() as s:
            get_schedule(s, schedule_id)
            audits = list(s.scalars(select(Audit).where(Audit.schedule_id == schedule_id)
                                    .order_by(Audit.created_at, Audit.id)))
        return {"items": runs_with_deltas(audits)}
