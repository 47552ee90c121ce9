"""``robustaudit submit``: the CI-gate client. Uploads a model if given a file, submits an audit,
and with ``--wait`` polls with a progress bar. Exit codes: 0 pass, 1 fail, 2 error (bad
input, HTTP error, failed or cancelled audit, timeout). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.engine.cli import ProgressBar
from worker.engine.errors import AuditInputError

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


class ClientError(Exception):
    """An HTTP or protocol error; the message is the server's error body when there is one."""


class Client:
    """A small REST client.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        token: bearer token, or None in open mode.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 120.0) -> None:
        self.base_url, self.token, self.timeout = base_url.rstrip("/"), token, timeout

    def request(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None,
                headers: Mapping[str, str] | None = None) -> Any:
        req = urllib.request.Request(self.base_url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)
                msg = f"{err.get('code')}: {err.get('message')}"
                if err.get("details"):
                    msg += f" {json.dumps(err['details'])}"
            except (json.JSONDecodeError, AttributeError):
                msg = raw[:300].decode(errors="replace")
            raise ClientError(f"HTTP {exc.code} {method} {path}: {msg}") from None
        except urllib.error.URLError as exc:
            raise ClientError(f"cannot reach {self.base_url}: {exc.reason}") from None
        return json.loads(data) if data else None

    def json(self, method: str, path: str, payload: Any = None, **kw: Any) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        return self.request(method, path, body=body, content_type="application/json" if body else None, **kw)

    def upload_model(self, checkpoint: Path, card: Path) -> dict[str, Any]:
        boundary = uuid.uuid4().hex
        parts = []
        for field, path in (("checkpoint", checkpoint), ("card", card)):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                         f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                         + path.read_bytes() + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        result: dict[str, Any] = self.request("POST", "/v1/models", body=body,
                                              content_type=f"multipart/form-data; boundary={boundary}")
        return result


def wait_for(client: Client, audit_id: str, *, timeout: float, poll: float = 1.0,
             bar: ProgressBar | None = None) -> dict[str, Any]:
    """Poll until the audit is finished; the audit body."""
    deadline = time.monotonic() + timeout
    shown: dict[str, float] = {}
    while True:
        audit: dict[str, Any] = client.json("GET", f"/v1/audits/{audit_id}")
        if bar is not None:
            for suite, fraction in audit.get("progress", {}).items():
                if shown.get(suite) != fraction and (fraction > 0 or suite not in shown):
                    bar(suite, fraction)
                    shown[suite] = fraction
        if audit["status"] in ("succeeded", "failed", "cancelled"):
            return audit
        if time.monotonic() > deadline:
            raise ClientError(f"audit {audit_id} still {audit['status']} after {timeout:g} s")
        time.sleep(poll)


def build_body(args: argparse.Namespace, model_id: str) -> dict[str, Any]:
    suites: dict[str, Any] = {}
    if args.config:
        body = json.loads(Path(args.config).read_text())
    else:
        body = {}
    suites = dict(body.get("suites") or {})
    for name in args.suite:
        suites.setdefault(name, {})
    for item in args.set:
        key, _, value = item.partition("=")
        suite, _, param = key.partition(".")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        suites[suite] = {**(suites.get(suite) or {}), param: parsed}
    dataset: Any = args.dataset or body.get("dataset")
    if isinstance(dataset, str) and args.n_samples is not None:
        from worker.engine.datasets import DatasetRef

        dataset = DatasetRef.parse(dataset).to_dict()
    if isinstance(dataset, dict):
        for key, value in (("n_samples", args.n_samples), ("seed", args.seed)):
            if value is not None:
                dataset = {**dataset, key: value}
    body.update({"model": model_id, "dataset": dataset, "suites": suites,
                 "gates": list(body.get("gates", [])) + list(args.gate)})
    if args.label:
        body["label"] = args.label
    return body


def cmd_submit(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("ROBUSTAUDIT_URL", "http://127.0.0.1:8000")
    client = Client(url, args.token or os.environ.get("ROBUSTAUDIT_TOKEN") or None)
    try:
        model_id = args.model
        path = Path(args.model)
        if path.is_file():
            card = Path(args.card) if args.card else path.with_name(path.stem + ".card.json")
            if not card.is_file():
                raise ClientError(f"model card {card} not found; pass --card")
            model_id = client.upload_model(path, card)["id"]
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
        created = client.json("POST", "/v1/audits", build_body(args, model_id), headers=headers)
        print(f"audit {created['id']} {created['status']}", file=sys.stderr)
        if not args.wait:
            print(created["id"])
            return EXIT_PASS
        bar = ProgressBar(sys.stderr, enabled=sys.stderr.isatty() and not args.quiet)
        audit = wait_for(client, created["id"], timeout=args.timeout, bar=bar)
        bar.close()
    except (ClientError, AuditInputError, OSError, ValueError) as exc:
        print(f"robustaudit submit: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception:  # exit 1 means "a gate failed": a crash must never look like it
        traceback.print_exc()
        print("robustaudit submit: internal error", file=sys.stderr)
        return EXIT_ERROR
    if audit["status"] != "succeeded":
        err = audit.get("error") or {}
        print(f"audit {audit['id']} {audit['status']}: {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return EXIT_ERROR
    if not args.quiet:
        from worker.engine.cli import summary_lines

        print("\n".join(summary_lines(audit["report"])))
    return EXIT_PASS if audit["verdict"] == "pass" else EXIT_FAIL


def add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("submit", help="submit an audit to a server (ROBUSTAUDIT_URL); a deployment gate")
    p.add_argument("--model", required=True, help="a registered model id, or a checkpoint file to upload")
    p.add_argument("--card", help="model card of an uploaded checkpoint (default: <stem>.card.json beside it)")
    p.add_argument("--dataset", help="dataset reference, e.g. builtin:digits")
    p.add_argument("--n-samples", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--suite", action="append", default=[], help="suite to run (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="SUITE.PARAM=JSON")
    p.add_argument("--gate", action="append", default=[], help="e.g. 'clean.top1>=0.9' (repeatable)")
    p.add_argument("--config", help="a JSON audit body; flags add to it")
    p.add_argument("--label")
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="poll until done; exit 0 pass, 1 fail, 2 error")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (with --wait)")
    p.add_argument("--url", help="server URL (default $ROBUSTAUDIT_URL or http://127.0.0.1:8000)")
    p.add_argument("--token", help="API token (default $ROBUSTAUDIT_TOKEN)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_submit)
