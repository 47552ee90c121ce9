"""report.html: written by the CLI beside report.json, self-contained, verdict and gates first,
hostile names shown as text, plots drawn from report.json data, a bounded gallery."""

from __future__ import annotations

import copy
import html
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.report_fixture import GATES, HOSTILE_NAMES, fitted_tiny, run_fixture_audit
from worker.engine import cli
from worker.engine.api import audit
from worker.engine.html import GalleryLimits, render_report_html, write_report_html
from worker.engine.html.gallery import build_gallery
from worker.engine.html.plots import corruption_heatmap, fri_rates, generator_layers, modify_mimic, robust_accuracy
from worker.engine.html.render import PER_CLASS_ROWS, gate_margin, gate_rows, per_class_table
from worker.engine.humanize import fmt_num


class Page(HTMLParser):
    """Tags with their attributes, and the text, of a page."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def attr(self, tag: str, name: str) -> list[str]:
        return [a[name] or "" for t, a in self.tags if t == tag and name in a]

    @property
    def all_text(self) -> str:
        return "".join(self.text)


@pytest.fixture(scope="module")
def fixture_audit(tmp_path_factory) -> tuple[int, Path, dict[str, Any]]:
    code, out = run_fixture_audit(tmp_path_factory.mktemp("report_html"))
    return code, out, json.loads((out / "report.json").read_text())


def test_cli_writes_a_self_contained_page_beside_report_json(fixture_audit):
    code, out, report = fixture_audit
    assert code == 1 and report["verdict"] == "fail"  # the fixture's first gate fails
    text = (out / "report.html").read_text()
    page = Page(text)
    assert "http://" not in text and "https://" not in text
    tags = {t for t, _ in page.tags}
    assert not tags & {"script", "iframe", "object", "embed", "base", "form", "svg"}
    # the only <link> is the empty data: favicon (a browser asks for /favicon.ico otherwise)
    assert page.attr("link", "href") == ["data:,"]
    srcs = page.attr("img", "src")
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    hrefs = [h for h in page.attr("a", "href") if not h.startswith("#")]
    assert hrefs and all(h.startswith("artifacts/") for h in hrefs)
    assert all((out / h).is_file() for h in hrefs)  # relative to the page, beside its artifacts/
    listed = {a for entry in report["suites"].values() for a in entry["artifacts"]}
    assert listed <= set(hrefs)  # every artifact file is in the index


def test_verdict_first_then_every_gate_with_value_threshold_and_margin(fixture_audit):
    _, out, report = fixture_audit
    page = Page((out / "report.html").read_text())
    body = [t for t in page.tags if t[0] not in ("html", "head", "meta", "link", "title", "style")]
    assert body[1] == ("header", {"id": "verdict", "class": "verdict verdict-fail"})
    assert "Verdict: FAIL" in page.all_text
    rows = [a for t, a in page.tags if t == "tr" and "data-metric" in a]
    assert sorted(a["data-metric"] for a in rows) == sorted(g.split(">")[0].split("<")[0] for g in GATES)
    failed = [g for g in report["gates"] if not g["passed"]]
    assert failed and rows[0]["data-metric"] == failed[0]["metric"]  # failed gates first
    for g in failed:
        miss = fmt_num(g["threshold"] - g["value"])
        assert f"misses by {miss}" in page.all_text
        assert f"−{miss}" in page.all_text  # the table's margin column


def test_hostile_class_and_model_names_render_as_text(fixture_audit):
    _, out, _ = fixture_audit
    text = (out / "report.html").read_text()
    page = Page(text)
    for name in HOSTILE_NAMES:
        assert name in page.all_text, name  # shown, as text
    assert "<script>alert(1)</script>" not in text and html.escape("<script>alert(1)</script>") in text
    assert "<h1>injected</h1>" not in text
    assert not [a for t, a in page.tags if t == "img" and "onerror" in a]
    assert [t for t, _ in page.tags].count("h1") == 1  # the verdict's
    assert "tiny <b>model</b>" in page.all_text


def test_plots_have_titles_sample_counts_and_eps_as_people_read_it(fixture_audit):
    _, _, report = fixture_audit
    suites = report["suites"]
    ra = robust_accuracy(suites["attacks"], report["gates"])
    assert ra is not None and "n = 10 samples" in ra.title and ra.png.startswith(b"\x89PNG")
    assert "8/255" in ra.ticks and "0.1" in ra.ticks
    assert ra.thresholds == [("attacks.robust_accuracy.linf.eps_0p03137", ">=", 0.0)]
    assert b"matplotlib" not in ra.png  # no Software chunk with its URL
    for plot in (corruption_heatmap(suites["perturbation"]), generator_layers(suites["perturbation"]),
                 fri_rates(suites["fragile"]), modify_mimic(suites["attacks"])):
        assert plot is not None and "(n = " in plot.title and plot.png.startswith(b"\x89PNG")
    assert fri_rates(suites["fragile"]).ticks == ["0.8", "0.9"]
    assert corruption_heatmap(suites["clean"]) is None and robust_accuracy(suites["clean"], []) is None


def test_robust_accuracy_draws_only_gates_on_its_own_norm_and_budgets():
    leaf = {"value": 0.5, "unit": "fraction", "n": 7, "eps": 2 / 255, "ci95": [0.2, 0.8]}
    entry = {"metrics": {"robust_accuracy": {"linf": {"eps_0p007843": leaf}, "l2": {"eps_0p5": {**leaf, "eps": 0.5}}}}}
    gates = [{"metric": "attacks.robust_accuracy.linf.eps_0p007843", "op": ">=", "threshold": 0.4, "passed": True},
             {"metric": "attacks.robust_accuracy.l2.eps_0p5.ci95_low", "op": ">=", "threshold": 0.3, "passed": False},
             {"metric": "attacks.robust_accuracy.linf.eps_0p5", "op": ">=", "threshold": 0.1, "passed": True},
             {"metric": "clean.top1", "op": ">=", "threshold": 0.9, "passed": True}]
    plot = robust_accuracy(entry, gates)
    assert plot is not None and plot.ticks == ["2/255", "0.5"]
    assert [t[0] for t in plot.thresholds] == ["attacks.robust_accuracy.linf.eps_0p007843",
                                               "attacks.robust_accuracy.l2.eps_0p5.ci95_low"]
    assert "n = 7 samples" in plot.title


def test_mathtext_in_names_does_not_break_a_plot():
    bad = "$\\frac{1}{$"
    targeted = {"modify": {bad: {"value": 0.5, "n": 2}, "b": {"value": 0.2, "n": 2}},
                "mimic": {bad: {"value": 0.1, "n": 2}, "b": {"value": 0.6, "n": 2}},
                "success_rate": {"value": 0.3, "n": 4}}
    layers = {bad: {"success_rate": {"eps4": {"value": 1.0, "n": 2, "eps": 4.0}}}}
    entry = {"metrics": {"targeted": targeted, "generator_layers": layers}}
    drawn = modify_mimic(entry)
    assert drawn is not None and drawn.png.startswith(b"\x89PNG") and generator_layers(entry) is not None


def test_margins_and_gate_order():
    assert gate_margin(">=", 0.25, 0.5) == -0.25 and gate_margin("<", 0.1, 0.3) == pytest.approx(0.2)
    assert gate_margin("==", 1.0, 1.0) == 0 and gate_margin("==", 0.5, 1.0) == -0.5
    assert gate_margin(">=", None, 0.5) is None
    rows = gate_rows([{"metric": "a.x", "op": ">=", "threshold": 0.1, "value": 0.2, "passed": True, "status": "pass"},
                      {"metric": "a.y", "op": ">=", "threshold": 0.5, "value": 0.2, "passed": False, "status": "fail",
                       "baseline": 0.6, "delta": -0.4, "expression": "baseline - 0.1"}])
    assert [r["metric"] for r in rows] == ["a.y", "a.x"]
    assert rows[0]["baseline"] == 0.6 and rows[0]["delta"] == -0.4 and rows[0]["expression"] == "baseline - 0.1"


def test_baseline_and_delta_are_shown_when_the_gate_has_them(fixture_audit):
    _, out, report = fixture_audit
    changed = copy.deepcopy(report)
    changed["gates"][0].update(baseline=0.85, delta=-0.05, expression="baseline - 0.01")
    text = render_report_html(changed, out)
    page = Page(text)
    assert "<th>baseline</th><th>delta</th>" in text
    assert "baseline 0.85, delta -0.05" in " ".join(page.all_text.split())
    assert "baseline - 0.01" in page.all_text
    assert "<th>baseline</th>" not in render_report_html(report, out)  # no baseline: no column


def test_warnings_are_in_plain_words(fixture_audit):
    _, out, report = fixture_audit
    page = Page((out / "report.html").read_text())
    codes = [w["code"] for w in report["dataset"]["warnings"]]
    codes += [w["code"] for e in report["suites"].values() for w in e["warnings"]]
    assert "class_names_differ" in codes
    shown = [a["data-code"] for t, a in page.tags if t == "li" and "data-code" in a]
    assert shown == codes
    assert "labels were matched by position" in page.all_text


def test_gallery_is_bounded_and_says_what_it_left_out(fixture_audit):
    _, out, report = fixture_audit
    pngs = [a for e in report["suites"].values() for a in e["artifacts"] if a.endswith(".png")]
    assert len(pngs) > 3
    gallery = build_gallery(report["suites"], out, GalleryLimits(max_images=3))
    assert gallery.shown == 3 and gallery.left_out == len(pngs) - 3
    page = Page(render_report_html(report, out, limits=GalleryLimits(max_images=3)))
    assert len(page.attr("img", "src")) == 3 + sum(1 for t, a in page.tags if t == "figure"
                                                   and a.get("class") == "plot")
    assert f"{len(pngs) - 3} left out" in page.all_text
    tight = build_gallery(report["suites"], out, GalleryLimits(max_bytes=1))
    assert tight.shown == 0 and tight.left_out == len(pngs)


def test_perturbation_section_shows_corruption_examples(fixture_audit):
    """One image under each corruption at severities 1, 3 and 5, embedded where the suite's section is."""
    _, out, report = fixture_audit
    examples = [a for a in report["suites"]["perturbation"]["artifacts"] if "corruption_examples_" in a]
    assert examples == ["artifacts/perturbation/corruption_examples_noise.png",  # gaussian_noise
                        "artifacts/perturbation/corruption_examples_digital.png"]  # contrast
    text = (out / "report.html").read_text()
    section = text[text.index('id="suite-perturbation"'):text.index('id="files"')]
    for rel in examples:
        assert f'href="{rel}"><img src="data:image/png;base64,' in section
    assert "noise corruptions of the audit&#39;s first sample at severities 1, 3 and 5" in section


