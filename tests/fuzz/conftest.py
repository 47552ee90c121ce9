"""The fuzz run's summary (cases, answers by class, 5xx) and its floor of generated cases.

Inert unless tests/fuzz/fuzz_api.py ran (``make fuzz``)."""

from __future__ import annotations

import sys
from typing import Any

import pytest

_MODULE = "tests.fuzz.fuzz_api"


def _stats() -> Any:
    module = sys.modules.get(_MODULE)
    return None if module is None or not module.STATS["cases"] else module


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    module = _stats()
    if module is not None and module.STATS["cases"] < module.MIN_CASES and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # too few cases is a failed run, not a pass


def pytest_terminal_summary(terminalreporter: Any) -> None:
    module = _stats()
    if module is None:
        return
    stats = module.STATS
    classes = ", ".join(f"{k}: {stats[k]}" for k in sorted(stats) if k.endswith("xx"))
    terminalreporter.write_line(f"fuzz: {stats['cases']} cases ({classes}); 5xx: {stats['5xx']}; "
                                f"floor {module.MIN_CASES} cases")
    for line in module.SERVER_ERRORS[:20]:
        terminalreporter.write_line(f"fuzz 5xx: {line}")
    if stats["cases"] < module.MIN_CASES:
        terminalreporter.write_line(f"fuzz: FAILED, fewer than {module.MIN_CASES} cases")
