"""The attack base and each attack: one call shape, clipping/projection/re-check, early exit,
budgets in increasing order, masks, registry and parameter errors."""

import pytest
import torch
from torch import nn

from tests.tiny import random_samples, tiny_classifier
from worker.engine.attacks import ATTACKS, FGSM, FMN, PGD, Attack, CarliniWagnerL2, Norm, RunOutput, make_attack
from worker.engine.attacks.losses import Loss, logit_margin
from worker.engine.attacks.rng import SampleSeeds
from worker.engine.errors import SpecError


class Linear2(nn.Module):
    """Two classes, logit difference = w . x - b: the exact minimal L2 distance is known."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w.flatten() - self.b
        return torch.stack([-s / 2, s / 2], dim=1)


class Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


class Liar(Attack):
    """Claims everything and returns a huge perturbation: the base must project and re-check."""

    name = "liar"

    def run(self, model, inputs, labels, eps, *, targeted, mask, rng):
        return RunOutput(inputs + 5.0)


def data(n=20, seed=0):
    """The tiny model on random images, labelled with its own predictions (so all start correct)."""
    clf = tiny_classifier(seed=seed)
    x = random_samples(n, seed=seed).prepared(clf.card)
    with torch.no_grad():
        y = clf(x).argmax(1)
    return clf, x, y


@pytest.mark.parametrize("norm", list(Norm))
def test_projection_and_measure(norm):
    g = torch.Generator().manual_seed(0)
    d = torch.randn(5, 1, 4, 4, generator=g)
    p = norm.ops.project(d, 0.3)
    assert (norm.ops.measure(p) <= 0.3 + 1e-6).all()
    small = d * 1e-4
    assert torch.allclose(norm.ops.project(small, 0.3), small)
    r = norm.ops.random(d, 0.3, g)
    assert (norm.ops.measure(r) <= 0.3 + 1e-6).all() and norm.ops.measure(r).min() > 0


def test_losses_and_margin():
    z = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    y = torch.tensor([0, 1])
    assert logit_margin(z, y).tolist() == [2.0, -3.0]
    assert Loss.MARGIN(z, y).tolist() == [-2.0, 3.0]
    assert torch.allclose(Loss.CE(z, y, targeted=True), -Loss.CE(z, y))


@pytest.mark.parametrize("norm", list(Norm))
def test_base_projects_clips_and_rechecks(norm):
    clf, x, y = data()
    res = Liar(norm=norm)(clf, x, y, [0.2, 0.05])
    assert res.success.shape == (2, 20)
    for b, eps in enumerate(res.budgets):
        adv = res.adversarials[b]
        assert adv.min() >= 0 and adv.max() <= 1
        assert (norm.ops.measure(adv - x) <= eps + 1e-5).all()
        with torch.no_grad():
            pred = clf(adv).argmax(1)
        assert torch.equal(res.predictions[b], pred)
        assert torch.equal(res.success[b], pred.ne(y))  # the claim is never taken on trust
        assert torch.equal(adv[~res.success[b]], x[~res.success[b]])  # failed: the clean input comes back


def test_success_monotone_in_budget_and_order_kept():
    clf, x, y = data(30)
    res = PGD(norm="linf", steps=10)(clf, x, y, [0.3, 0.01, 0.1], rng=SampleSeeds(range(30)))
    s = res.success
    assert res.budgets == [0.3, 0.01, 0.1]
    assert (s[1] <= s[2]).all() and (s[2] <= s[0]).all()
    assert 0 < s[1].sum() < s[0].sum()


def test_early_exit_spends_fewer_rows_than_fixed_steps():
    clf, x, y = data(40)
    counter = Counting(clf)
    PGD(norm="linf", steps=20, random_start=False)(counter, x, y, [0.3])
    assert counter.rows < 40 * 21 / 3  # most samples leave the batch after a few steps


def test_restarts_only_rerun_robust_samples():
    clf, x, y = data(30)
    one = Counting(clf)
    three = Counting(clf)
    r1 = PGD(norm="linf", steps=5, restarts=1)(one, x, y, [0.03], rng=SampleSeeds(range(30)))
    r3 = PGD(norm="linf", steps=5, restarts=3)(three, x, y, [0.03], rng=SampleSeeds(range(30)))
    assert (r3.success[0] >= r1.success[0]).all()
    robust_after_first = int((~r1.success[0]).sum())
    assert three.rows <= one.rows + 2 * robust_after_first * 6 + 2 * 30


def test_same_sample_same_noise_in_any_batch():
    clf, x, y = data(12)
    seeds = SampleSeeds(range(100, 112))
    whole = PGD(norm="l2", steps=5)(clf, x, y, [0.5], rng=seeds)
    part = PGD(norm="l2", steps=5)(clf, x[6:], y[6:], [0.5], rng=seeds.subset(torch.arange(6, 12)))
    assert torch.equal(whole.success[:, 6:], part.success)


def test_mask_restricts_perturbation():
    clf, x, y = data(10)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    res = PGD(norm="linf", steps=5)(clf, x, y, [0.3], mask=mask)
    outside = (res.adversarials[0] - x) * (1 - mask)
    assert outside.abs().max() == 0


def test_first_success_iteration_recorded():
    clf, x, y = data(20)
    res = PGD(norm="linf", steps=10)(clf, x, y, [0.2])
    it = res.first_success[0]
    assert ((it >= 0) == res.success[0]).all()
    assert it.max() <= 10


def test_fmn_and_cw_find_the_known_minimal_l2_distance():
    # For a linear model the minimal L2 perturbation is |w.x - b| / ||w||.
    g = torch.Generator().manual_seed(1)
    w = torch.randn(1, 8, 8, generator=g) * 0.1
    x = 0.25 + 0.5 * torch.rand(16, 1, 8, 8, generator=g)
    model = Linear2(w, float((x.flatten(1) @ w.flatten()).quantile(0.5)))  # between two samples
    with torch.no_grad():
        y = model(x).argmax(1)
    exact = (x.flatten(1) @ w.flatten() - model.b).abs() / w.norm()
    # CW's Adam steps in tanh space cannot resolve distances much below the learning rate
    for attack, atol in ((FMN(norm="l2", steps=100), 0.01), (CarliniWagnerL2(steps=200, c=10.0, lr=0.01), 0.03)):
        res = attack(model, x, y, [])
        found = res.minimal_norms
        assert torch.isfinite(found).all()
        assert (found >= exact - 1e-4).all()  # never below the true minimum: verified adversarials
        assert torch.allclose(found, exact, rtol=0.1, atol=atol), (attack.name, found, exact)


def test_fmn_linf_not_larger_than_pgd_threshold():
    clf, x, y = data(20)
    fmn = FMN(norm="linf", steps=50)(clf, x, y, [0.05, 0.1])
    pgd = PGD(norm="linf", steps=20)(clf, x, y, [0.05, 0.1])
    # FMN's verified budgets at eps reproduce at least most PGD successes
    assert fmn.success.sum() >= 0.8 * pgd.success.sum()
    assert (fmn.minimal_norms[fmn.success[0]] <= 0.05 + 1e-6).all()


def test_targeted_call_reaches_targets():
    clf, x, y = data(20)
    t = (y + 1) % 10
    res = PGD(norm="linf", steps=20)(clf, x, t, [0.5], targeted=True)
    with torch.no_grad():
        pred = clf(res.adversarials[0]).argmax(1)
    assert torch.equal(pred.eq(t), res.success[0])
    assert res.success.float().mean() > 0.5


def test_registry_and_errors():
    assert {"fgsm", "pgd", "cw", "fmn", "iterative", "apgd-ce", "apgd-dlr", "apgd-t"} <= set(ATTACKS)
    assert isinstance(make_attack("fgsm", norm="l2"), FGSM)
    with pytest.raises(SpecError, match="unknown attack 'nope'"):
        make_attack("nope")
    with pytest.raises(SpecError, match="does not support the linf norm"):
        CarliniWagnerL2(norm="linf")
    with pytest.raises(SpecError, match="unknown norm"):
        PGD(norm="l1")
    with pytest.raises(SpecError, match="unknown loss"):
        PGD(loss="hinge")
    clf, x, y = data(4)
    with pytest.raises(SpecError, match="budgets must be finite and > 0"):
        PGD()(clf, x, y, [0.1, -1.0])
    with pytest.raises(SpecError, match="at least one budget"):
        PGD()(clf, x, y, [])
    with pytest.raises(SpecError, match="expected 4 labels"):
        PGD()(clf, x, y[:3], [0.1])
    with pytest.raises(TypeError):
        PGD("linf")  # keyword-only


def test_fixed_steps_mode_gives_the_same_result_at_a_higher_cost():
    clf, x, y = data(30)
    seeds = SampleSeeds(range(30))
    fast, slow = Counting(clf), Counting(clf)
    a = PGD(norm="linf", steps=10, restarts=2)(fast, x, y, [0.01, 0.03, 0.1], rng=seeds)
    b = PGD(norm="linf", steps=10, restarts=2, early_exit=False)(slow, x, y, [0.01, 0.03, 0.1], rng=seeds)
    assert torch.equal(a.success, b.success)
    assert 0 < a.success[0].sum() < 30
    assert slow.rows > 2 * fast.rows


def test_cw_abort_early_saves_steps():
    clf, x, y = data(16)
    slow, fast = Counting(clf), Counting(clf)
    a = CarliniWagnerL2(steps=100, binary_search_steps=1, abort_early=False)(slow, x, y, [1.0])
    b = CarliniWagnerL2(steps=100, binary_search_steps=1, abort_early=True)(fast, x, y, [1.0])
    assert fast.rows < slow.rows
    assert b.success.sum() >= 0.8 * a.success.sum()