def test_gallery_embeds_only_real_pngs_inside_the_output_folder(tmp_path):
    (tmp_path / "artifacts" / "fragile").mkdir(parents=True)
    (tmp_path / "artifacts" / "fragile" / "fake.png").write_text("<svg onload=alert(1)>")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\nsecret")
    suites = {"fragile": {"artifacts": ["artifacts/fragile/fake.png", "artifacts/../secret.png",
                                        "artifacts/fragile/missing.png"]}}
    gallery = build_gallery(suites, tmp_path)
    assert gallery.shown == 0 and gallery.left_out == 3 and not gallery.cards
    assert gallery.files["fragile"][1] == ("artifacts/../secret.png", None)


def test_in_memory_api_writes_the_page_with_out(tmp_path):
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    report = audit(fitted_tiny(), x, torch.arange(6) % 10, gates=["clean.top1>=0"], out=tmp_path / "a",
                   mean=[0.5], std=[0.5])
    assert (tmp_path / "a" / "report.html").is_file() and report["verdict"] == "pass"
    audit(fitted_tiny(), x, torch.arange(6) % 10, out=tmp_path / "b", html=False)
    assert not (tmp_path / "b" / "report.html").exists() and (tmp_path / "b" / "report.json").exists()


def test_cli_without_jinja2_keeps_the_verdict_and_says_so(tmp_path, monkeypatch, capsys):
    import worker.engine.html as page_module

    def missing(*_: Any, **__: Any) -> Path:
        raise ModuleNotFoundError("No module named 'jinja2'", name="jinja2")

    monkeypatch.setattr(page_module, "write_report_html", missing)
    assert cli._write_html({}, str(tmp_path)) is None
    assert "report.html not written: the Python package 'jinja2' is missing" in capsys.readouterr().err


