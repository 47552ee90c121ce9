"""No Docker engine runs here: check the Dockerfile and docker-compose.yml by parsing them, and
check that every command they run is a real command of this project, with flags it accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from service.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def dockerfile() -> dict[str, list[str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Z]+)\s+(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2).strip())
    return out


def check_robustaudit_args(args: list[str]) -> None:
    """argparse exits on an unknown command or flag; make that a test failure with the args."""
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"'robustaudit {' '.join(args)}' is not a valid command (exit {exc.code})")


def test_dockerfile_entrypoint_cmd_and_copies():
    df = dockerfile()
    assert len(df["FROM"]) == 1 and "cuda" in df["FROM"][0]
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    entry = json.loads(df["ENTRYPOINT"][0])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["robustaudit"] and entry[0] in scripts
    check_robustaudit_args(json.loads(df["CMD"][0]))
    for copy in df["COPY"]:
        *sources, _dest = copy.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_compose_services_and_commands():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "api", "worker", "beat"} <= set(services)
    ours = {name: s for name, s in services.items() if s.get("build") == "."}
    assert {"api", "worker", "beat", "migrate"} <= set(ours)
    for name, svc in ours.items():
        check_robustaudit_args(svc["command"])
        volumes = svc.get("volumes", [])
        assert "shared:/data" in volumes, f"{name} must mount the shared volume"
        env = svc["environment"]
        assert env["ROBUSTAUDIT_BROKER_URL"].startswith("redis://redis:")
        assert env["ROBUSTAUDIT_DATABASE_URL"].startswith("postgresql+psycopg://")
        for dep in svc.get("depends_on", {}):
            assert dep in services
    assert ours["api"]["command"][0] == "api" and ours["worker"]["command"][0] == "worker"
    assert ours["beat"]["command"] == ["beat"]
    gpu = ours["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert set(compose["volumes"]) >= {"shared"}
