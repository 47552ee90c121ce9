"""Write a docker compose override with one worker per GPU: worker-gpu1 .. worker-gpu{N-1}.

docker-compose.yml defines worker-gpu0 (GPU 0). Every other worker is a copy of it pinned to its
own GPU by ``device_ids`` with its own Celery hostname; ``--scale`` cannot do this, since all
replicas of one service share its device reservation. Usage (see docs/deployment.md):

    python3 scripts/compose_gpus.py --gpus auto > docker-compose.gpus.yml
    docker compose -f docker-compose.yml -f docker-compose.gpus.yml up -d
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
TEMPLATE = "worker-gpu0"


def count_gpus() -> int:
    """GPUs the NVIDIA driver lists on this host (``nvidia-smi -L``: one line per GPU)."""
    out = subprocess.run(["nvidia-smi", "-L"], check=True, capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def worker_for(template: dict[str, Any], gpu: int) -> dict[str, Any]:
    """``template`` pinned to ``gpu``: its device_ids and its Celery hostname change, nothing else."""
    svc = copy.deepcopy(template)
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    if len(devices) != 1 or "device_ids" not in devices[0]:
        raise ValueError(f"{TEMPLATE} must reserve exactly one device by device_ids")
    devices[0]["device_ids"] = [str(gpu)]
    cmd = svc["command"]
    cmd[cmd.index("--hostname") + 1] = f"gpu{gpu}@%h"
    return svc


def override(n_gpus: int, compose: Path = COMPOSE) -> dict[str, Any]:
    """The override document for ``n_gpus`` GPUs (worker-gpu0 stays in the base file)."""
    if n_gpus < 1:
        raise ValueError("need at least one GPU")
    template = yaml.safe_load(compose.read_text())["services"][TEMPLATE]
    return {"services": {f"worker-gpu{k}": worker_for(template, k) for k in range(1, n_gpus)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--gpus", default="auto", help="number of GPUs, or 'auto' (nvidia-smi -L)")
    args = parser.parse_args(argv)
    n = count_gpus() if args.gpus == "auto" else int(args.gpus)
    sys.stdout.write(f"# scripts/compose_gpus.py --gpus {n}: worker-gpu1 .. worker-gpu{n - 1} (none for one GPU)\n")
    sys.stdout.write(yaml.safe_dump(override(n), sort_keys=False, width=1000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