def test_write_is_atomic_and_replaces_an_old_page(tmp_path, fixture_audit):
    _, out, report = fixture_audit
    (tmp_path / "report.html").write_text("old")
    path = write_report_html(report, tmp_path)
    assert path == tmp_path / "report.html" and path.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left


def test_unreliable_gates_and_sanity_flags_are_explained(fixture_audit):
    _, out, report = fixture_audit
    changed = copy.deepcopy(report)
    changed["suites"]["attacks"]["warnings"].append(
        {"code": "zero_gradients", "message": "the input gradient is exactly zero for 3 of 10 samples",
         "details": {"samples": 3, "n": 10}})
    changed["suites"]["attacks"]["unreliable"] = {"flags": ["zero_gradients"], "metrics": ["robust_accuracy.linf"]}
    gate = changed["gates"][2]
    gate.update(status="unreliable", passed=False, flags=["zero_gradients"], accepted=False,
                reason="sanity flags ['zero_gradients'] invalidate gradient attacks")
    page = Page(render_report_html(changed, out))
    text = " ".join(page.all_text.split())
    assert "gradient attacks could not move them" in text  # the plain sentence for zero_gradients
    assert "UNRELIABLE" in text and "a sanity flag makes this number untrustworthy (zero_gradients)" in text
    assert "Sanity flags zero_gradients make 1 of this suite's numbers unreliable" in text
    assert "2 of 4 gates did not pass." in text


