"""Gates that refuse unreliable numbers, end to end through run_audit.

The issue's user story: the demo CNN behind a 16-level input quantiser (the input gradient is
zero almost everywhere) reported robust accuracy 0.95 at L-inf 0.1 and passed the gate
``attacks.robust_accuracy.linf.eps_0p1>=0.6``. The default attack set now includes the
gradient-free Square attack, so the quantised model fails that gate; with gradient attacks
only, the gate is ``unreliable`` and fails unless the request accepts it.
"""

import pytest
import torch
from torch import nn

from tests.conftest import DEMO
from worker.engine.classifier import Classifier
from worker.engine.gates import Gate, evaluate_gates
from worker.engine.metrics import Unit, metric
from worker.engine.runner import AuditInputs, resolve_inputs, run_audit
from worker.engine.spec import AuditSpec

GATE = "attacks.robust_accuracy.linf.eps_0p1>=0.6"
# the attacks suite restricted to what the gate reads (L-inf 0.1, no targeted or minimal parts),
# with the default attack set; Square's budget is cut from 5000 queries to 300 to keep the test
# short (300 already leave about 0.3 robust here)
LEAN = {"norms": ["linf"], "linf_eps": [0.1], "minimal": "none", "targeted": {"enabled": False},
        "attack_params": {"square": {"n_queries": 300}}}


class Quantised(nn.Module):
    """16 grey levels in front of the model, in [0, 1] pixel space (the model sees normalised
    inputs, so the quantiser undoes and redoes the card's normalisation)."""

    def __init__(self, inner: nn.Module, mean: float, std: float, levels: int = 16) -> None:
        super().__init__()
        self.inner, self.mean, self.std, self.steps = inner, mean, std, levels - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std + self.mean
        q = torch.round(pixels * self.steps) / self.steps
        return self.inner((q - self.mean) / self.std)


def spec(params: dict, n: int = 100, **extra) -> AuditSpec:
    return AuditSpec.from_dict({"model": str(DEMO / "digits_cnn.pt"), "device": "cpu",
                                "dataset": {"kind": "builtin", "name": "digits", "n_samples": n, "seed": 0},
                                "suites": {"attacks": params}, "gates": [GATE], **extra})


def quantised_inputs(s: AuditSpec) -> AuditInputs:
    inputs = resolve_inputs(s)
    clf = inputs.classifier
    card = clf.card
    model = Quantised(clf.model, card.mean[0], card.std[0])
    inputs.classifier = Classifier(model, card, sha256=clf.sha256, device=clf.device)
    return inputs


@pytest.fixture(scope="module")
def default_report(tmp_path_factory):
    s = spec(LEAN)
    return run_audit(s, tmp_path_factory.mktemp("quantised_default"), inputs=quantised_inputs(s))


def test_default_attacks_fail_the_quantised_model(default_report, report_validator):
    report_validator.validate(default_report)
    entry = default_report["suites"]["attacks"]
    assert "square" in entry["metadata"]["attacks"]["linf"]
    assert "zero_gradients" in {w["code"] for w in entry["warnings"]}
    robust = entry["metrics"]["robust_accuracy"]["linf"]["eps_0p1"]["value"]
    pgd_alone = entry["metrics"]["per_attack"]["linf"]["pgd"]["eps_0p1"]["value"]
    assert pgd_alone > 0.8  # masked: PGD cannot move the quantised model
    assert robust < 0.6  # Square, reading outputs only, breaks it
    (gate,) = default_report["gates"]
    # Square backs the number: the gate is judged, and fails on its value
    assert gate["status"] == "fail" and not gate["passed"]
    assert default_report["verdict"] == "fail"
    cost = entry["metadata"]["cost"]["linf"]
    assert cost["square"]["backward_samples"] == 0 and cost["square"]["forward_samples"] > 0
    assert cost["pgd"]["backward_samples"] > 0


def test_gradient_attacks_only_give_an_unreliable_gate(tmp_path):
    s = spec({**LEAN, "attacks": ["pgd", "fgsm"]}, 40)
    report = run_audit(s, tmp_path / "a", inputs=quantised_inputs(s))
    entry = report["suites"]["attacks"]
    assert entry["metrics"]["robust_accuracy"]["linf"]["eps_0p1"]["value"] >= 0.6  # the masked number
    assert "zero_gradients" in entry["unreliable"]["flags"]
    (gate,) = report["gates"]
    assert gate["status"] == "unreliable" and "zero_gradients" in gate["flags"]
    assert gate["passed"] is False and report["verdict"] == "fail"

    accepted = spec({**LEAN, "attacks": ["pgd", "fgsm"]}, 40, accept_unreliable=True)
    report = run_audit(accepted, tmp_path / "b", inputs=quantised_inputs(accepted))
    (gate,) = report["gates"]
    assert gate["status"] == "unreliable" and gate["accepted"] is True
    assert gate["passed"] is True and report["verdict"] == "pass"
    assert report["audit"]["spec"]["accept_unreliable"] is True


def test_reliable_model_keeps_plain_gates(tmp_path):
    s = spec({**LEAN, "attacks": ["pgd", "fgsm"]}, 40, gates=["attacks.robust_accuracy.linf.eps_0p1>=0.0"])
    report = run_audit(s, tmp_path)
    assert "unreliable" not in report["suites"]["attacks"]
    (gate,) = report["gates"]
    assert gate["status"] == "pass" and gate["passed"]


def test_evaluate_gates_unreliable_rows():
    metrics = {"attacks": {"robust_accuracy": {"linf": {"eps_0p1": metric(0.9, Unit.FRACTION, 10, "r")}},
                           "not_attacked": metric(1, Unit.COUNT, 10, "n")}}
    shaky = {"attacks": {"flags": ["nan_gradients"], "metrics": ["robust_accuracy.linf.eps_0p1"]}}
    gates = [Gate.parse("attacks.robust_accuracy.linf.eps_0p1>=0.5"), Gate.parse("attacks.not_attacked<=5")]
    rows = evaluate_gates(gates, metrics, unreliable=shaky)
    assert [r["status"] for r in rows] == ["unreliable", "pass"]
    assert rows[0]["flags"] == ["nan_gradients"] and not rows[0]["passed"] and rows[1]["passed"]
    rows = evaluate_gates(gates, metrics, unreliable=shaky, accept_unreliable=True)
    assert rows[0]["passed"] and rows[0]["accepted"]
    # accepting never turns a failed comparison into a pass
    low = [Gate.parse("attacks.robust_accuracy.linf.eps_0p1>=0.95")]
    assert not evaluate_gates(low, metrics, unreliable=shaky, accept_unreliable=True)[0]["passed"]
