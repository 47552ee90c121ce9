"""api_spec/openapi.yaml is generated from the app; it must match what the app serves now."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.openapi import REGENERATE, openapi_yaml
from worker.engine.suites import SUITES

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_file_is_up_to_date():
    # in a fresh process: the document reflects the suite registry at start, and other tests
    # change this process's registry (a plugin's suite) and leave schema classes cached
    current = subprocess.run([sys.executable, "-c", "import sys; from service.openapi import openapi_yaml; "
                              "sys.stdout.write(openapi_yaml())"], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=120).stdout
    on_disk = (ROOT / "api_spec" / "openapi.yaml").read_text()
    assert on_disk == current, f"api_spec/openapi.yaml is out of date; regenerate it with: {REGENERATE}"


def test_every_registered_suite_is_in_the_document():
    doc = yaml.safe_load(openapi_yaml())
    suites = doc["components"]["schemas"]["Suites"]["properties"]
    assert set(suites) == set(SUITES)
    clean = doc["components"]["schemas"]["CleanParams"]["properties"]
    assert set(clean) == {p.name for p in SUITES["clean"].params.params}


@pytest.mark.filterwarnings("ignore:Multiple schemas resolved:UserWarning")  # two registries in one process
def test_plugins_add_suites_to_the_api(monkeypatch):
    """A suite a plugin registers is validated by the API and documented, with no other change."""
    from service.api.schemas import audit_request_schema
    from tests.e2e.slow_suite import SlowSuite

    monkeypatch.setitem(SUITES, "slow", SlowSuite)
    doc = yaml.safe_load(openapi_yaml())
    assert "slow" in doc["components"]["schemas"]["Suites"]["properties"]
    loaded = audit_request_schema()().load({"model": "m", "dataset": "builtin:digits", "suites": {"slow": {}}})
    assert loaded["suites"] == {"slow": {}}
