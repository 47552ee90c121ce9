"""The OpenAPI document, generated from the app's schemas (which include every registered suite)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .config import Config
from .store import Store

REGENERATE = "make openapi   (or: robustaudit openapi)"


class _NoDispatch:
    def send(self, audit_id: str) -> None:
        raise RuntimeError("the OpenAPI app does not dispatch")


def openapi_yaml() -> str:
    """The document as YAML, independent of this machine's environment."""
    from .app import create_app

    config = Config(home=Path("var"), database_url="sqlite:///:memory:", broker_url="memory://")
    app = create_app(config, dispatcher=_NoDispatch(), store=Store("sqlite:///:memory:"))
    with app.app_context():
        doc = app.extensions["robustaudit.api"].spec.to_dict()
    return str(yaml.dump(doc, Dumper=_NoAliases, sort_keys=False, allow_unicode=True))


class _NoAliases(yaml.SafeDumper):
    """Write repeated objects out in full: the document is read by people and diffed in review."""

    def ignore_aliases(self, data: object) -> bool:
        return True
