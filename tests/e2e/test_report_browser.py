"""report.html in a real headless browser: Debian's chromium, driven by playwright.

The page of a tiny audit with every suite (and hostile class names) renders with no console
error, no page error, no script run and no request beyond the file itself and its data: URIs;
it shows the verdict and every gate. Skipped where chromium or playwright is missing
(``make install`` installs both).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.report_fixture import HOSTILE_NAMES, run_fixture_audit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")]


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    code, out = run_fixture_audit(tmp_path_factory.mktemp("browser"))
    assert code == 1  # the fixture has one failing gate
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


def test_page_renders_without_errors_and_shows_verdict_and_every_gate(audited, browser):
    out, report = audited
    page = browser.new_page()
    console, errors, dialogs, requests = [], [], [], []
    page.on("console", lambda m: console.append((m.type, m.text)))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: requests.append(r.url))
    page.goto((out / "report.html").as_uri(), wait_until="load")

    assert [c for c in console if c[0] in ("error", "warning")] == [] and errors == []
    assert dialogs == []  # no class name ran as script
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert page.evaluate("document.scripts.length") == 0

    verdict = page.locator("#verdict")
    assert verdict.is_visible() and page.locator("#verdict-value").inner_text() == "FAIL"
    box = verdict.bounding_box()
    assert box is not None and box["y"] < 50  # the verdict is the first thing on the page
    for gate in report["gates"]:
        row = page.locator(f'tr.gate[data-metric="{gate["metric"]}"]')
        assert row.count() == 1 and row.is_visible(), gate["metric"]
        assert ("FAIL" if not gate["passed"] else "PASS") in row.inner_text()

    # every embedded image decoded (a broken data: URI has naturalWidth 0)
    widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths)
    page.locator("#suite-clean details.per-class summary").click()  # open it, as a reader would
    classes = page.locator("#suite-clean .class-name").all_inner_texts()
    assert classes == HOSTILE_NAMES  # shown as text, exactly as the card wrote them
    page.close()


def test_an_audit_without_gates_shows_a_neutral_band(audited, browser, tmp_path):
    from worker.engine.html import render_report_html

    _, report = audited
    page_file = tmp_path / "report.html"
    bare = {**report, "suites": {"clean": report["suites"]["clean"]}, "gates": [], "verdict": "none"}
    page_file.write_text(render_report_html(bare))
    page = browser.new_page()
    page.goto(page_file.as_uri(), wait_until="load")
    band = page.locator("#verdict")
    assert band.is_visible() and page.locator("#verdict-value").inner_text() == "No verdict"
    assert "no gates were set" in band.inner_text()
    colour = band.evaluate("e => getComputedStyle(e).backgroundColor")
    assert colour == "rgb(69, 90, 100)", colour  # the neutral grey, neither the pass green nor the fail red
    page.close()