def test_no_gates_shows_a_neutral_band_not_a_pass(fixture_audit):
    _, _, report = fixture_audit
    report = {**copy.deepcopy(report), "suites": {"clean": report["suites"]["clean"]}}  # the band, not the plots
    text = render_report_html({**report, "gates": [], "verdict": "none"})
    page = Page(text)
    assert ("header", {"id": "verdict", "class": "verdict verdict-none"}) in page.tags
    assert "No verdict: no gates were set" in page.all_text
    assert "Nothing was checked against a threshold" in page.all_text
    assert "PASS" not in page.all_text and "Verdict:" not in page.all_text
    assert "<title>robustaudit: tiny <b>model</b> – NO VERDICT</title>" in html.unescape(text)
    assert ".verdict-none { background: var(--none); }" in text and "--none: #455a64" in text
    # a report written before the verdict "none" (schema 1.0) keeps what it said
    old = Page(render_report_html({**report, "gates": [], "verdict": "pass"}))
    assert "No gates were set: nothing was checked against a threshold." in old.all_text
    assert ("header", {"id": "verdict", "class": "verdict verdict-pass"}) in old.tags
    # a verdict the page does not know is never shown as a pass
    odd = Page(render_report_html({**report, "verdict": "maybe"}))
    assert ("header", {"id": "verdict", "class": "verdict verdict-fail"}) in odd.tags


def test_many_classes_stay_bounded():
    names = [f"class{i}" for i in range(500)]
    leaf = {"value": 0.5, "unit": "fraction", "n": 3}
    metrics = {"per_class": {c: leaf for c in names}}
    table = per_class_table("clean", metrics)
    assert table is not None and table["total"] == 500 and len(table["rows"]) == PER_CLASS_ROWS
    rates = {c: {"value": i / 500, "n": 3} for i, c in enumerate(names)}
    plot = modify_mimic({"metrics": {"targeted": {"modify": rates, "mimic": rates, "success_rate": leaf}}})
    assert plot is not None and plot.png.startswith(b"\x89PNG")
