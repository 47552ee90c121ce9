"""The job store: models, audits and schedules in SQLAlchemy (SQLite or PostgreSQL)."""

from .db import Store
from .models import Audit, AuditStatus, Model, Schedule

__all__ = ["Audit", "AuditStatus", "Model", "Schedule", "Store"]
