"""A test-only plugin, loaded by the e2e workers through ROBUSTAUDIT_PLUGINS: registers suite ``slow``.

Importing it changes the suite registry of the importing process, so the test process itself
never imports it (its tests add the suite with monkeypatch instead).
"""

from tests.e2e.slow_suite import SlowSuite
from worker.engine.suites import SUITES

SUITES.setdefault(SlowSuite.name, SlowSuite)
