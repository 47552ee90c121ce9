"""The ``robustaudit`` console script.

Engine commands (``audit``, ``metrics``, ``suites``) come from :mod:`worker.engine.cli`;
the service adds ``serve``, ``api``, ``worker``, ``beat``, ``migrate``, ``openapi`` and the
client ``submit``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.engine.cli import add_engine_commands

from .client import add_client_commands
from .processes import add_process_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustaudit", description="Robustness audits of image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_engine_commands(sub)
    add_process_commands(sub)
    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
