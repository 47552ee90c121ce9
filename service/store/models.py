"""Tables of the job store. Every row belongs to a tenant; queries always filter by it."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are UTC and come back timezone-aware, also from SQLite (which drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=timezone.utc)


class AuditStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (AuditStatus.SUCCEEDED, AuditStatus.FAILED, AuditStatus.CANCELLED)


class ModelKind(str, Enum):
    """What a registered model is for: audited (or a surrogate) classifier, or a generator."""

    CLASSIFIER = "classifier"
    GENERATOR = "generator"


class Base(DeclarativeBase):
    pass


class Model(Base):
    """An uploaded checkpoint with its card; the file is stored once per sha256."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant", "sha256", "card_sha256", name="uq_models_tenant_content"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    card_sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16), default=ModelKind.CLASSIFIER.value,
                                      server_default=ModelKind.CLASSIFIER.value)
    size_bytes: Mapped[int] = mapped_column(Integer)
    #: the stored file on the server: never sent to a client, never put in a report
    path: Mapped[str] = mapped_column(Text)
    card: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Schedule(Base):
    """A recurring audit of a registered model."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    cron: Mapped[str] = mapped_column(String(100))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class Audit(Base):
    """One audit: its request, its state while it runs, its outcome."""

    __tablename__ = "audits"
    __table_args__ = (UniqueConstraint("tenant", "idempotency_key", name="uq_audits_idempotency"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    schedule_id: Mapped[str | None] = mapped_column(ForeignKey("schedules.id"), nullable=True, index=True)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(16), default=AuditStatus.QUEUED.value, index=True)
    #: the validated request: dataset, suites, gates, seed, label (the model is model_id)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: the claim token of the current attempt (a uuid per claim): every write of a participant
    #: is guarded by it, so a worker whose attempt was reaped and taken over writes nothing
    holder: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: the participant that was granted the final merge (once per attempt)
    finalizer: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: when the audit was last handed to the broker (the beat sends it again after a while)
    last_dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    verdict: Mapped[str | None] = mapped_column(String(8), nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    suite_seconds: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)


class ShardClaim(Base):
    """One shard (suite x slice of samples) of a running audit, claimed by one participant.

    A shard is granted when it is free or its holder's heartbeat is stale; it is done once its
    partial is saved in the audit's checkpoint folder.
    """

    __tablename__ = "shard_claims"

    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    suite: Mapped[str] = mapped_column(String(64))
    index: Mapped[int] = mapped_column(Integer)
    of: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str | None] = mapped_column(String(32), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    done: Mapped[bool] = mapped_column(Boolean, default=False)


class TenantUsage(Base):
    """A tenant's recent worker time (for fair scheduling) and its row lock (for its limits).

    ``worker_seconds`` decays with a half-life (``ROBUSTAUDIT_FAIR_HALF_LIFE_S``) from
    ``updated_at``: the value now is ``worker_seconds * 2 ** (-(now - updated_at) / half_life)``.
    """

    __tablename__ = "tenant_usage"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UploadCheck(Base):
    """An upload check waiting for, or holding, one of the pool's slots (``slot`` is unique, so a
    slot has one holder). A row past ``expires_at`` belongs to a process that died: it is removed."""

    __tablename__ = "upload_checks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
