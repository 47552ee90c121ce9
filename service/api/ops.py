"""Operational endpoints, unauthenticated: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from sqlalchemy import func, select

from ..store.models import Audit, AuditStatus
from .context import Services
from .errors import error_response

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    """The process is up."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> Any:
    """The store and the broker answer."""
    svc: Services = current_app.extensions["robustaudit"]
    checks: dict[str, str] = {}
    for name, probe in (("store", svc.store.ping), ("broker", getattr(svc.dispatcher, "ping", lambda: None))):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # any failure means not ready; the reason goes in the body
            checks[name] = f"unreachable: {type(exc).__name__}"
    if any(v != "ok" for v in checks.values()):
        return error_response(503, "not_ready", "a dependency is unreachable", {"checks": checks})
    return {"status": "ready", "checks": checks}


class StoreCollector:
    """Metrics read from the job store at scrape time, so every API process reports the same."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        with self.svc.store.session() as s:
            counts = dict(s.execute(select(Audit.status, func.count()).group_by(Audit.status)).all())
            seconds = [row for row in s.scalars(select(Audit.suite_seconds).where(Audit.suite_seconds.is_not(None)))]
        by_status = GaugeMetricFamily("robustaudit_audits", "audits in the store by status", labels=["status"])
        for status in AuditStatus:
            by_status.add_metric([status.value], counts.get(status.value, 0))
        yield by_status
        depth = GaugeMetricFamily("robustaudit_queue_depth", "audits queued and not yet started")
        depth.add_metric([], counts.get(AuditStatus.QUEUED.value, 0))
        yield depth
        totals: dict[str, list[float]] = {}
        for per_suite in seconds:
            for suite, sec in (per_suite or {}).items():
                totals.setdefault(suite, []).append(float(sec))
        summary = SummaryMetricFamily("robustaudit_suite_duration_seconds", "time per suite in succeeded audits",
                                      labels=["suite"])
        for suite, values in sorted(totals.items()):
            summary.add_metric([suite], count_value=len(values), sum_value=sum(values))
        yield summary


@bp.get("/metrics")
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(current_app.extensions["robustaudit"]))  # type: ignore[arg-type]
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
