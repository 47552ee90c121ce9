"""The report reads itself (issue 18, on a 1000-class model and 17 photos of 5 classes): minimal
perturbations in grey levels with a note below one, the sample's classes beside the model's,
suitability flags as warnings that say what to change (never "None" beside them), a left-out plot
with its note in its place, and corruption examples of one image in the perturbation section."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.tiny import random_samples, tiny_classifier
from worker.engine.cli import summary_lines
from worker.engine.html import render_report_html
from worker.engine.humanize import below_grey_level, fmt_levels, fmt_norm, grey_level_note, sample_size_text
from worker.engine.runner import run_suite
from worker.engine.suites import get_suite
from worker.engine.suites.attacks.common import Sample, Sanity
from worker.engine.suites.attacks.suitability import suitability_warnings
from worker.engine.suites.base import ArtifactStore, SuiteContext

MINIMAL = 0.0003065  # the median minimal L-inf perturbation measured on EfficientNet-Lite0


def leaf(value: float | None, unit: str = "fraction", n: int = 17, **extra: Any) -> dict[str, Any]:
    return {"value": value, "unit": unit, "n": n, "description": "a number", **extra}


def photo_report(warnings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A report shaped like the issue's: 17 photos of 5 of 1000 classes, every image falling at every
    budget, 4 with a low margin, the targeted rates too thin to plot."""
    classes = [{"name": f"class {i}", "n": 0} for i in range(1000)]
    for i, n in ((281, 4), (967, 3), (872, 3), (665, 4), (657, 3)):
        classes[i]["n"] = n
    thin = {"modify": {"class 281": leaf(1.0, n=8)}, "mimic": {"class 3": leaf(1.0, n=1)},
            "success_rate": leaf(1.0, n=8), "spearman": leaf(None, "correlation", 0)}
    attacks = {
        "status": "completed", "seconds": 12.5, "params": {}, "artifacts": [], "warnings": warnings or [],
        "metrics": {
            "robust_accuracy": {"linf": {"eps_0p003922": leaf(0.0, eps=1 / 255)}},
            "minimal_perturbation": {"linf": {"median": leaf(MINIMAL, "linf_norm"), "found": leaf(1.0)},
                                     "l2": {"median": leaf(0.0123, "l2_norm"), "found": leaf(1.0)}},
            "suitability": {"flagged": leaf(17, "count"), "flags": {
                "falls_at_every_budget": leaf(17, "count"), "falls_at_no_budget": leaf(0, "count"),
                "low_margin": leaf(4, "count"), "misclassified": leaf(0, "count")}},
            "targeted": thin},
    }
    return {"schema_version": "1.0", "verdict": "fail",
            "audit": {"spec": {}, "started": "2026-12-01T00:00:00Z", "finished": "2026-12-01T00:01:00Z"},
            "model": {"sha256": "ab" * 32, "name": "efficientnet-lite0", "format": "state_dict", "arch": "timm",
                      "num_classes": 1000, "params": 4_652_008, "input_size": [3, 224, 224]},
            "dataset": {"reference": {"kind": "imagefolder"}, "n_samples": 17, "classes": classes, "warnings": []},
            "environment": {"device": "cpu", "device_name": "x86_64", "torch": "2.15.0", "robustaudit": "0.2.0"},
            "suites": {"attacks": attacks},
            "gates": [{"metric": "attacks.minimal_perturbation.linf.median", "op": ">=", "threshold": 0.001,
                       "value": MINIMAL, "passed": False, "status": "fail"}]}


def test_sizes_in_grey_levels():
    assert fmt_levels(MINIMAL) == "0.078/255" and fmt_levels(8 / 255) == "8/255"
    assert fmt_norm(MINIMAL, "linf_norm") == "0.078/255"
    assert fmt_norm(0.0123, "l2_norm") == "0.0123 (3.14/255)"
    assert fmt_norm(0.5, "fraction") == "0.5" and fmt_norm(None, "linf_norm") == "–"
    assert below_grey_level(MINIMAL, "linf_norm") and not below_grey_level(2 / 255, "linf_norm")
    assert not below_grey_level(0.001, "fraction") and not below_grey_level(0.0, "l2_norm")
    assert "below one grey level (1/255)" in (grey_level_note("x", MINIMAL, "linf_norm") or "")
    assert grey_level_note("x", 0.01, "linf_norm") is None


def test_the_sample_classes_stand_beside_the_models():
    report = photo_report()
    assert sample_size_text(report) == "17 samples of 5 classes; the model has 1000"
    every = {**report, "model": {**report["model"], "num_classes": 5}}
    assert sample_size_text(every) == "17 samples of 5 classes"


def test_summary_reads_minimal_perturbations_in_grey_levels():
    lines = summary_lines(photo_report())
    text = "\n".join(lines)
    assert lines[0] == f"model {'ab' * 6} on 17 samples of 5 classes; the model has 1000 (cpu)"
    assert "minimal_perturbation.linf.median=0.078/255" in text and "0.0003065" not in text.split("gate")[0]
    assert "minimal_perturbation.l2.median=0.0123 (3.14/255)" in text
    notes = [line for line in lines if line.startswith("    note:")]
    assert len(notes) == 1 and "attacks.minimal_perturbation.linf.median = 0.078/255 is below one grey" in notes[0]
    gate = next(line for line in lines if "gate attacks.minimal_perturbation" in line)
    assert "value 0.0003065 (0.078/255)" in gate  # beside the threshold as written


