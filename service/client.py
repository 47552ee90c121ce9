"""``robustaudit submit``: the CI-gate client. Uploads a model if given a file, submits an audit,
and with ``--wait`` polls with a progress bar (log lines when stderr is not a terminal). With
``--out DIR`` it saves report.json and report.html there, with ``--junit FILE`` one JUnit test
case per gate. Exit codes: 0 pass, 1 fail, 2 error (bad input, HTTP error, failed or cancelled
audit, timeout), 5 no verdict (the audit had no gates; 0 with ``--allow-no-gates``). Standard
library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.engine.cli import (
    EXIT_NO_VERDICT,
    NO_GATES_NOTE,
    ProgressBar,
    ProgressLog,
    add_allow_no_gates,
    progress_reporter,
    verdict_exit_code,
)
from worker.engine.errors import AuditInputError
from worker.engine.gates import Verdict
from worker.engine.junit import write_junit

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
        data = self.raw(method, path, body=body, content_type=content_type, headers=headers)
        return json.loads(data) if data else None

    def raw(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None,
            headers: Mapping[str, str] | None = None) -> bytes:
        """The answer's body as bytes (a page, a file); an HTTP error raises :class:`ClientError`."""
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
        return bytes(data)

    def json(self, method: str, path: str, payload: Any = None, **kw: Any) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        return self.request(method, path, body=body, content_type="application/json" if body else None, **kw)

    def upload_model(self, checkpoint: Path, card: Path) -> dict[str, Any]:
        """Upload a checkpoint and its card; an ``.onnx`` file's ``<name>.data`` beside it (where
        ``torch.onnx.export`` writes the weights) goes with it as the part ``external_data``."""
        boundary = uuid.uuid4().hex
        parts = []
        files = [("checkpoint", checkpoint), ("card", card)]
        data = checkpoint.with_name(checkpoint.name + ".data")
        if checkpoint.suffix == ".onnx" and data.is_file():
            files.append(("external_data", data))
        for field, path in files:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                         f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                         + path.read_bytes() + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        result: dict[str, Any] = self.request("POST", "/v1/models", body=body,
                                              content_type=f"multipart/form-data; boundary={boundary}")
        return result


def wait_for(client: Client, audit_id: str, *, timeout: float, poll: float = 1.0,
             bar: ProgressBar | ProgressLog | None = None) -> dict[str, Any]:
    """Poll until the audit is finished; the audit body. A log (not a terminal) gets a line when
    the status changes, and the bar's lines once a suite has started."""
    deadline = time.monotonic() + timeout
    shown: dict[str, float] = {}
    status = None
    while True:
        audit: dict[str, Any] = client.json("GET", f"/v1/audits/{audit_id}")
        if isinstance(bar, ProgressLog) and audit["status"] != status:
            bar.note(f"audit {audit_id} {audit['status']}")
        status = audit["status"]
        if bar is not None:
            for suite, fraction in audit.get("progress", {}).items():
                first = suite not in shown and not isinstance(bar, ProgressLog)  # a log starts a suite at > 0
                if shown.get(suite) != fraction and (fraction > 0 or first):
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
    if args.baseline:
        body["baseline"] = args.baseline
    return body


