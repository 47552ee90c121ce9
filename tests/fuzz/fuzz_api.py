"""Schemathesis against the served OpenAPI document (/v1/openapi.json), auth on: every operation,
positive and negative cases, deterministic (derandomized Hypothesis, no example database).
Fails on any 5xx. Run with ``make fuzz``; not collected by ``make test`` (the name has no ``test_``).

The app is the real one through WSGI, on an SQLite store, with a recording dispatcher (no broker)
and a registered demo model, so list and read answers have rows to serialise.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from service.app import create_app
from service.config import Config, hash_token
from service.store import Store

TOKEN = "fuzz-token"
#: per operation; with the coverage phase's own cases this gives well over 1,000 in all
MAX_EXAMPLES = int(os.environ.get("ROBUSTAUDIT_FUZZ_EXAMPLES", "100"))
MIN_CASES = 1000
DEMO = Path(__file__).resolve().parents[2] / "worker" / "engine" / "assets" / "demo"

#: what the run saw, reported by tests/fuzz/conftest.py
STATS: Counter[str] = Counter()
SERVER_ERRORS: list[str] = []


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, audit_id: str) -> None:
        self.sent.append(audit_id)


def _app(home: Path):  # type: ignore[no-untyped-def]
    # ROBUSTAUDIT_FUZZ_DATABASE_URL: fuzz against another store (PostgreSQL refuses what SQLite takes)
    database_url = os.environ.get("ROBUSTAUDIT_FUZZ_DATABASE_URL") or f"sqlite:///{home / 'store.sqlite'}"
    config = Config(home=home, database_url=database_url, broker_url="memory://",
                    storage_dir=home / "storage", data_roots=(home / "storage" / "data",),
                    token_hashes={hash_token(TOKEN): "fuzzer"}, max_upload_mb=2.0, device="cpu")
    store = Store(config.database_url)
    store.migrate()
    app = create_app(config, dispatcher=_Recorder(), store=store)
    with open(DEMO / "digits_cnn.pt", "rb") as ckpt, open(DEMO / "digits_cnn.card.json", "rb") as card:
        resp = app.test_client().post("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"},
                                      content_type="multipart/form-data",
                                      data={"checkpoint": (ckpt, "m.pt"), "card": (card, "card.json")})
    if resp.status_code != 201:
        raise RuntimeError(f"the demo model did not register: {resp.get_data(as_text=True)}")
    return app


# Built when the module is collected: schemathesis turns each operation into a test item then.
# (Its fixture-based lazy loader does not work with pytest 9.)
_HOME = tempfile.TemporaryDirectory(prefix="robustaudit-fuzz-")
schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", _app(Path(_HOME.name)))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    STATS["cases"] += 1
    try:
        response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    except Exception as exc:  # an exception out of the app is a 500 under gunicorn
        STATS["5xx"] += 1
        SERVER_ERRORS.append(f"{case.method} {case.formatted_path} -> {type(exc).__name__}: {exc}")
        raise
    STATS[f"{response.status_code // 100}xx"] += 1
    if response.status_code >= 500:
        SERVER_ERRORS.append(f"{case.method} {case.formatted_path} -> {response.status_code}")
    case.validate_response(response, checks=(not_a_server_error,))