def test_the_page_reads_the_same_and_names_every_flag():
    old = photo_report()  # an earlier engine: flag counts, no warnings
    page = render_report_html(old)
    assert "17 samples of 5 classes; the model has 1000" in page and "samples in 1000 classes" not in page
    assert "0.078/255" in page and "below one grey level" in page
    warnings = page[page.index('id="warnings"'):page.index('id="setup"')]
    assert "None: no suite raised" not in warnings
    assert 'data-code="falls_at_every_budget"' in warnings and 'data-code="low_margin"' in warnings
    assert 'data-code="falls_at_no_budget"' not in warnings  # no image carries it
    # the engine's own warnings are shown once, not doubled by the counts
    own = [{"code": "falls_at_every_budget", "message": "every one of the 17 attacked images fall at every linf budget",
            "details": {}}]
    page = render_report_html(photo_report(own))
    assert page.count('data-code="falls_at_every_budget"') == 1 and "every one of the 17" in page
    clean = copy.deepcopy(old)
    clean["suites"]["attacks"]["metrics"]["suitability"]["flags"] = {
        k: leaf(0, "count") for k in ("falls_at_every_budget", "falls_at_no_budget", "low_margin")}
    assert "None: no suite raised a warning" in render_report_html(clean)


def test_a_plot_left_out_says_why_in_its_place():
    report = photo_report()
    report["suites"]["attacks"]["metadata"] = {"targeted": {"plot_note": "modify/mimic plot left out: 0 classes"}}
    page = render_report_html(report)
    figure = page[page.index('class="plot plot-left-out"'):]
    assert figure.index("modify/mimic plot left out: 0 classes") < figure.index("</figure>")
    assert "Modify against mimic per class" in figure[:figure.index("</figure>")]


def attacked(sid: str, falls: list[bool], margin: float = 0.9, attack: str = "pgd") -> Sample:
    """A correctly classified sample that fell (True) or not to ``attack`` at each budget."""
    return Sample(id=sid, label=0, correct=True, margin=margin, topk=[0, 1],
                  sanity=Sanity(False, False, False, False),
                  attacks={"linf": {"success": {attack: falls}, "minimal": None}})


PARAMS = {"norms": ["linf"], "linf_eps": [1 / 255, 4 / 255], "attacks": ["pgd"], "suitability_margin": 0.1,
          "cascade": True}


def warned(records: list[Sample], metrics: dict[str, Any] | None = None, **params: Any) -> dict[str, dict[str, Any]]:
    return {w["code"]: w for w in suitability_warnings(records, {**PARAMS, **params}, metrics or {})}


def test_every_image_falling_at_every_budget_asks_for_smaller_ones():
    records = [attacked(f"s{i}", [True, True], margin=0.05 if i < 2 else 0.9) for i in range(5)]
    median = {"minimal_perturbation": {"linf": {"median": {"value": MINIMAL}}}}
    got = warned(records, median)
    every = got["falls_at_every_budget"]
    assert every["message"].startswith("every one of the 5 attacked images fall at every linf budget (1/255 to 4/255)")
    assert "tell nothing" in every["message"] and "around the median minimal linf perturbation, 0.078/255" in every[
        "message"]
    assert every["details"]["suggested_eps"] == pytest.approx([MINIMAL / 2, MINIMAL, 2 * MINIMAL], rel=1e-2)
    assert "attacks.linf_eps=[0.000153, 0.000307, 0.000613]" in every["message"]
    assert got["low_margin"]["details"] == {"images": 2, "n": 5, "margin": 0.1}
    assert "falls_at_no_budget" not in got
    # without a minimal perturbation the advice goes below the smallest budget
    assert "below the smallest, 1/255" in warned(records)["falls_at_every_budget"]["message"]


def test_images_falling_at_no_budget_ask_for_larger_ones_or_a_gradient_free_attack():
    records = [attacked(f"s{i}", [False, False]) for i in range(3)] + [attacked("s9", [False, True])]
    got = warned(records)
    none = got["falls_at_no_budget"]
    assert none["message"].startswith("3 of 4 attacked images fall at no linf budget") and "most of them" in none[
        "message"]
    assert "larger budgets (above 4/255)" in none["message"] and "'square'" in none["message"]
    square = warned([attacked("s", [False, False], attack="square")], attacks=["square"])["falls_at_no_budget"]
    assert "the gradient-free square failed too" in square["message"]
    assert set(got) == {"falls_at_no_budget"} and warned([attacked("s", [False, True])]) == {}


def perturbation(tmp_path, shards: int, examples: bool = True) -> tuple[dict[str, Any], list[str]]:
    clf, samples = tiny_classifier(), random_samples(4)
    ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(tmp_path / "artifacts"), seed=1)
    params = get_suite("perturbation").validate_params({
        "corruptions": {"names": ["gaussian_noise", "contrast"], "severities": [1], "examples": examples},
        "geometric": {"enabled": False}, "generator_layers": {"enabled": False}})
    entry = run_suite("perturbation", params, ctx, samples, shards=shards)
    files = sorted(p.name for p in (tmp_path / "artifacts").rglob("*.png"))
    return entry, files


def test_corruption_examples_are_one_image_in_any_sharding(tmp_path):
    one, files = perturbation(tmp_path / "one", shards=1)
    three, files3 = perturbation(tmp_path / "three", shards=3)
    want = ["artifacts/perturbation/corruption_examples_noise.png",
            "artifacts/perturbation/corruption_examples_digital.png"]
    assert one["artifacts"] == three["artifacts"] == want
    assert files == files3 == sorted(p.rsplit("/", 1)[1] for p in want)  # drawn once, by the first sample's shard
    assert one["metrics"] == three["metrics"]
    off, none = perturbation(tmp_path / "off", shards=1, examples=False)
    assert off["artifacts"] == [] and none == [] and off["metrics"] == one["metrics"]
