"""The Celery app, built by a factory from :class:`service.config.Config`; nothing at import time.

Audit work goes to the ``gpu`` queue. Messages are acknowledged late and rejected when the
worker process is lost, so a killed worker's audit is delivered again (on Redis, after the
visibility timeout). The store, not the broker, decides who runs what: a delivery is a wake-up
that takes the fairest work across tenants (:mod:`service.fairness`); a delivery of an audit
another live worker holds joins it, when its tenant's turn has come, and runs only shards nobody
holds (:mod:`service.lifecycle`); the beat sends again what the broker lost.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from service.config import Config, load_plugins
from service.dispatch import QUEUE
from service.embedded_broker import celery_broker

#: the attribute of the Celery app that carries the service configuration to the tasks
CONFIG_ATTR = "robustaudit_config"


def celery_config(config: Config) -> dict[str, Any]:
    """Celery settings derived from the service configuration."""
    transport: dict[str, Any] = {}
    if config.broker_url.startswith(("redis://", "rediss://")):  # the SQLAlchemy transport takes none of these
        vt = int(config.visibility_timeout_s)
        transport["visibility_timeout"] = vt
        if vt < 600:  # sweep for unacknowledged messages often enough for a short timeout
            transport.update(unacked_restore_interval=max(1, vt // 4), unacked_restore_throttle=1)
        if config.broker_prefix:
            transport["global_keyprefix"] = config.broker_prefix
    return {
        # a sqla+ URL (the embedded default) goes to our subclass, which polls every 0.1 s, not 1 s
        **celery_broker(config.broker_url),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        "task_default_queue": QUEUE,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_soft_time_limit": int(config.soft_time_limit_s),
        "task_time_limit": int(config.soft_time_limit_s) + 120,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "include": ["worker.tasks"],
    }


def create_celery(config: Config | None = None) -> Celery:
    """A Celery app for ``config`` (default: from the environment)."""
    config = config or Config.from_env()
    load_plugins(config)
    settings = celery_config(config)
    app = Celery("robustaudit", set_as_current=False, include=settings.pop("include"))
    app.conf.update(settings)
    setattr(app, CONFIG_ATTR, config)
    return app
