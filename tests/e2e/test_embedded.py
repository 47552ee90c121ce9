"""The embedded default end to end: ``robustaudit serve`` (gunicorn + worker + beat on a SQLite
broker and store, no Redis) driven by the ``robustaudit submit`` client and its exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.cli import main
from service.client import Client, ClientError, wait_for
from service.demo import free_port, stop, wait_ready
from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e
DEMO = ROOT / "worker" / "engine" / "assets" / "demo"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("embedded")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBUSTAUDIT_")}
    env.update(ROBUSTAUDIT_HOME=str(home), ROBUSTAUDIT_API_TOKENS="ci:secret-ci", PYTHONPATH=str(ROOT),
               ROBUSTAUDIT_DEVICE="cpu", ROBUSTAUDIT_MAX_UPLOAD_MB="1")
    port = free_port()
    log = open(home / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{port}",
                             "--api-workers", "1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(Client(url, "secret-ci"), proc, timeout=120)
        yield url, home
    finally:
        stop(proc)
        log.close()
        print(Path(home / "serve.log").read_text()[-3000:])
    assert proc.returncode == 0, "serve did not stop cleanly"


def submit(url, *args):
    return main(["submit", "--url", url, "--token", "secret-ci", "--quiet", "--timeout", "120", *args])


def test_submit_exit_codes(server, capsys):
    url, home = server
    common = ["--model", str(DEMO / "digits_cnn.pt"), "--dataset", "builtin:digits", "--n-samples", "20", "--wait"]
    assert submit(url, *common, "--gate", "clean.top1>=0.5") == 0
    assert submit(url, *common, "--gate", "clean.top1>1.5") == 1
    assert submit(url, *common, "--suite", "no_such_suite") == 2
    assert "no_such_suite" in capsys.readouterr().err
    assert submit(url, *common, "--set", "clean.ece_bins=0") == 2
    bad_dataset = [a if a != "builtin:digits" else "ftp:nowhere" for a in common]
    assert submit(url, *bad_dataset) == 2  # refused before anything is sent, not a crash
    assert "ftp" in capsys.readouterr().err
    assert (home / "broker.sqlite").exists() and (home / "store.sqlite").exists()


def test_auth_required_and_ops(server):
    url, _ = server
    with pytest.raises(ClientError, match="401"):
        Client(url).json("GET", "/v1/audits")
    assert Client(url).json("GET", "/healthz") == {"status": "ok"}
    assert "/v1/audits" in Client(url).json("GET", "/v1/openapi.json")["paths"]


def test_oversized_and_bogus_uploads_over_http(server, tmp_path):
    url, _ = server
    big = tmp_path / "big.pt"
    big.write_bytes(b"\0" * (2 * 1024 * 1024))
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    card = DEMO / "digits_cnn.card.json"
    client = Client(url, "secret-ci")
    with pytest.raises(ClientError, match="HTTP 413 .*payload_too_large"):
        client.upload_model(big, card)
    with pytest.raises(ClientError, match="HTTP 422 .*model_load_error"):
        client.upload_model(bogus, card)


def test_idle_service_starts_an_audit_within_half_a_second(server):
    """The embedded broker polls its table often: on an idle service a new audit leaves `queued`
    (a worker claimed it) within 0.5 s of the POST, each of four times. Kombu's default 1 s poll
    took up to a second."""
    url, _ = server
    client = Client(url, "secret-ci")
    model_id = client.upload_model(DEMO / "digits_cnn.pt", DEMO / "digits_cnn.card.json")["id"]
    body = {"model": model_id, "dataset": {"kind": "builtin", "name": "digits", "n_samples": 8},
            "suites": {"clean": {}}}
    waits, posts = [], []
    for i in range(4):
        time.sleep(0.7 + 0.13 * i)  # idle, and the POST lands at a different point of the poll cycle
        sent = time.monotonic()
        audit_id = client.json("POST", "/v1/audits", body)["id"]
        posts.append(time.monotonic() - sent)
        while client.json("GET", f"/v1/audits/{audit_id}")["status"] == "queued":
            assert time.monotonic() - sent < 30, "the audit was never picked up"
            time.sleep(0.01)
        waits.append(time.monotonic() - sent)
        assert wait_for(client, audit_id, timeout=120, poll=0.2)["status"] == "succeeded"
    print("queued -> running (s):", " ".join(f"{w:.3f}" for w in waits),
          "of which the POST:", " ".join(f"{p:.3f}" for p in posts))
    assert max(waits) < 0.5, waits
