"""The attack-base extensions of issue 6: perturbation masks and the unbounded iterative
attack with per-sample first-success iterations, against a plain per-sample reference."""

import pytest
import torch
import torch.nn.functional as F

from tests.tiny import TinyNet
from worker.engine.attacks import IterativeLoss, Objective, make_attack
from worker.engine.attacks.masks import MaskShape, fraction, make_mask
from worker.engine.errors import SpecError


def model():
    return TinyNet(1, 10, seed=0)


def data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g)
    with torch.no_grad():
        y = model()(x).argmax(1)
    return x, y


def reference(net, x, y, objective, alpha, steps, c, mask=None):
    """One sample at a time, no batching: (first success or -1, final image)."""
    delta = torch.zeros_like(x)
    for t in range(steps + 1):
        d = delta.clone().requires_grad_(True)
        z = net((x + d)[None])
        if z.argmax(1).item() != y:
            return t, x + delta
        if t == steps:
            return -1, x + delta
        ce = F.cross_entropy(z, y[None])
        obj = {"ce_l2": ce - c * (d ** 2).sum(), "sign_ce": ce,
               "margin": -(z[0, y] - torch.cat([z[0, :y], z[0, y + 1:]]).max())}[objective]
        (g,) = torch.autograd.grad(obj, d)
        if mask is not None:
            g = g * mask
        step = g.sign() * alpha if objective == "sign_ce" else g * alpha / g.abs().max().clamp_min(1e-12)
        delta = (x + delta + step).clamp(0, 1) - x
        if mask is not None:
            delta = delta * mask


@pytest.mark.parametrize("steps", [4, 15])  # 4: some samples survive the cap (-1)
@pytest.mark.parametrize("objective", [o.value for o in Objective])
def test_iterative_matches_a_per_sample_reference(objective, steps):
    net, (x, y) = model(), data()
    attack = IterativeLoss(objective=objective, step_size=0.02, steps=steps, penalty=0.05)
    res = attack(net, x, y, [1.0])
    for i in range(len(x)):
        first, adv = reference(net, x[i], y[i], objective, 0.02, steps, 0.05)
        assert int(res.first_success[0, i]) == first
        assert bool(res.success[0, i]) == (first >= 0)
        if first >= 0:
            assert torch.allclose(res.adversarials[0][i], adv, atol=1e-5)


def test_masked_perturbation_stays_inside_the_mask():
    net, (x, y) = model(), data()
    m = make_mask("square", height=32, width=32, fraction=0.28)
    res = IterativeLoss(objective="sign_ce", step_size=0.05, steps=20)(net, x, y, [1.0], mask=m[None, None])
    assert res.success.any()
    changed = (res.adversarials[0] - x).abs().amax(dim=1) > 0  # N x H x W
    assert not changed[:, ~m].any()
    first, adv = reference(net, x[0], y[0], "sign_ce", 0.05, 20, 0.0, mask=m[None].float())
    assert int(res.first_success[0, 0]) == first
    pgd = make_attack("pgd", norm="linf", steps=5)(net, x, y, [0.1], mask=m[None, None].float())
    assert not ((pgd.adversarials[0] - x).abs().amax(dim=1) > 0)[:, ~m].any()


def test_clean_mistakes_count_as_iteration_zero_in_the_base():
    net, (x, y) = model(), data(4)
    wrong = (y + 1) % 10
    res = IterativeLoss(steps=3)(net, x, wrong, [1.0])
    assert res.success.all() and (res.first_success == 0).all()
    assert torch.equal(res.adversarials[0], x)


def test_mask_shapes_and_fractions():
    g = torch.Generator().manual_seed(0)
    sq = make_mask("square", height=10, width=10, fraction=0.17)
    assert fraction(sq) == 0.16 and sq[3:7, 3:7].all()  # side 4: 16 px closest to 17
    border = make_mask("border", height=10, width=10, fraction=0.35)
    assert fraction(border) == 0.36 and border[0].all() and not border[1:9, 1:9].any()  # width 1: 36 px
    rnd = make_mask(MaskShape.RANDOM, height=10, width=10, fraction=0.45, generator=g)
    assert int(rnd.sum()) == 45
    again = make_mask("random", height=10, width=10, fraction=0.45, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rnd, again)


@pytest.mark.parametrize("shape", ["square", "border", "random"])
def test_a_mask_with_no_pixel_is_a_spec_error(shape):
    with pytest.raises(SpecError, match=f"{shape} mask at fraction 0.01 selects no pixel of a 4x4 image"):
        make_mask(shape, height=4, width=4, fraction=0.01, generator=torch.Generator())


def test_bad_iterative_params():
    with pytest.raises(SpecError, match="unknown objective"):
        IterativeLoss(objective="lbfgs")
    with pytest.raises(SpecError, match="step_size"):
        IterativeLoss(step_size=0)
