"""api_spec/openapi.yaml is generated from the app; it must match what the app serves now."""

from pathlib import Path

import yaml

from service.openapi import REGENERATE, openapi_yaml
from worker.engine.suites import SUITES

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_file_is_up_to_date():
    current = openapi_yaml()
    on_disk = (ROOT / "api_spec" / "openapi.yaml").read_text()
    assert on_disk == current, f"api_spec/openapi.yaml is out of date; regenerate it with: {REGENERATE}"


def test_every_registered_suite_is_in_the_document():
    doc = yaml.safe_load(openapi_yaml())
    suites = doc["components"]["schemas"]["Suites"]["properties"]
    assert set(suites) == set(SUITES)
    clean = doc["components"]["schemas"]["CleanParams"]["properties"]
    assert set(clean) == {p.name for p in SUITES["clean"].params.params}
