"""``make demo``: start the embedded service, audit the demo model with every registered suite
(each at its ``demo_params``; the shift suite's second dataset is 50 images of the digits train
split) on builtin:digits, show progress, print the verdict and where report.json, report.html and
the artifacts are (all in ``--out``), stop the service.

Progress is a bar on a terminal and one line per step otherwise (no carriage returns in a log).

Exit status: 0 when the audit succeeded, 1 when it failed or was cancelled, 2 when the service
could not be started or reached. The service is stopped on every path, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from worker.engine.cli import progress_reporter, summary_lines
from worker.engine.runner import clear_outputs
from worker.engine.suites import SUITES

from .client import Client, ClientError, save_outputs, wait_for

DEMO = Path(__file__).resolve().parents[1] / "worker" / "engine" / "assets" / "demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(client: Client, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClientError(f"the service exited with status {proc.returncode}")
        try:
            client.json("GET", "/readyz")
            return
        except ClientError:
            time.sleep(0.5)
    raise ClientError(f"the service was not ready after {timeout:g} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the serve process (it stops its children), then make sure nothing is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def demo_body(model_id: str, n_samples: int, surrogate_id: str | None = None) -> dict[str, object]:
    """Every suite at its demo_params; the attacks suite's transfer part crafts on the surrogate."""
    suites: dict[str, dict[str, object]] = {name: dict(cls.demo_params) for name, cls in SUITES.items()}
    if surrogate_id is not None and "attacks" in suites:
        suites["attacks"]["transfer"] = {"model_id": surrogate_id}
    return {"model": model_id,
            "dataset": {"kind": "builtin", "name": "digits", "n_samples": n_samples, "seed": 0},
            "suites": suites, "gates": ["clean.top1 >= 0.9"], "label": "demo"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.demo")
    parser.add_argument("--home", default="var/demo-service", help="embedded store, broker and storage")
    parser.add_argument("--out", default="var/demo", help="where report.json, report.html and artifacts/ are "
                        "written (an earlier demo's files there are removed first)")
    parser.add_argument("--n-samples", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)

    home = Path(args.home).absolute()
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "ROBUSTAUDIT_HOME": str(home)}
    env.setdefault("ROBUSTAUDIT_DEVICE", "auto")
    log = open(home / "serve.log", "ab")
    print(f"starting the service on 127.0.0.1:{port} (log: {home / 'serve.log'})", file=sys.stderr)
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{port}",
                             "--api-workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    client = Client(f"http://127.0.0.1:{port}", os.environ.get("ROBUSTAUDIT_TOKEN"))
    try:
        wait_ready(client, proc, timeout=120)
        model = client.upload_model(DEMO / "digits_cnn.pt", DEMO / "digits_cnn.card.json")
        print(f"model {model['id']} (sha256 {model['sha256'][:12]})", file=sys.stderr)
        # the PGD-trained demo CNN as the surrogate of the transferability part (attacks 2g)
        surrogate = client.upload_model(DEMO / "digits_cnn_pgd.pt", DEMO / "digits_cnn_pgd.card.json")
        created = client.json("POST", "/v1/audits", demo_body(model["id"], args.n_samples, surrogate["id"]))
        print(f"audit {created['id']}: suites {sorted(SUITES)}", file=sys.stderr)
        bar = progress_reporter(sys.stderr)
        audit = wait_for(client, created["id"], timeout=args.timeout, poll=0.5, bar=bar)
        bar.close()
        out = Path(args.out)
        saved: list[tuple[str, Path]] = []
        if audit["status"] == "succeeded":  # fetched while the service is up; the page links to artifacts/
            clear_outputs(out)
            saved = save_outputs(client, audit, out, artifacts=True)
    except (ClientError, OSError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        stop(proc)
        log.close()
    if audit["status"] != "succeeded":
        print(f"audit {audit['status']}: {json.dumps(audit.get('error'))}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(audit["report"])))
    for what, where in saved:
        print(f"{what}: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
