"""EoT: the wrapper averages draws and judges by majority; the suite switches it on when the
randomized_model flag fires (or on request) and says so in its metadata."""

import pytest
import torch
from torch import nn

from tests.tiny import TinyNet, random_samples, tiny_card
from worker.engine.attacks import PGD
from worker.engine.attacks.eot import EoT
from worker.engine.classifier import Classifier
from worker.engine.errors import SpecError
from worker.engine.runner import run_suite
from worker.engine.suites import get_suite
from worker.engine.suites.base import ArtifactStore, SuiteContext


class Flipper(nn.Module):
    """Predicts class 1 with probability ``p`` per pass and class 0 otherwise (logits +-1)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = (torch.rand(x.shape[0]) < self.p).float()
        z = torch.stack([1 - 2 * one, 2 * one - 1], dim=1)
        return torch.cat([z, torch.full((x.shape[0], 8), -5.0)], dim=1)


def test_judge_counts_a_strict_majority():
    torch.manual_seed(0)
    x = torch.zeros(400, 1, 2, 2)
    y = torch.zeros(400, dtype=torch.long)
    often, pred = EoT(Flipper(0.8), grad_samples=1, passes=9).judge(x, y)
    assert often.float().mean() > 0.9 and bool((pred[often] == 1).all())
    rarely, _ = EoT(Flipper(0.2), grad_samples=1, passes=9).judge(x, y)
    assert rarely.float().mean() < 0.1
    hit, _ = EoT(Flipper(0.8), grad_samples=1, passes=9).judge(x, torch.ones(400, dtype=torch.long), targeted=True)
    assert hit.float().mean() > 0.9


def test_call_averages_draws_and_keeps_gradients():
    calls = []

    def model(x):
        calls.append(x.shape[0])
        return x.flatten(1)[:, :3] * (len(calls) % 2 + 1)  # alternating scale 2, 1, 2, ...

    x = torch.rand(4, 1, 2, 2, requires_grad=True)
    out = EoT(model, grad_samples=4, passes=3)(x)
    assert calls == [4, 4, 4, 4]
    assert torch.allclose(out, x.flatten(1)[:, :3] * 1.5)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.allclose(g.flatten(1)[:, :3], torch.full((4, 3), 1.5))
    with pytest.raises(SpecError):
        EoT(model, grad_samples=0, passes=1)


class Noisy(TinyNet):
    """Logit noise per pass: a randomised model."""

    def forward(self, x):
        return super().forward(x) + 0.3 * torch.randn(x.shape[0], 10)


def labelled(n):
    """Random images labelled by the deterministic tiny net (through its classifier's normalisation)."""
    samples = random_samples(n, seed=0)
    with torch.no_grad():
        clf = Classifier(TinyNet(1, 10), tiny_card(), sha256="0" * 64)
        samples.labels = clf(samples.prepared(tiny_card())).argmax(1)
    return samples


def audit(tmp_path, model, params, shards=1):
    clf = Classifier(model, tiny_card(), sha256="0" * 64)
    ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(tmp_path / "artifacts"), seed=3)
    samples = labelled(12)
    run_suite("clean", get_suite("clean").validate_params({}), ctx, samples)
    return run_suite("attacks", get_suite("attacks").validate_params(params), ctx, samples, shards=shards)


QUICK = {"norms": ["linf"], "linf_eps": [0.02, 0.05], "attacks": ["pgd", "fgsm"], "minimal": "none",
         "targeted": {"enabled": False}, "attack_params": {"pgd": {"steps": 4}}, "batch_size": 6,
         "eot": {"grad_samples": 3, "passes": 5}}


def test_auto_switches_eot_on_for_a_randomised_model(tmp_path):
    torch.manual_seed(0)
    entry = audit(tmp_path, Noisy(1, 10), QUICK)
    eot = entry["metadata"]["eot"]
    assert eot["used"] and eot["grad_samples"] == 3 and eot["passes"] == 5
    assert "randomized_model" in eot["reason"]
    flag = next(w for w in entry["warnings"] if w["code"] == "randomized_model")
    assert flag["details"]["eot_samples"] == flag["details"]["samples"] > 0
    # randomness handled by EoT does not make the numbers unreliable
    assert "randomized_model" not in entry.get("unreliable", {}).get("flags", [])
    # each pass of the attack is k draws; the majority judgement adds m passes per checked candidate
    cost = entry["metadata"]["cost"]["linf"]["pgd"]
    assert cost["backward_samples"] % 3 == 0 and cost["backward_samples"] > 0


def test_eot_off_on_a_randomised_model_is_unreliable(tmp_path):
    torch.manual_seed(0)
    entry = audit(tmp_path, Noisy(1, 10), {**QUICK, "eot": {"enabled": False}})
    assert not entry["metadata"]["eot"]["used"]
    assert "randomized_model" in entry["unreliable"]["flags"]
    assert "robust_accuracy.linf.eps_0p02" in entry["unreliable"]["metrics"]


def test_deterministic_model_needs_no_eot_and_forcing_it_changes_nothing(tmp_path):
    plain = audit(tmp_path / "a", TinyNet(1, 10, seed=0), QUICK)
    assert not plain["metadata"]["eot"]["used"] and "deterministic" in plain["metadata"]["eot"]["reason"]
    forced = audit(tmp_path / "b", TinyNet(1, 10, seed=0), {**QUICK, "eot": {"enabled": True, "grad_samples": 2,
                                                                             "passes": 3}})
    assert forced["metadata"]["eot"]["used"] and forced["metadata"]["eot"]["reason"].startswith("requested")
    # a deterministic model seen through EoT: the same logits, the same verdicts
    assert forced["metrics"]["robust_accuracy"] == plain["metrics"]["robust_accuracy"]
    f, p = forced["metadata"]["cost"]["linf"]["pgd"], plain["metadata"]["cost"]["linf"]["pgd"]
    assert f["backward_samples"] == 2 * p["backward_samples"]


def test_eot_switch_is_validated():
    with pytest.raises(SpecError, match="eot.enabled"):
        get_suite("attacks").validate_params({"eot": {"enabled": "sometimes"}})


def test_eot_attack_beats_a_sign_flipping_model():
    """A model that negates its logits in 40% of passes: a single draw's gradient points the
    wrong way 40% of the time, the average of 16 draws (0.2 x the logits) the right way always;
    both judged by the same majority of passes."""
    torch.manual_seed(0)
    base = Classifier(TinyNet(1, 10, seed=0), tiny_card(), sha256="0" * 64)
    x = random_samples(48, seed=2).prepared(tiny_card())
    with torch.no_grad():
        y = base(x).argmax(1)

    def flipping(x):
        sign = torch.where(torch.rand(x.shape[0], 1) < 0.4, -1.0, 1.0)
        return base(x) * sign

    def robust(k):
        eot = EoT(flipping, grad_samples=k, passes=15)
        res = PGD(norm="linf", steps=10, random_start=False)(eot, x, y, [0.03])
        fooled, _ = eot.judge(res.adversarials[0], y)
        return 1 - fooled.float().mean().item()

    single, averaged = robust(1), robust(16)
    assert averaged < single - 0.1, (single, averaged)
