"""The ``robustaudit`` console script.

Engine commands (``audit``, ``metrics``, ``suites``) come from :mod:`worker.engine.cli` and
need only the engine's packages (``pip install robustaudit``); the service adds ``serve``,
``api``, ``worker``, ``beat``, ``migrate``, ``openapi`` and the client ``submit``, whose
modules import Flask, Celery or SQLAlchemy only when such a command runs
(``pip install 'robustaudit[service]'``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.engine.cli import EXIT_INPUT, add_engine_commands, add_version, run_command

from .client import add_client_commands
from .processes import add_process_commands

#: what the service commands import; missing, they say which extra installs it
SERVICE_PACKAGES = frozenset({"flask", "flask_smorest", "marshmallow", "werkzeug", "celery", "kombu", "redis",
                              "sqlalchemy", "alembic", "gunicorn", "psycopg", "yaml", "croniter",
                              "prometheus_client"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustaudit", description="Robustness audits of image classifiers.")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    add_engine_commands(sub)
    # Both only define arguments: their commands import the service stack when they run.
    add_process_commands(sub)
    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVICE_PACKAGES:
            raise
        print(f"robustaudit: error: '{args.command}' needs the service stack (the Python package {exc.name!r} "
              "is missing): pip install 'robustaudit[service]'", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
