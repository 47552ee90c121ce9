"""APGD: the published checkpoint schedule, the DLR losses, early exit, APGD-T's targets."""

import math

import pytest
import torch
from torch import nn

from tests.tiny import random_samples, tiny_classifier
from worker.engine.attacks import APGD, APGDDLR, APGDT, PGD, CostMeter, make_attack
from worker.engine.attacks.apgd import checkpoints
from worker.engine.attacks.losses import dlr, dlr_targeted
from worker.engine.attacks.rng import SampleSeeds


def data(n=24, seed=0, classes=10):
    clf = tiny_classifier(seed=seed, num_classes=classes)
    x = random_samples(n, seed=seed, num_classes=classes).prepared(clf.card)
    with torch.no_grad():
        y = clf(x).argmax(1)
    return clf, x, y


def paper_checkpoints(steps):
    """w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return [math.ceil(round(v * steps, 9)) for v in p[1:]]


@pytest.mark.parametrize("steps", [100, 200, 1000])
def test_checkpoints_follow_the_paper(steps):
    assert checkpoints(steps) == paper_checkpoints(steps)


def test_checkpoints_for_100_steps():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == [1]


def test_dlr_values_and_invariance():
    z = torch.tensor([[4.0, 1.0, 0.0, -1.0], [0.0, 3.0, 2.0, 1.0]])
    y = torch.tensor([0, 2])
    # sample 0: -(4 - 1) / (4 - 0); sample 1: -(2 - 3) / (3 - 1)
    assert torch.allclose(dlr(z, y), torch.tensor([-0.75, 0.5]))
    t = torch.tensor([1, 3])
    # -(z_y - z_t) / (z_1 - (z_3 + z_4) / 2)
    assert torch.allclose(dlr_targeted(z, y, t), torch.tensor([-3 / 4.5, -1 / 2.5]))
    # shift and scale invariant: a model cannot dodge it by saturating its softmax
    assert torch.allclose(dlr(7 * z + 3, y), dlr(z, y))
    assert torch.allclose(dlr_targeted(7 * z + 3, y, t), dlr_targeted(z, y, t))


def test_apgd_at_least_as_strong_as_pgd_with_the_same_steps():
    clf, x, y = data(40)
    seeds = SampleSeeds(range(40))
    for norm, eps in (("linf", 0.005), ("l2", 0.1)):
        pgd = PGD(norm=norm, steps=20)(clf, x, y, [eps], rng=seeds)
        apgd = APGD(norm=norm, steps=20)(clf, x, y, [eps], rng=seeds)
        assert 0 < pgd.success.sum() < 40
        assert apgd.success.sum() >= pgd.success.sum(), norm


def test_fooled_samples_leave_the_batch():
    clf, x, y = data(40)
    res = APGD(norm="linf", steps=50)(clf, x, y, [0.3], rng=SampleSeeds(range(40)))
    assert res.success.all()
    # the clean check, the random start and a few steps, not 51 passes per sample
    assert res.forward_samples < 40 * 10
    assert res.backward_samples < res.forward_samples


def test_fixed_cost_without_successes():
    """On a model nothing fools, every sample runs every step: steps + 1 forwards (the start
    and each iterate; the last iterate needs no gradient) plus the base's two checks."""
    clf, x, y = data(8)

    class Constant(nn.Module):
        def forward(self, v):
            return clf(v) * 0 + torch.arange(10.0)  # always class 9, gradients flow

    y = torch.full((8,), 9)
    res = APGD(norm="linf", steps=10)(Constant(), x, y, [0.1], rng=SampleSeeds(range(8)))
    assert not res.success.any()
    assert res.forward_samples == 8 * (11 + 2)
    assert res.backward_samples == 8 * 10


