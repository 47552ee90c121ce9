"""The CLI as a CI step: --baseline gates, compare, --junit, progress lines for a log, rounded summaries."""

import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from tests.tiny import TinyNet
from worker.engine.cli import EXIT_NO_VERDICT, ProgressLog, main


@pytest.fixture()
def tiny_model(tmp_path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(TinyNet(1, 10, seed=1))
    path = tmp_path / "tiny.pt"
    scripted.save(str(path))
    (tmp_path / "tiny.card.json").write_text(json.dumps({
        "name": "tiny", "format": "torchscript", "num_classes": 10, "input_size": [1, 32, 32],
        "mean": [0.5], "std": [0.5]}))
    return path


def run(tiny_model, out, *args, quiet=True):
    code = main(["audit", *(["--quiet"] if quiet else []), "--model", str(tiny_model), "--dataset", "builtin:digits",
                 "--out", str(out), *args])
    path = Path(out) / "report.json"
    return code, json.loads(path.read_text()) if path.exists() else None


@pytest.fixture()
def baseline(tiny_model, tmp_path, data_root) -> Path:
    code, report = run(tiny_model, tmp_path / "base", "--n-samples", "40", "--seed", "1")
    assert code == EXIT_NO_VERDICT and report["verdict"] == "none"  # a baseline needs no gates of its own
    return tmp_path / "base" / "report.json"


def test_baseline_gates_resolve_against_the_baseline_report(tiny_model, tmp_path, baseline, report_validator):
    base = json.loads(baseline.read_text())["suites"]["clean"]["metrics"]
    junit = tmp_path / "ci" / "gates.xml"
    code, report = run(tiny_model, tmp_path / "new", "--n-samples", "30", "--baseline", str(baseline),
                       "--gate", "clean.top1 >= baseline - 1", "--gate", "clean.ece <= baseline * 0",
                       "--gate", "clean.top1.ci95_low >= 0", "--junit", str(junit))
    assert code == 1
    report_validator.validate(report)
    loose, strict, interval = report["gates"]
    top1, ece = report["suites"]["clean"]["metrics"]["top1"], report["suites"]["clean"]["metrics"]["ece"]
    assert loose["passed"] and loose["baseline"] == base["top1"]["value"]
    assert loose["threshold"] == pytest.approx(base["top1"]["value"] - 1)
    assert loose["delta"] == pytest.approx(top1["value"] - base["top1"]["value"])
    assert not strict["passed"] and strict["threshold"] == 0 and strict["value"] == ece["value"]
    assert interval["value"] == top1["ci95"][0] and top1["ci95_method"] == "wilson"
    assert report["audit"]["spec"]["baseline"]["source"] == str(baseline)
    # JUnit: one case per gate; the failure says value and threshold
    root = ET.parse(junit).getroot()
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["clean.top1 >= baseline - 1", "clean.ece <= baseline * 0",
                                              "clean.top1.ci95_low >= 0"]
    assert root.get("tests") == "3" and root.get("failures") == "1"
    (failure,) = root.iter("failure")
    assert failure.get("message").startswith("value ") and "threshold 0" in failure.get("message")
    assert "baseline * 0" in failure.get("message")


def test_baseline_gate_without_a_baseline_is_refused_before_running(tiny_model, tmp_path, data_root, capsys):
    junit = tmp_path / "gates.xml"
    code, report = run(tiny_model, tmp_path / "out", "--gate", "clean.top1 >= baseline - 0.05", "--junit", str(junit))
    assert code == 2 and report is None
    assert "--baseline REPORT.json" in capsys.readouterr().err
    (error,) = ET.parse(junit).getroot().iter("error")
    assert "written against a baseline" in error.get("message")


def test_baseline_that_lacks_the_metric_fails_the_gate_with_a_reason(tiny_model, tmp_path, baseline):
    data = json.loads(baseline.read_text())
    del data["suites"]["clean"]["metrics"]["ece"]
    trimmed = tmp_path / "trimmed.json"
    trimmed.write_text(json.dumps(data))
    code, report = run(tiny_model, tmp_path / "out", "--n-samples", "20", "--baseline", str(trimmed),
                       "--gate", "clean.ece <= baseline + 1")
    assert code == 1
    (gate,) = report["gates"]
    assert gate["threshold"] is None and gate["baseline"] is None
    assert gate["reason"] == f"the baseline ({trimmed}) has no metric clean.ece"
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    assert run(tiny_model, tmp_path / "out2", "--baseline", str(bad))[0] == 2


def test_compare_lists_regressions_first(baseline, tmp_path, capsys):
    data = json.loads(baseline.read_text())
    metrics = data["suites"]["clean"]["metrics"]
    metrics["top1"]["value"] -= 0.1
    metrics["ece"]["value"] += 0.01
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(data))
    assert main(["compare", str(baseline), str(worse), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(c["metric"], c["change"]) for c in result["changes"][:2]] == [("clean.top1", "regression"),
                                                                          ("clean.ece", "regression")]
    assert main(["compare", str(baseline), str(worse)]) == 0
    text = capsys.readouterr().out
    assert "2 regressions" in text and "clean.top1" in text.splitlines()[1]
    judged = tmp_path / "judged.json"
    judged.write_text(json.dumps({**data, "verdict": "fail"}))
    assert main(["compare", str(baseline), str(judged)]) == 0
    assert "  verdict: none -> fail" in capsys.readouterr().out.splitlines()
    assert main(["compare", str(baseline), str(tmp_path / "missing.json")]) == 2


def test_progress_in_a_log_is_one_line_per_step_without_carriage_returns(tiny_model, tmp_path, data_root, capsys):
    code, _ = run(tiny_model, tmp_path / "out", "--n-samples", "20", "--gate", "clean.top1 >= 0.01", quiet=False)
    captured = capsys.readouterr()
    assert code in (0, 1)
    assert "\r" not in captured.err and "\r" not in captured.out
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("robustaudit: ")]
    assert "clean: started" in lines[0] and "clean: finished" in lines[-1]
    assert "gate clean.top1 >= 0.01: value " in captured.out


