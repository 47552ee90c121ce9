"""One audit shared by several workers: the same audit on 1 and on N worker processes, in one run.

Real Redis (a key prefix of its own per run) and real PostgreSQL (a fresh database, dropped at
the end), real ``robustaudit worker`` processes with torch on one thread each (CPU), or one
worker per GPU (``--gpus``: ``CUDA_VISIBLE_DEVICES`` set per worker). The API runs in this
process. Each run's time is from submit to ``succeeded`` with every worker already up; the
metrics of all runs must be identical.

    python bench/distributed.py                          # CPU: 120 digits, attacks (PGD, FGSM), 1 and 2 workers
    python bench/distributed.py --gpus 4 --workers 1,4 --device cuda --samples 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.app import create_app  # noqa: E402
from service.config import Config  # noqa: E402
from service.dispatch import CeleryDispatcher  # noqa: E402
from service.store import Audit, Store  # noqa: E402
from worker.celery_app import create_celery  # noqa: E402

DEMO = ROOT / "worker" / "engine" / "assets" / "demo"
#: PGD and FGSM at every default budget of both norms, without the targeted study and FMN: the
#: attacks suite's core, sized so that one worker takes some 15-30 s on two idle cores
ATTACKS = {"attacks": ["pgd", "fgsm"], "minimal": "none", "targeted": {"enabled": False}}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def start_workers(cfg: Config, n: int, logs: Path, gpus: int) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        env = {**os.environ, **cfg.as_env(), "PYTHONPATH": str(ROOT), **dict.fromkeys(THREAD_VARS, "1")}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        log = open(logs / f"worker-{n}-{i}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--loglevel", "info",
                                       "--hostname", f"bench{n}-{i}@%h"], cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + 180
    for i in range(n):
        path = logs / f"worker-{n}-{i}.log"
        while " ready." not in path.read_text(errors="replace"):
            if time.monotonic() > deadline or procs[i].poll() is not None:
                raise SystemExit(f"worker {i} did not start; see {path}")
            time.sleep(0.2)
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    import signal

    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def run_once(cfg: Config, store: Store, request: dict[str, Any]) -> tuple[float, dict[str, Any], list[int]]:
    """(seconds from submit to succeeded, metrics per suite, how many shards each worker ran)."""
    app = create_app(cfg, dispatcher=CeleryDispatcher(create_celery(cfg)), store=store)
    client = app.test_client()
    with open(DEMO / "digits_cnn.pt", "rb") as ckpt, open(DEMO / "digits_cnn.card.json", "rb") as card:
        resp = client.post("/v1/models", content_type="multipart/form-data",
                           data={"checkpoint": (ckpt, "digits_cnn.pt"), "card": (card, "card.json")})
    assert resp.status_code in (200, 201), resp.get_json()
    t0 = time.perf_counter()
    resp = client.post("/v1/audits", json={**request, "model": resp.get_json()["id"]})
    assert resp.status_code == 202, resp.get_json()
    audit_id = resp.get_json()["id"]
    while True:
        with store.session() as s:
            audit = s.get(Audit, audit_id)
            assert audit is not None
            if audit.status not in ("queued", "running"):
                break
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    if audit.status != "succeeded":
        raise SystemExit(f"audit {audit_id} {audit.status}: {audit.error}")
    from service.store.models import ShardClaim

    with store.session() as s:
        holders = Counter(h for (h,) in s.query(ShardClaim.holder).filter_by(audit_id=audit_id))
    assert audit.report is not None
    return seconds, {n: x["metrics"] for n, x in audit.report["suites"].items()}, sorted(holders.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=120)
    ap.add_argument("--shard-size", type=int, default=10)
    ap.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    ap.add_argument("--attacks", default=json.dumps(ATTACKS), help="the attacks suite's parameters (JSON)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpus", type=int, default=0, help="one worker per GPU: CUDA_VISIBLE_DEVICES=i mod GPUS")
    ap.add_argument("--sandbox", default="bwrap", choices=("bwrap", "off"))
    ap.add_argument("--pg", default=os.environ.get("ROBUSTAUDIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--redis", default=os.environ.get("ROBUSTAUDIT_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--logs", type=Path, default=None, help="keep the workers' logs in this folder")
    args = ap.parse_args(argv)
    import psycopg
    import redis

    run_id = uuid.uuid4().hex[:8]
    db = f"ra_bench_{run_id}"
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    url = args.pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{db}"
    store = Store(url)
    store.migrate()
    request = {"dataset": {"kind": "builtin", "name": "digits", "n_samples": args.samples},
               "suites": {"attacks": json.loads(args.attacks)}, "gates": [], "label": "bench-distributed"}
    runs: dict[str, Any] = {}
    reference: dict[str, Any] | None = None
    identical = True
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="ra-bench-") as tmp:
            for n in (int(x) for x in args.workers.split(",")):
                home = Path(tmp) / f"w{n}"
                cfg = Config(home=home, database_url=url, broker_url=args.redis,
                             broker_prefix=f"ra-bench-{run_id}-{n}:", storage_dir=home / "storage",
                             data_roots=(home / "storage" / "data",),
                             device=args.device, fanout=n, shard_size=args.shard_size, sandbox=args.sandbox,
                             heartbeat_s=2.0)
                logs = args.logs or home / "logs"
                logs.mkdir(parents=True, exist_ok=True)
                procs = start_workers(cfg, n, logs, args.gpus)
                try:
                    seconds, metrics, used = run_once(cfg, store, request)
                finally:
                    stop_workers(procs)
                identical = identical and (reference is None or metrics == reference)
                reference = reference or metrics
                runs[str(n)] = {"seconds": round(seconds, 2), "shards_per_worker": used}
                print(f"{n} worker(s): {seconds:.2f} s (shards per worker: {used})", flush=True)
    finally:
        store.dispose()
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=f"ra-bench-{run_id}-*"))
        if keys:
            client.delete(*keys)
    counts = sorted(runs, key=int)
    result = {"samples": args.samples, "shard_size": args.shard_size, "attacks": json.loads(args.attacks),
              "device": args.device,
              "runs": runs, "ratio": round(runs[counts[0]]["seconds"] / runs[counts[-1]]["seconds"], 2),
              "metrics_identical": identical, "cpus": os.cpu_count(),
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