def cmd_submit(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("ROBUSTAUDIT_URL", "http://127.0.0.1:8000")
    client = Client(url, args.token or os.environ.get("ROBUSTAUDIT_TOKEN") or None)
    t0 = time.monotonic()
    try:
        if (args.out or args.junit) and not args.wait:
            raise ClientError("--out and --junit need --wait (they write the finished audit's results)")
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
        bar = progress_reporter(sys.stderr, args.quiet)
        audit = wait_for(client, created["id"], timeout=args.timeout, bar=bar)
        bar.close()
        saved = (save_outputs(client, audit, Path(args.out), artifacts=args.artifacts)
                 if args.out and audit["status"] == "succeeded" else [])
    except (ClientError, AuditInputError, OSError, ValueError) as exc:
        print(f"robustaudit submit: error: {exc}", file=sys.stderr)
        return _junit_error(args, str(exc), t0)
    except Exception:  # exit 1 means "a gate failed": a crash must never look like it
        traceback.print_exc()
        print("robustaudit submit: internal error", file=sys.stderr)
        return _junit_error(args, "internal error of the client (see the log)", t0)
    if audit["status"] != "succeeded":
        err = audit.get("error") or {}
        message = f"audit {audit['id']} {audit['status']}: {err.get('code')}: {err.get('message')}"
        print(message, file=sys.stderr)
        return _junit_error(args, message, t0)
    if args.junit:
        write_junit(args.junit, audit["report"], seconds=time.monotonic() - t0)
    if not args.quiet:
        from worker.engine.cli import summary_lines

        print("\n".join(summary_lines(audit["report"])))
        for what, where in saved:
            print(f"{what}: {where}")
        if args.junit:
            print(f"junit: {args.junit}")
    verdict = str(audit["verdict"])
    if not (audit.get("report") or {}).get("gates"):  # a server older than the verdict "none" says "pass"
        verdict = Verdict.NONE.value
    code = verdict_exit_code(verdict, args.allow_no_gates)
    if code == EXIT_NO_VERDICT:
        print(f"robustaudit submit: audit {audit['id']}: {NO_GATES_NOTE}", file=sys.stderr)
    return code


def save_outputs(client: Client, audit: Mapping[str, Any], out: Path, *,
                 artifacts: bool = False) -> list[tuple[str, Path]]:
    """report.json and report.html of a succeeded audit in ``out`` (and with ``artifacts`` its
    files under ``out/artifacts/``); what was written, for the summary.

    The page comes from ``GET /v1/audits/{id}/report.html``; a server without it (an older
    one) costs the page, not the verdict: a note on stderr says so.
    """
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.json"
    report_path.write_text(json.dumps(audit["report"], indent=2) + "\n")
    saved = [("report", report_path)]
    try:
        page = client.raw("GET", f"/v1/audits/{audit['id']}/report.html")
    except ClientError as exc:
        print(f"robustaudit submit: report.html not saved: {exc}", file=sys.stderr)
    else:
        html_path = out / "report.html"
        html_path.write_bytes(page)
        saved.append(("report for people", html_path))
    if artifacts:
        count = save_artifacts(client, str(audit["id"]), out)
        saved.append((f"artifacts ({count} files)", out / "artifacts"))
    return saved


def save_artifacts(client: Client, audit_id: str, out: Path) -> int:
    """Every artifact file of the audit under ``out/artifacts/`` (where report.html links to them);
    how many. A name that would leave that folder is skipped."""
    root = (out / "artifacts").resolve()
    listing = client.json("GET", f"/v1/audits/{audit_id}/artifacts")
    count = 0
    for item in listing.get("items", []):
        target = (root / str(item["name"])).resolve()
        if not target.is_relative_to(root):
            print(f"robustaudit: artifact {str(item['name'])[:80]!r} skipped: its name leaves the folder",
                  file=sys.stderr)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.raw("GET", urllib.parse.urlsplit(str(item["url"])).path))
        count += 1
    return count


def _junit_error(args: argparse.Namespace, message: str, t0: float) -> int:
    """An audit that did not finish still leaves a JUnit file that says why."""
    if getattr(args, "junit", None):
        try:
            write_junit(args.junit, None, error=message, seconds=time.monotonic() - t0)
        except OSError as exc:
            print(f"robustaudit submit: cannot write --junit {args.junit}: {exc}", file=sys.stderr)
    return EXIT_ERROR


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
    p.add_argument("--baseline", metavar="AUDIT_ID", help="a succeeded audit that gates written against a baseline "
                   "compare with ('clean.top1 >= baseline - 0.05')")
    p.add_argument("--wait", action="store_true", help="poll until done; exit 0 pass, 1 fail, 2 error, "
                   f"{EXIT_NO_VERDICT} no verdict (no gates)")
    p.add_argument("--out", metavar="DIR", help="with --wait: save report.json and report.html in DIR")
    p.add_argument("--artifacts", action="store_true", help="with --out: also save every artifact file under "
                   "DIR/artifacts/ (report.html links to them)")
    p.add_argument("--junit", metavar="FILE", help="with --wait: write JUnit XML, one test case per gate")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (with --wait)")
    p.add_argument("--url", help="server URL (default $ROBUSTAUDIT_URL or http://127.0.0.1:8000)")
    p.add_argument("--token", help="API token (default $ROBUSTAUDIT_TOKEN)")
    p.add_argument("--quiet", action="store_true")
    add_allow_no_gates(p)
    p.set_defaults(func=cmd_submit)