def test_progress_log_deciles():
    class Stream:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    stream = Stream()
    log = ProgressLog(stream)  # type: ignore[arg-type]
    for i in range(101):
        log("attacks", i / 100)
        log("attacks", i / 100)  # repeated updates print nothing new
    log("attacks", 1.0)
    lines = stream.text.splitlines()
    assert len(lines) == 11 and lines[0].endswith("attacks: started") and "finished" in lines[-1]
    assert [ln.split("attacks: ")[1].split("%")[0] for ln in lines[1:-1]] == [str(10 * k) for k in range(1, 10)]


def test_gate_lines_are_written_for_people():
    from worker.engine.cli import gate_lines
    from worker.engine.humanize import fmt_text
    from worker.engine.metrics import proportion

    leaf = proportion(0.36000000000000004, 25, "robust accuracy", eps=8 / 255)
    row = {"metric": "attacks.robust_accuracy.linf.eps_0p03137", "op": ">=", "threshold": 0.30000000000000004,
           "expression": "baseline - 0.1", "value": leaf["value"], "baseline": 0.4, "delta": -0.03999999999999998,
           "passed": True, "status": "pass", "few_samples": True, "note": "measured on 25 samples"}
    head, note = gate_lines(row, leaf)
    assert head == ("  gate attacks.robust_accuracy.linf.eps_0p03137 (eps 8/255) >= baseline - 0.1 (= 0.3): "
                    "value 0.36, baseline 0.4 (-0.04)  PASS")
    assert note == "      note: measured on 25 samples"
    assert fmt_text("top-1 0.36000000000000004 at eps=0.03137254901960784") == "top-1 0.36 at eps=8/255"
