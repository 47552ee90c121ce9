"""The ``robustaudit`` console script.

The engine's commands (``audit``, ``metrics``, ``suites``) come from
:mod:`worker.engine.cli`; service commands join them here as they are built.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.engine.cli import add_engine_commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robustaudit", description="Robustness audits of image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_engine_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
