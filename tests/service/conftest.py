"""App fixtures: an isolated SQLite store and storage per test, two tenants, a recording dispatcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.app import create_app
from service.config import Config, hash_token
from service.store import Store

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "worker" / "engine" / "assets" / "demo"
TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}


class RecordingDispatcher:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, audit_id: str) -> None:
        self.sent.append(audit_id)


@pytest.fixture()
def config(tmp_path) -> Config:
    return Config(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'store.sqlite'}", broker_url="memory://",
                  storage_dir=tmp_path / "storage", data_roots=(tmp_path / "storage" / "data",),
                  token_hashes={hash_token(t): tenant for tenant, t in TOKENS.items()}, max_upload_mb=2.0,
                  heartbeat_s=0.2, heartbeat_timeout_s=30, device="cpu")


@pytest.fixture()
def store(config) -> Store:
    s = Store(config.database_url)
    s.migrate()
    yield s
    s.dispose()


@pytest.fixture()
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture()
def app(config, store, dispatcher):
    app = create_app(config, dispatcher=dispatcher, store=store)
    app.config["TESTING"] = True
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


def auth(tenant: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[tenant]}"}


def upload_demo(client, tenant: str = "alice", name: str = "digits_cnn"):
    with open(DEMO / f"{name}.pt", "rb") as ckpt, open(DEMO / f"{name}.card.json", "rb") as card:
        return client.post("/v1/models", headers=auth(tenant), content_type="multipart/form-data",
                           data={"checkpoint": (ckpt, f"{name}.pt"), "card": (card, "card.json")})


@pytest.fixture()
def model_id(client) -> str:
    resp = upload_demo(client)
    assert resp.status_code == 201, resp.json
    return resp.json["id"]


def audit_body(model_id: str, **extra) -> dict:
    body = {"model": model_id, "dataset": {"kind": "builtin", "name": "digits", "n_samples": 20},
            "suites": {"clean": {}}, "gates": ["clean.top1 >= 0.5"], "label": "ci"}
    body.update(extra)
    return body


def post_audit(client, body, tenant: str = "alice", headers=None):
    return client.post("/v1/audits", headers={**auth(tenant), **(headers or {})}, data=json.dumps(body),
                       content_type="application/json")


def assert_error_body(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) <= {"status", "code", "message", "details"}
    assert body["status"] == status and isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["code"] == code, body
    return body
