import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "worker" / "engine" / "assets" / "demo"


@pytest.fixture(scope="session")
def report_validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "api_spec" / "report.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.fixture()
def demo_model() -> Path:
    return DEMO / "digits_cnn.pt"


@pytest.fixture()
def data_root(tmp_path, monkeypatch) -> Path:
    """A data root of its own for each test."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("ROBUSTAUDIT_DATA_ROOTS", str(root))
    return root
