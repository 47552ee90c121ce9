"""The in-memory Python API: ``audit(model, images, labels, ...)`` gives the CLI's report."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from tests.tiny import TinyNet
from worker.engine.api import audit, weights_digest
from worker.engine.card import ModelCard
from worker.engine.cli import main
from worker.engine.datasets import DatasetRef, load_samples
from worker.engine.errors import DatasetError, ModelCardError, SpecError
from worker.engine.samples import prepare_image

CARD = {"format": "torchscript", "num_classes": 10, "input_size": [1, 32, 32], "mean": [0.5], "std": [0.25]}
PGD_ONLY = {"norms": ["linf"], "linf_eps": [0.3], "attacks": ["pgd"], "minimal": "none", "targeted": {"enabled": False},
            "attack_params": {"pgd": {"steps": 5}}}


def digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLI's sample of builtin:digits, brought to the model's input size as the suites do."""
    samples = load_samples(DatasetRef.parse({"kind": "builtin", "name": "digits", "n_samples": n}))
    card = ModelCard.from_dict(CARD)
    return torch.stack([prepare_image(img, card) for img in samples.images]), samples.labels


def test_same_report_as_the_cli(tmp_path: Path, report_validator, data_root) -> None:
    model = TinyNet(1, 10, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(tmp_path / "tiny.pt"))
    (tmp_path / "tiny.card.json").write_text(json.dumps(CARD))
    assert main(["audit", "--quiet", "--model", str(tmp_path / "tiny.pt"), "--dataset", "builtin:digits",
                 "--n-samples", "30", "--gate", "clean.top1>=0", "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())

    x, y = digits(30)
    report = audit(model, x, y, mean=[0.5], std=[0.25], gates=["clean.top1>=0"], out=tmp_path / "api")
    report_validator.validate(report)
    assert json.loads((tmp_path / "api" / "report.json").read_text()) == report
    assert report["suites"]["clean"]["metrics"] == cli["suites"]["clean"]["metrics"]
    assert report["gates"] == cli["gates"] and report["verdict"] == "pass"
    assert report["model"]["format"] == "module" and report["model"]["name"] == "TinyNet"
    assert report["model"]["sha256"] == weights_digest(model)
    assert report["dataset"]["reference"] == {"kind": "in_memory", "n_samples": 30}
    assert report["audit"]["spec"]["dataset"] == {"kind": "in_memory", "n_samples": 30}


def test_attacks_run_and_the_module_is_given_back_as_it_was(report_validator) -> None:
    model = TinyNet(1, 10, seed=2).train()
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model((x - 0.5) / 0.25).argmax(dim=1)
    report = audit(model, x, y, suites={"attacks": PGD_ONLY}, mean=[0.5], std=[0.25],
                   class_names=[f"c{i}" for i in range(10)])
    report_validator.validate(report)
    robust = report["suites"]["attacks"]["metrics"]["robust_accuracy"]["linf"]["eps_0p3"]
    assert robust["n"] == 8 and robust["value"] < 1.0  # gradients reached the images: PGD fooled some
    assert report["suites"]["clean"]["metrics"]["top1"]["value"] == 1.0
    assert [c["name"] for c in report["dataset"]["classes"]][:2] == ["c0", "c1"]
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_bad_input_is_a_typed_error() -> None:
    model = TinyNet(1, 10)
    x = torch.rand(4, 1, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises(DatasetError, match=r"must lie in \[0, 1\]"):
        audit(model, x * 255, y)
    with pytest.raises(DatasetError, match="uint8"):
        audit(model, (x * 255).to(torch.uint8), y)
    with pytest.raises(DatasetError, match="labels must be 4 integers"):
        audit(model, x, y[:3])
    with pytest.raises(DatasetError, match=r"labels must lie in \[0, 10\)"):
        audit(model, x, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(SpecError, match="does not produce"):
        audit(model, x, y, gates=["clean.top9>=1"])
    with pytest.raises(ModelCardError, match="mean must have 1 values"):
        audit(model, x, y, mean=[0.5, 0.5, 0.5])
    with pytest.raises(ModelCardError, match="expected N x num_classes logits"):
        audit(torch.nn.Flatten(0), x, y)


def test_the_on_progress_example_in_docs_models_md_prints_what_it_shows(capsys) -> None:
    """docs/models.md's on_progress example, run as written; its output must be the block below it."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    section = text.split("### Progress: `on_progress`", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    shown = section.split("```text\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/models.md", "exec"), {"__name__": "docs_example"})
    assert capsys.readouterr().out == shown  # the progress lines come from the example's callback alone