def test_step_size_shrinks_to_the_maximum_of_the_loss():
    """A one-pixel model whose loss peaks at c inside the ball: a fixed sign step of 2 eps would
    bounce between the ball's faces forever; APGD's halving at the checkpoints converges on c."""
    seen = []
    c = 0.53

    class Peak(nn.Module):
        # CE of class 0 rises as its logit falls; the logit is lowest at v = c; class 0 always wins
        def forward(self, v):
            seen.append(v.detach().flatten().clone())
            z0 = 10 + 100 * (v.flatten(1) - c).pow(2).sum(1)
            return torch.stack([z0, torch.zeros_like(z0)], 1)

    x = torch.full((1, 1, 1, 1), 0.5)
    res = APGD(norm="linf", steps=60)(Peak(), x, torch.zeros(1, dtype=torch.long), [0.1], rng=SampleSeeds([3]))
    assert not res.success.any()
    iterates = torch.cat(seen[2:-1])  # after the clean check and the start, before the re-check
    assert len(iterates) == 60
    assert (iterates[-10:] - c).abs().max() < 0.1 / 16
    assert (iterates[:3] - c).abs().max() > 0.02  # it did not start there


def test_apgd_t_clamps_targets_and_beats_untargeted_dlr_on_few_classes():
    clf, x, y = data(30, classes=3)
    seeds = SampleSeeds(range(30))
    t = APGDT(norm="linf", steps=10)(clf, x, y, [0.05], rng=seeds)  # n_targets 9 -> 2
    counter = CostMeter(clf)
    APGDT(norm="linf", steps=10, n_targets=2)(counter, x, y, [0.05], rng=seeds)
    assert t.forward_samples == counter.forward_samples
    assert t.success.any()


def test_apgd_t_aims_at_the_runner_up_first():
    clf, x, y = data(30)
    seeds = SampleSeeds(range(30))
    one = APGDT(norm="linf", steps=20, n_targets=1)(clf, x, y, [0.02], rng=seeds)
    nine = APGDT(norm="linf", steps=20, n_targets=9)(clf, x, y, [0.02], rng=seeds)
    # later targets only attack what the first left robust: never fewer successes
    assert (nine.success >= one.success).all()
    with torch.no_grad():
        z = clf(x)
    second = z.scatter(1, y[:, None], float("-inf")).argmax(1)
    adv = one.adversarials[0][one.success[0]]
    with torch.no_grad():
        pred = clf(adv).argmax(1)
    assert pred.eq(second[one.success[0]]).float().mean() > 0.8  # mostly lands on the aimed class


def test_make_attack_names():
    assert type(make_attack("apgd-ce", norm="l2")) is APGD
    assert type(make_attack("apgd-dlr")) is APGDDLR
    assert make_attack("apgd-t", n_targets=3).n_targets == 3


def test_apgd_t_batched_targets_break_what_turn_by_turn_runs_break():
    """All (sample, target) rows run as one batch; a sample falls iff one of its targets' own
    runs (same stream, run alone) fools it, and its rows leave together once one does."""
    from worker.engine.attacks.base import row_streams

    clf, x, y = data(n=16, seed=3)
    eps, k, steps = 0.005, 3, 10
    atk = APGDT(norm="linf", steps=steps, n_targets=k)
    rng = SampleSeeds(list(range(16)))
    meter = CostMeter(clf)
    out = atk.run(meter, x, y, eps, targeted=False, mask=None, rng=rng)
    batched = out.first_success >= 0
    with torch.no_grad():
        ranked = clf(x).scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)[:, :k]
    alone = torch.zeros(16, dtype=torch.bool)
    for j in range(k):  # each target on every sample, in its own batch, with the batched row's stream
        _, it = atk._once(clf, x, y, ranked[:, j], y, False, eps, None, row_streams(rng, [100 * (j + 1)]))
        alone |= it >= 0
    assert 0 < int(batched.sum()) < 16  # the case is not trivial
    assert torch.equal(batched, alone)
    # rows of broken samples left early: fewer passes than every row running all steps
    assert meter.backward_samples < 16 * k * steps
