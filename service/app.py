"""The Flask app factory. Nothing happens at import time: ``create_app`` reads the
configuration, opens the store's pool and registers the blueprints.

gunicorn: ``gunicorn 'service.app:create_app()'``.
"""

from __future__ import annotations

from flask import Flask

from . import __version__
from .api import audits_api, compare_api, models_api, ops, report_html_api, schedules_api
from .api.bounds import BoundedRequest, check_request
from .api.context import Services
from .api.errors import RobustauditApi, register_error_handlers
from .api.schemas import audit_request_schema, schedule_request_schema
from .config import Config, load_plugins
from .dispatch import CeleryDispatcher, Dispatcher
from .storage import Storage
from .store import Store

API_TITLE = "robustaudit"


def create_app(config: Config | None = None, *, dispatcher: Dispatcher | None = None,
               store: Store | None = None) -> Flask:
    """The API app.

    Args:
        config: defaults to :meth:`Config.from_env`.
        dispatcher: how audits reach workers; defaults to Celery on ``config.broker_url``.
        store: the job store; defaults to one on ``config.database_url`` (migrated by
            ``robustaudit migrate``/``api``/``serve``, not here).
    """
    config = config or Config.from_env()
    load_plugins(config)
    app = Flask("robustaudit")
    # Multipart fields are checked for NUL/surrogates when a view first reads them.
    app.request_class = BoundedRequest
    # No redirects: Werkzeug answers '//v1/models' or a trailing slash with a 308 HTML page.
    # Set before any rule is added, since rules take these defaults when they are bound.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    # Before authentication and before routing errors: bad paths, queries and headers are refused first.
    app.before_request(check_request)
    # Reports keep their order (clean first, then suites in run order); Flask sorts by default.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config.update(
        API_TITLE=API_TITLE, API_VERSION=__version__, OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/v1", OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=config.max_upload_bytes, MAX_FORM_MEMORY_SIZE=16 * 1024 * 1024,
        API_SPEC_OPTIONS={
            "info": {"description": "Robustness audits of image classifiers. Authenticate with "
                                    "'Authorization: Bearer <token>'. Every 4xx and 5xx has the body Error."},
            "security": [{"bearerAuth": []}],
        },
    )
    if dispatcher is None:
        from worker.celery_app import create_celery

        dispatcher = CeleryDispatcher(create_celery(config))
    app.extensions["robustaudit"] = Services(config=config, store=store or Store(config.database_url),
                                             storage=Storage(config.storage_dir), dispatcher=dispatcher)
    api = RobustauditApi(app)
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    api.spec.components.schema("AuditRequest", schema=audit_request_schema())
    api.spec.components.schema("ScheduleRequest", schema=schedule_request_schema())
    for blp in (models_api.blp, audits_api.blp, report_html_api.blp, compare_api.blp, schedules_api.blp):
        api.register_blueprint(blp)
    app.extensions["robustaudit.api"] = api
    app.register_blueprint(ops.bp)
    register_error_handlers(app)
    return app
