"""End-to-end fixtures: a fresh PostgreSQL database and a Redis key prefix per session, and real
``robustaudit worker`` processes. Redis and PostgreSQL must be running (``.ci/run`` starts them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app import create_app
from service.config import Config, hash_token
from service.dispatch import CeleryDispatcher
from service.store import Store
from tests.service.conftest import TOKENS
from worker.celery_app import create_celery

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("ROBUSTAUDIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("ROBUSTAUDIT_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def pg_url(run_id) -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"ra_e2e_{run_id}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_prefix(run_id) -> Iterator[str]:
    import redis

    prefix = f"ra-e2e-{run_id}:"
    yield prefix
    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def e2e_config(tmp_path_factory, pg_url, redis_prefix) -> Config:
    home = tmp_path_factory.mktemp("e2e")
    return Config(home=home, database_url=pg_url, broker_url=REDIS, broker_prefix=redis_prefix,
                  storage_dir=home / "storage", data_roots=(home / "storage" / "data",),
                  token_hashes={hash_token(t): tenant for tenant, t in TOKENS.items()},
                  heartbeat_s=0.5, heartbeat_timeout_s=4.0, visibility_timeout_s=6.0, max_attempts=3,
                  device="cpu")


@pytest.fixture(scope="session")
def e2e_store(e2e_config) -> Iterator[Store]:
    store = Store(e2e_config.database_url)
    store.migrate()
    yield store
    store.dispose()


@pytest.fixture(scope="session")
def dispatcher(e2e_config) -> CeleryDispatcher:
    return CeleryDispatcher(create_celery(e2e_config))


@pytest.fixture(scope="session")
def e2e_app(e2e_config, e2e_store, dispatcher):
    app = create_app(e2e_config, dispatcher=dispatcher, store=e2e_store)
    app.config["TESTING"] = True
    return app


@pytest.fixture()
def client(e2e_app):
    return e2e_app.test_client()


class Worker:
    """A ``robustaudit worker`` subprocess in its own process group (so a kill takes its pool too)."""

    def __init__(self, config: Config, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.config.as_env(), "PYTHONPATH": str(ROOT),
               "ROBUSTAUDIT_PLUGINS": "tests.e2e.slow_plugin"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker", "--loglevel", "info",
                 "--hostname", f"e2e-{uuid.uuid4().hex[:6]}@%h"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the worker and its pool: what a crashed machine looks like to the broker."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def worker(e2e_config, tmp_path_factory) -> Iterator[Worker]:
    w = Worker(e2e_config, tmp_path_factory.mktemp("logs") / "worker.log")
    w.start()
    yield w
    w.stop()
    print(w.log.read_text()[-3000:])


def wait_until(predicate, *, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
