"""One tenant against the others: the figures of issue 19, measured in one run.

- ``flood``: tenant A posts N audits as fast as it can (in-process API, SQLite, no broker); how
  many are accepted (202) and refused (429 ``tenant_limit``) under the default limits.
- ``wait``: tenant A queues a backlog of real sandboxed audits, then tenant B submits one; one
  worker (this process) takes one message after another in the broker's order. Fair scheduling
  (``execute_next``: the message is a wake-up) against the old behaviour (``execute_audit``: the
  message's own audit, strict FIFO); B's queue wait (started - created) in each.
- ``rss``: N tenants upload the same checkpoint at once (so the per-tenant cache does not help);
  the peak resident memory of this process and its children (the sandboxed checks) with a pool of
  N slots (what happened before the pool: every check at once) and of ``--slots``.

    python bench/tenants.py                    # all three
    python bench/tenants.py wait --backlog 6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.app import create_app  # noqa: E402
from service.config import Config, hash_token  # noqa: E402
from service.store import Audit, Store  # noqa: E402

DEMO = ROOT / "worker" / "engine" / "assets" / "demo"


class Recorder:
    """The broker: a list of messages, delivered in order."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, audit_id: str) -> None:
        self.sent.append(audit_id)


def _app(home: Path, tenants: list[str], **overrides: Any) -> tuple[Any, Config, Store, Recorder]:
    cfg = Config(home=home, database_url=f"sqlite:///{home / 'store.sqlite'}", broker_url="memory://",
                 storage_dir=home / "storage", data_roots=(home / "storage" / "data",),
                 token_hashes={hash_token(f"tok-{t}"): t for t in tenants}, device="cpu", **overrides)
    store = Store(cfg.database_url)
    store.migrate()
    dispatcher = Recorder()
    app = create_app(cfg, dispatcher=dispatcher, store=store)
    app.config["TESTING"] = True
    return app, cfg, store, dispatcher


def _upload(client: Any, tenant: str) -> Any:
    with open(DEMO / "digits_cnn.pt", "rb") as ckpt, open(DEMO / "digits_cnn.card.json", "rb") as card:
        return client.post("/v1/models", headers={"Authorization": f"Bearer tok-{tenant}"},
                           content_type="multipart/form-data",
                           data={"checkpoint": (ckpt, "digits_cnn.pt"), "card": (card, "card.json")})


def _body(model: str, n: int = 20) -> dict[str, Any]:
    return {"model": model, "dataset": {"kind": "builtin", "name": "digits", "n_samples": n}, "suites": {"clean": {}}}


def _post(client: Any, tenant: str, body: dict[str, Any]) -> Any:
    return client.post("/v1/audits", headers={"Authorization": f"Bearer tok-{tenant}"}, data=json.dumps(body),
                       content_type="application/json")


def flood(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        app, cfg, store, _ = _app(Path(tmp), ["a", "b"])
        client = app.test_client()
        model = _upload(client, "a").json["id"]
        codes: dict[int, int] = {}
        started = time.monotonic()
        for _ in range(n):
            code = _post(client, "a", _body(model)).status_code
            codes[code] = codes.get(code, 0) + 1
        seconds = time.monotonic() - started
        other = _post(client, "b", _body(_upload(client, "b").json["id"])).status_code
        store.dispose()
    return {"posted": n, "accepted": codes.get(202, 0), "refused_429": codes.get(429, 0), "seconds": round(seconds, 1),
            "limit": cfg.tenant_limits.default.max_active_audits, "other_tenant_after_flood": other}


def wait(backlog: int, fair: bool) -> dict[str, Any]:
    from worker.tasks import execute_audit, execute_next

    with tempfile.TemporaryDirectory() as tmp:
        app, cfg, store, dispatcher = _app(Path(tmp), ["a", "b"], heartbeat_s=0.5)
        client = app.test_client()
        models = {t: _upload(client, t).json["id"] for t in ("a", "b")}
        for _ in range(backlog):
            _post(client, "a", _body(models["a"]))
        b = _post(client, "b", _body(models["b"])).json["id"]
        started = time.monotonic()
        ran = []
        for message in list(dispatcher.sent):  # one worker, messages in the broker's order
            if fair:
                taken = execute_next(cfg, message)
                ran.append(taken[0] if taken else None)
            else:
                execute_audit(cfg, message)
                ran.append(message)
            if b in ran:
                break
        with store.session() as s:
            audit = s.get(Audit, b)
            waited = (audit.started_at - audit.created_at).total_seconds()
        store.dispose()
    return {"scheduling": "fair" if fair else "fifo (before)", "backlog_of_a": backlog,
            "b_started_as": ran.index(b) + 1, "b_queue_wait_s": round(waited, 1),
            "seconds": round(time.monotonic() - started, 1)}


def _tree_rss_mb() -> float:
    from worker.sandbox import tree_rss_mb

    return tree_rss_mb(os.getpid())


def rss(tenants: int, slots: int) -> dict[str, Any]:
    from service import uploads

    names = [f"t{i}" for i in range(tenants)]
    with tempfile.TemporaryDirectory() as tmp:
        app, cfg, store, _ = _app(Path(tmp), names, upload_checks=slots, upload_queue_s=600.0)
        uploads._seen.clear()
        peak, done = [_tree_rss_mb()], threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak.append(_tree_rss_mb())

        codes: list[int] = []

        def upload(tenant: str) -> None:
            codes.append(_upload(app.test_client(), tenant).status_code)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        threads = [threading.Thread(target=upload, args=(t,)) for t in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - started
        done.set()
        sampler.join()
        store.dispose()
    return {"uploads_at_once": tenants, "slots": slots, "codes": sorted(codes), "peak_rss_mb": round(max(peak)),
            "before_mb": round(peak[0]), "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", default=["flood", "wait", "rss"], choices=["flood", "wait", "rss"])
    parser.add_argument("--flood", type=int, default=300, help="audits tenant A posts")
    parser.add_argument("--backlog", type=int, default=6, help="tenant A's queued audits before B submits")
    parser.add_argument("--uploads", type=int, default=4, help="tenants uploading at once")
    parser.add_argument("--slots", type=int, default=2, help="the pool's slots (ROBUSTAUDIT_UPLOAD_CHECKS)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out: dict[str, Any] = {"load_average": os.getloadavg()}
    if "flood" in args.what:
        out["flood"] = flood(args.flood)
        print(json.dumps(out["flood"]), flush=True)
    if "wait" in args.what:
        out["wait"] = [wait(args.backlog, fair=False), wait(args.backlog, fair=True)]
        print(json.dumps(out["wait"]), flush=True)
    if "rss" in args.what:
        out["rss"] = [rss(args.uploads, args.uploads), rss(args.uploads, args.slots)]
        print(json.dumps(out["rss"]), flush=True)
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
