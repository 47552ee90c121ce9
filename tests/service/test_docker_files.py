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


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions in order (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(m.group(1), m.group(2).strip()) for line in text.splitlines()
            if (m := re.match(r"^\s*([A-Z]+)\s+(.*)$", line))]


def check_robustaudit_args(args: list[str]) -> None:
    """argparse exits on an unknown command or flag; make that a test failure with the args."""
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"'robustaudit {' '.join(args)}' is not a valid command (exit {exc.code})")


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def floors() -> dict[str, str]:
    """``name>=version`` floors of pyproject's dependencies."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {m.group(1).lower(): m.group(2) for d in deps if (m := re.match(r"^([A-Za-z0-9_.-]+)>=([^,;\s]+)", d))}


def version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def test_dockerfile_installs_the_pinned_torch_with_the_same_constraints():
    """The image gets torch/torchvision only through `pip install -c constraints.txt` (no base image's
    own torch), the constraints file is copied before the first install, and every pip install in the
    image uses it: the image runs on what `make test` tested."""
    df = dockerfile()
    assert len(df["FROM"]) == 1 and "torch" not in df["FROM"][0]
    steps = [(i, a) for i, a in instructions() if i in ("COPY", "RUN")]
    installs = [n for n, (i, a) in enumerate(steps) if i == "RUN" and "pip install" in a]
    copies_pins = [n for n, (i, a) in enumerate(steps) if i == "COPY" and "constraints.txt" in a.split()[:-1]]
    assert installs and copies_pins and copies_pins[0] < installs[0], "constraints.txt must be copied first"
    for n in installs:
        for cmd in steps[n][1].split("&&"):
            if "pip install" in cmd:
                assert "-c constraints.txt" in cmd, f"an install without the constraints: {cmd.strip()}"
    torch_install = next(steps[n][1] for n in installs if re.search(r"\btorch\b", steps[n][1]))
    assert "torchvision" in torch_install
    assert {"torch", "torchvision"} <= set(pins(ROOT / "constraints.txt"))


def test_torch_range_ends_are_the_tested_pins():
    """pyproject's floor is what .ci/floor tests (.ci/floor-constraints.txt), its top what constraints.txt
    pins, and the floor is below the top: the claimed range is tested at both ends."""
    floor, top, claimed = pins(ROOT / ".ci" / "floor-constraints.txt"), pins(ROOT / "constraints.txt"), floors()
    for pkg in ("torch", "torchvision"):
        assert version(claimed[pkg]) == version(floor[pkg])[:len(version(claimed[pkg]))], (pkg, claimed, floor)
        assert version(floor[pkg]) < version(top[pkg])
    assert (ROOT / ".ci" / "floor").read_text().count("floor-constraints.txt") >= 1
    assert ".ci/floor" in (ROOT / ".ci" / "run").read_text(), ".ci/run must run the floor tests"


def test_dockerfile_entrypoint_cmd_and_copies():
    df = dockerfile()
    assert len(df["FROM"]) == 1
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
    assert {"redis", "postgres", "api", "worker-gpu0", "beat"} <= set(services)
    ours = {name: s for name, s in services.items() if s.get("build") == "."}
    assert {"api", "worker-gpu0", "beat", "migrate"} <= set(ours)
    for name, svc in ours.items():
        check_robustaudit_args(svc["command"])
        volumes = svc.get("volumes", [])
        assert "shared:/data" in volumes, f"{name} must mount the shared volume"
        env = svc["environment"]
        assert env["ROBUSTAUDIT_BROKER_URL"].startswith("redis://redis:")
        assert env["ROBUSTAUDIT_DATABASE_URL"].startswith("postgresql+psycopg://")
        for dep in svc.get("depends_on", {}):
            assert dep in services
    assert ours["api"]["command"][0] == "api" and ours["worker-gpu0"]["command"][0] == "worker"
    assert ours["beat"]["command"] == ["beat"]
    assert set(compose["volumes"]) >= {"shared"}
    for name in ours:
        if ours[name]["command"][0] == "worker":
            assert name == "worker-gpu0", "more workers come from scripts/compose_gpus.py, one per GPU"
    (gpu,) = ours["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == {"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}  # not count: 1


@pytest.mark.parametrize("n", [1, 2, 4])
def test_compose_gpus_gives_each_worker_its_own_gpu(n):
    """The override from scripts/compose_gpus.py, merged over the base file as compose merges
    services: n workers, GPU k for worker-gpuk, distinct Celery hostnames, otherwise the template."""
    from scripts.compose_gpus import override

    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    extra = yaml.safe_load(yaml.safe_dump(override(n)))["services"]  # what the written file parses to
    assert not set(extra) & set(base)
    workers = {**{k: v for k, v in base.items() if k.startswith("worker-")}, **extra}
    assert sorted(workers) == sorted(f"worker-gpu{k}" for k in range(n))
    hostnames = set()
    for k in range(n):
        svc = workers[f"worker-gpu{k}"]
        (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert dev["device_ids"] == [str(k)] and "count" not in dev
        check_robustaudit_args(svc["command"])
        hostnames.add(svc["command"][svc["command"].index("--hostname") + 1])
        same = {key: val for key, val in svc.items() if key not in ("deploy", "command")}
        assert same == {key: val for key, val in base["worker-gpu0"].items() if key not in ("deploy", "command")}
    assert len(hostnames) == n
