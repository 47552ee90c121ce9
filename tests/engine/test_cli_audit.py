"""End to end through the CLI: a tiny TorchScript model made here, builtin:digits, gates, exit codes."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tests.tiny import TinyNet
from worker.engine.cli import EXIT_NO_VERDICT, main

ROOT = Path(__file__).resolve().parents[2]


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


def audit(args, tmp_path):
    out = tmp_path / "out"
    code = main(["audit", "--quiet", "--out", str(out), *args])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return code, report


def test_pass_and_report_validates(tiny_model, tmp_path, report_validator, data_root):
    code, report = audit(["--model", str(tiny_model), "--dataset", "builtin:digits", "--n-samples", "30",
                          "--gate", "clean.top1>=0"], tmp_path)
    assert code == 0
    report_validator.validate(report)
    assert report["verdict"] == "pass"
    assert report["dataset"]["n_samples"] == 30
    assert report["model"]["format"] == "torchscript"
    assert report["gates"][0]["passed"] is True
    assert report["audit"]["spec"]["dataset"]["n_samples"] == 30


def test_failed_gate_exits_1(tiny_model, tmp_path, report_validator, data_root):
    code, report = audit(["--model", str(tiny_model), "--dataset", "builtin:digits", "--n-samples", "20",
                          "--gate", "clean.top1>1.5"], tmp_path)
    assert code == 1
    report_validator.validate(report)
    assert report["verdict"] == "fail"


def test_no_gates_is_no_verdict_exit_5_unless_allowed(tiny_model, tmp_path, capsys, report_validator, data_root):
    import xml.etree.ElementTree as ET

    base = ["--model", str(tiny_model), "--dataset", "builtin:digits", "--n-samples", "20"]
    junit = tmp_path / "gates.xml"
    code, report = audit([*base, "--junit", str(junit)], tmp_path)
    assert code == 5 == EXIT_NO_VERDICT
    report_validator.validate(report)
    assert report["verdict"] == "none" and report["gates"] == []
    assert "no verdict: no gates were set" in capsys.readouterr().err
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("1", "0", "0", "1")
    (case,) = root.iter("testcase")
    (skipped,) = case.iter("skipped")
    assert "no gates were set" in (skipped.get("message") or "") and not list(case.iter("failure"))
    # the schema refuses a pass, or a fail, without gates
    for verdict in ("pass", "fail"):
        assert not report_validator.is_valid({**report, "verdict": verdict})

    code, allowed = audit([*base, "--allow-no-gates"], tmp_path)
    assert code == 0 and allowed["verdict"] == "none"
    assert "no verdict" not in capsys.readouterr().err
    code, gated = audit([*base, "--gate", "clean.top1>=0"], tmp_path)
    assert code == 0 and gated["verdict"] == "pass"
    # gates judge the numbers, they do not change them
    assert gated["suites"]["clean"]["metrics"] == report["suites"]["clean"]["metrics"]


def test_config_file_and_shards(tiny_model, tmp_path, data_root):
    cfg = tmp_path / "spec.json"
    cfg.write_text(json.dumps({"model": str(tiny_model), "dataset": {"kind": "builtin", "name": "digits",
                                                                       "n_samples": 25, "seed": 4},
                               "suites": {"clean": {"ece_bins": 5}}, "gates": ["clean.ece<=1"]}))
    code, one = audit(["--config", str(cfg)], tmp_path)
    assert code == 0 and one["suites"]["clean"]["params"]["ece_bins"] == 5
    code, many = audit(["--config", str(cfg), "--shards", "4"], tmp_path)
    assert many["suites"]["clean"]["metrics"] == one["suites"]["clean"]["metrics"]


@pytest.mark.parametrize("args, message", [
    (["--model", "missing.pt", "--dataset", "builtin:digits"], "not found"),
    (["--dataset", "builtin:digits"], "--model"),
    (["--model", "{model}", "--dataset", "builtin:digits", "--suite", "nope"], "unknown suite"),
    (["--model", "{model}", "--dataset", "builtin:digits", "--gate", "clean.top9>=1"], "does not produce"),
    (["--model", "{model}", "--dataset", "builtin:digits", "--gate", "clean.per_class.cat>=1"], "not a known class"),
    (["--model", "{model}", "--dataset", "builtin:digits", "--set", "clean.ece_bins=0"], "clean.ece_bins"),
    (["--model", "{model}", "--dataset", "npz:/etc/passwd"], "outside"),
])
def test_bad_input_exits_2(tiny_model, tmp_path, capsys, data_root, args, message):
    args = [a.replace("{model}", str(tiny_model)) for a in args]
    code, report = audit(args, tmp_path)
    assert code == 2
    assert report is None
    assert message in capsys.readouterr().err


def test_model_with_wrong_class_count_exits_2(tiny_model, tmp_path, capsys, data_root):
    card = tmp_path / "wrong.card.json"
    card.write_text(json.dumps({"format": "torchscript", "num_classes": 12, "input_size": [1, 32, 32]}))
    code, _ = audit(["--model", str(tiny_model), "--card", str(card), "--dataset", "builtin:digits"], tmp_path)
    assert code == 2
    assert "(2, 10)" in capsys.readouterr().err


def test_metrics_and_suites_commands(capsys):
    assert main(["metrics", "--json"]) == 0
    catalog = json.loads(capsys.readouterr().out)
    assert "top1" in catalog["clean"]
    assert main(["suites"]) == 0
    assert "ece_bins" in capsys.readouterr().out


def test_module_entry_point_runs_with_engine_only(tmp_path):
    # `python -m worker.engine` is how a bare GPU box runs it.
    out = subprocess.run([sys.executable, "-m", "worker.engine", "metrics"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "clean.top1" in out.stdout


@pytest.mark.parametrize("model, card", [
    ("digits_cnn.pt", None), ("digits_cnn_export.pt2", None), ("digits_cnn_pgd.pt", None)])
def test_demo_models_audit(tmp_path, report_validator, data_root, model, card):
    demo = ROOT / "worker" / "engine" / "assets" / "demo"
    code, report = audit(["--model", str(demo / model), "--dataset", "builtin:digits", "--n-samples", "100",
                          "--gate", "clean.top1>=0.9", "--gate", "clean.per_class.3>=0.5"], tmp_path)
    assert code == 0, report and report["gates"]
    report_validator.validate(report)
    assert report["model"]["format"] == ("export" if model.endswith(".pt2") else "torchscript")
    assert report["suites"]["clean"]["metrics"]["top1"]["value"] >= 0.9
