"""A fixture report for the report.html tests: a tiny audit with every suite, through the CLI.

The model is :class:`tests.tiny.TinyNet` with its linear layer fitted to the bundled digits (a
few full-batch steps, deterministic), so that the numbers and plots have something to show;
its card names the classes the way a hostile uploader would (markup, mathtext, quotes).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import worker.engine
from tests.tiny import TinyNet
from worker.engine.cli import main

DIGITS = Path(worker.engine.__file__).resolve().parent / "data" / "digits.pt"

#: class names a hostile model card could carry; the page must show each as text ("6" and "8" are
#: the generator's names too: the generator-layer part runs on the classes the two share)
HOSTILE_NAMES = ["<script>alert(1)</script>", "$\\frac{1}{$", "a&b \"quoted\" 'x'", "<img src=x onerror=alert(2)>",
                 "</table><h1>injected</h1>", "{{ 7*7 }}", "6", "{% raw %}", "8", "n" * 60]

#: gates of the fixture: one fails, the others pass (on the fitted TinyNet, checked by the tests)
GATES = ["clean.top1>=0.999", "clean.ece<=1", "attacks.robust_accuracy.linf.eps_0p03137>=0",
         "perturbation.corruptions.mean_accuracy>=0"]

SUITES: dict[str, Any] = {
    "fragile": {"region_fractions": [0.8, 0.9], "example_pairs": 1},
    "attacks": {"linf_eps": [8 / 255, 0.1], "l2_eps": [0.5], "attacks": ["fgsm", "pgd"], "minimal": "fmn",
                "attack_params": {"pgd": {"steps": 3}, "fmn": {"steps": 5}},
                "targeted": {"eps": 0.2, "steps": 3, "fraction": 0.5},
                "regional": {"enabled": False}, "loss_comparison": {"enabled": False}},
    "perturbation": {"corruptions": {"names": ["gaussian_noise", "contrast"], "severities": [1, 3]},
                     "geometric": {"rotations": [-10.0, 10.0], "translations": [0.0], "scales": [0.9]},
                     "generator_layers": {"sample_fraction": 1.0, "eps": [4.0, 16.0], "steps": 3,
                                          "eps_growth": 1.0, "max_eps": 16.0, "reference_batch": 32,
                                          "examples": 2}},
}


def fitted_tiny(seed: int = 0, steps: int = 60) -> TinyNet:
    """TinyNet with its linear layer fitted (full batch, Adam) to the digits at the card's normalisation."""
    raw = torch.load(DIGITS, weights_only=True)
    x = raw["images"].to(torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    y = raw["labels"].to(torch.int64)
    net = TinyNet(1, 10, seed=seed)
    with torch.no_grad():  # the pooling has no weights: its features are computed once
        feats = net.pool((x - 0.5) / 0.5).flatten(1)
    opt = torch.optim.Adam(net.fc.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net.fc(feats), y).backward()
        opt.step()
    return net.eval()


def write_model(folder: Path, class_names: list[str] | None = None) -> Path:
    """A TorchScript checkpoint of the fitted TinyNet and its card (hostile class names by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(fitted_tiny())
    path = folder / "tiny.pt"
    scripted.save(str(path))
    (folder / "tiny.card.json").write_text(json.dumps({
        "name": "tiny <b>model</b>", "format": "torchscript", "num_classes": 10, "input_size": [1, 32, 32],
        "mean": [0.5], "std": [0.5], "class_names": class_names or HOSTILE_NAMES}))
    return path


def run_fixture_audit(folder: Path, n_samples: int = 10) -> tuple[int, Path]:
    """(exit code, output folder) of ``robustaudit audit`` on the fixture model with every suite."""
    model = write_model(folder / "model")
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"suites": SUITES, "gates": GATES}))
    out = folder / "out"
    code = main(["audit", "--quiet", "--model", str(model), "--dataset", "builtin:digits", "--n-samples",
                 str(n_samples), "--config", str(spec), "--out", str(out)])
    return code, out
