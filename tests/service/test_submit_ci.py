"""``robustaudit submit`` as a CI step over real HTTP: --baseline, --wait --out DIR (report.json and
report.html), --junit, and progress as log lines when stderr is not a terminal."""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ET

import pytest
from werkzeug.serving import make_server

from service.app import create_app
from service.cli import main
from tests.service.conftest import DEMO, TOKENS
from worker.tasks import execute_audit


class RunningDispatcher:
    """Runs each audit once, in a thread, as a worker would take it from the broker."""

    def __init__(self, config) -> None:
        self.config, self.seen, self.threads = config, set(), []

    def send(self, audit_id: str) -> None:
        if audit_id in self.seen:  # fan-out copies: one worker is enough here
            return
        self.seen.add(audit_id)
        thread = threading.Thread(target=execute_audit, args=(self.config, audit_id), daemon=True)
        thread.start()
        self.threads.append(thread)


@pytest.fixture()
def server(config, store):
    dispatcher = RunningDispatcher(config)
    app = create_app(config, dispatcher=dispatcher, store=store)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    for t in dispatcher.threads:
        t.join(timeout=60)


def submit(url, *args):
    return main(["submit", "--url", url, "--token", TOKENS["alice"], "--timeout", "180", "--model",
                 str(DEMO / "digits_cnn.pt"), "--dataset", "builtin:digits", "--n-samples", "20", *args])


def test_submit_wait_out_junit_and_baseline(server, tmp_path, capsys):
    first = tmp_path / "first"
    assert submit(server, "--wait", "--out", str(first), "--artifacts", "--gate", "clean.top1 >= 0.5",
                  "--suite", "fragile", "--set", "fragile.region_fractions=[0.9]") == 0
    captured = capsys.readouterr()
    report = json.loads((first / "report.json").read_text())
    assert report["verdict"] == "pass"
    page = (first / "report.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and "clean.top1" in page
    # not a terminal: one line per step, no carriage returns, and where the files are
    assert "\r" not in captured.err and "\r" not in captured.out
    log = captured.err.splitlines()
    assert any("clean: finished" in line for line in log) and any(line.endswith(" succeeded") for line in log)
    assert f"report: {first / 'report.json'}" in captured.out
    assert f"report for people: {first / 'report.html'}" in captured.out
    baseline_id = log[0].split()[1]  # "audit ID queued"
    files = sorted(p.relative_to(first / "artifacts").as_posix() for p in (first / "artifacts").rglob("*")
                   if p.is_file())
    assert files and files == sorted(_names(report))
    assert f"artifacts ({len(files)} files): {first / 'artifacts'}" in captured.out

    junit = tmp_path / "junit.xml"
    code = submit(server, "--wait", "--quiet", "--baseline", baseline_id, "--junit", str(junit),
                  "--gate", "clean.top1 >= baseline - 0.05", "--gate", "clean.top1 > baseline")
    assert code == 1
    root = ET.parse(junit).getroot()
    names = [c.get("name") for c in root.iter("testcase")]
    assert names == ["clean.top1 >= baseline - 0.05", "clean.top1 > baseline"]
    (failure,) = root.iter("failure")
    assert f"threshold {round(report['suites']['clean']['metrics']['top1']['value'], 4):g}" in failure.get("message")
    assert "delta +0" in failure.get("message")


def test_submit_refusals_write_junit_and_need_wait(server, tmp_path, capsys):
    junit = tmp_path / "junit.xml"
    assert submit(server, "--wait", "--quiet", "--junit", str(junit), "--gate", "clean.top1 >= baseline") == 2
    (error,) = ET.parse(junit).getroot().iter("error")
    assert "baseline" in error.get("message")
    assert submit(server, "--out", str(tmp_path / "x")) == 2
    assert "need --wait" in capsys.readouterr().err


def _names(report):
    """The artifact files the report lists, as the server names them (relative to artifacts/)."""
    return [str(a).removeprefix("artifacts/") for entry in report["suites"].values()
            for a in entry.get("artifacts") or []]


def test_submit_without_gates_has_no_verdict_exit_5_unless_allowed(server, tmp_path, capsys):
    junit = tmp_path / "junit.xml"
    once = ("--wait", "--quiet", "--idempotency-key", "no-gates-1")
    assert submit(server, *once, "--junit", str(junit)) == 5
    err = capsys.readouterr().err
    assert "no verdict: no gates were set" in err and "--allow-no-gates" in err
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("1", "0", "1")
    (skipped,) = root.iter("skipped")
    assert "no gates were set" in skipped.get("message")
    # the same audit again (same key, same body), accepted without gates this time
    assert submit(server, *once, "--allow-no-gates") == 0
    assert "no verdict" not in capsys.readouterr().err
