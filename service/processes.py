"""The service's process commands: ``migrate``, ``api`` (gunicorn), ``worker``, ``beat`` and
``serve``, the embedded default that runs the three as children of one process."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import Config


def _config() -> Config:
    return Config.from_env()


def cmd_migrate(args: argparse.Namespace) -> int:
    from .store import Store

    Store(_config().database_url).migrate()
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    """Migrate the store, then exec gunicorn on the app factory (or Flask's server with --dev)."""
    cmd_migrate(args)
    if args.dev:
        from .app import create_app
        from .storage import Storage

        Storage(_config().storage_dir).remove_partials()  # gunicorn's on_starting does it otherwise

        host, _, port = args.bind.rpartition(":")
        create_app().run(host=host or "127.0.0.1", port=int(port), debug=False)
        return 0
    # Worker class, threads, timeouts, request limits and the .part clean-up: service/gunicorn_conf.py
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:service.gunicorn_conf", "--bind", args.bind,
            "--workers", str(args.workers), "service.app:create_app()"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_worker(args: argparse.Namespace) -> int:
    """A Celery worker on the ``gpu`` queue, concurrency 1 (one audit per GPU at a time)."""
    from worker.celery_app import create_celery

    app = create_celery(_config())
    app.worker_main(["worker", "-Q", "gpu", "--concurrency", str(args.concurrency), "--loglevel", args.loglevel,
                     "--hostname", args.hostname, "--without-gossip", "--without-mingle"])
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    """Tick schedules and reap dead workers' audits every ROBUSTAUDIT_BEAT_INTERVAL_S seconds."""
    from worker.celery_app import create_celery

    from .dispatch import CeleryDispatcher
    from .scheduler import run_beat
    from .store import Store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s beat %(levelname)s %(message)s")
    config = _config()
    run_beat(config, Store(config.database_url), CeleryDispatcher(create_celery(config)), once=args.once)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The embedded default: api (gunicorn), one worker and the beat as child processes.

    With no configuration: SQLite store and broker and ./var storage. Ctrl-C or SIGTERM stops
    all three; if one child dies the others are stopped too.
    """
    config = _config()
    config.storage_dir.mkdir(parents=True, exist_ok=True)
    for root in config.data_roots:
        root.mkdir(parents=True, exist_ok=True)
    from .storage import Storage
    from .store import Store

    Store(config.database_url).migrate()
    # Nothing is uploading before the children start: every .part file is a dead upload's.
    Storage(config.storage_dir).remove_partials()
    env = {**os.environ, **config.as_env()}
    exe = [sys.executable, "-m", "service.cli"]
    commands = {
        "api": [*exe, "api", "--bind", args.bind, "--workers", str(args.api_workers), *(["--dev"] if args.dev else [])],
        "worker": [*exe, "worker", "--loglevel", "info"],
        "beat": [*exe, "beat"],
    }
    children = {name: subprocess.Popen(cmd, env=env) for name, cmd in commands.items()}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"robustaudit serving on http://{args.bind} (store {config.database_url}, broker {config.broker_url}, "
          f"storage {config.storage_dir})", file=sys.stderr, flush=True)
    code = 0
    try:
        while not stopping:
            dead = [n for n, p in children.items() if p.poll() is not None]
            if dead:
                print(f"robustaudit serve: {dead} exited; stopping", file=sys.stderr)
                code = 1
                break
            time.sleep(0.5)
    finally:
        for p in children.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 15
        for p in children.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return code


def cmd_openapi(args: argparse.Namespace) -> int:
    """Write (or with --check, compare) api_spec/openapi.yaml from the app's schemas."""
    from .openapi import openapi_yaml

    path = Path(args.out)
    text = openapi_yaml()
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is out of date; regenerate it with: make openapi", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


def add_process_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run api + worker + beat (embedded default: SQLite, ./var, no Redis)")
    p.add_argument("--bind", default="127.0.0.1:8000")
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--dev", action="store_true", help="Flask's own server instead of gunicorn")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("api", help="migrate the store, then run the API under gunicorn")
    p.add_argument("--bind", default="0.0.0.0:8000")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dev", action="store_true", help="Flask's own server instead of gunicorn")
    p.set_defaults(func=cmd_api)
    p = sub.add_parser("worker", help="a Celery worker on the gpu queue")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--loglevel", default="info")
    p.add_argument("--hostname", default="gpu@%h")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("beat", help="enqueue due schedules and reap dead workers' audits, every minute")
    p.add_argument("--once", action="store_true", help="one tick, then exit")
    p.set_defaults(func=cmd_beat)
    p = sub.add_parser("migrate", help="bring the job store's schema up to date")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("openapi", help="regenerate api_spec/openapi.yaml from the app")
    p.add_argument("--out", default="api_spec/openapi.yaml")
    p.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    p.set_defaults(func=cmd_openapi)
