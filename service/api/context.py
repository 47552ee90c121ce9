"""What a request handler may use, kept on the Flask app (never in module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from ..config import Config
from ..dispatch import Dispatcher
from ..storage import Storage
from ..store import Store


@dataclass
class Services:
    config: Config
    store: Store
    storage: Storage
    dispatcher: Dispatcher


def services() -> Services:
    svc: Services = current_app.extensions["robustaudit"]
    return svc
