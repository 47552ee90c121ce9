"""FAB-T: the box-constrained hyperplane projection against a brute-force solution, the exact
minimal distance on a linear model, targets, and agreement with torchattacks' FAB."""

import pytest
import torch
from torch import nn

from tests.tiny import random_samples, tiny_classifier
from worker.engine.attacks import FABT, Norm
from worker.engine.attacks.fab import box_projection
from worker.engine.attacks.rng import SampleSeeds


class Linear2(nn.Module):
    """Two classes, logit difference w . x - b: the minimal distance to the boundary is known."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w.flatten() - self.b
        return torch.stack([-s / 2, s / 2], dim=1)


def bisected(w, c, lo, hi, norm):
    """The same projection by bisection on the multiplier (slow, obviously right)."""
    sign, bound = w.sign(), torch.where(w > 0, hi, -lo)
    rate = w.abs() if norm is Norm.L2 else torch.ones_like(w)
    a, b = torch.zeros(len(c), dtype=w.dtype), torch.full((len(c),), 1e6, dtype=w.dtype)
    for _ in range(200):
        mid = (a + b) / 2
        reach = (w.abs() * torch.minimum(mid[:, None] * rate, bound)).sum(1)
        a, b = torch.where(reach >= c, a, mid), torch.where(reach >= c, mid, b)
    return sign * torch.minimum(b[:, None] * rate, bound)


@pytest.mark.parametrize("norm", list(Norm))
def test_box_projection_is_the_smallest_step_in_the_box(norm):
    g = torch.Generator().manual_seed(0)
    n, d = 60, 40
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    w[:, :4] = 0  # pixels that do not matter never move
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    lo, hi = -x, 1 - x
    lo[:, 4:8], hi[:, 4:8] = 0, 0  # masked pixels
    c = torch.rand(n, generator=g, dtype=torch.float64) * 24 - 3  # some already satisfied, some unreachable
    out = box_projection(w, c, lo, hi, norm)
    assert torch.isfinite(out).all()
    assert (out >= lo - 1e-12).all() and (out <= hi + 1e-12).all()
    assert (out[:, :8] == 0).all()
    reach = (w * out).sum(1)
    max_reach = (w.abs() * torch.where(w > 0, hi, -lo)).sum(1)
    feasible = max_reach >= c
    assert 0 < int(feasible.sum()) < n and (c <= 0).any()
    assert torch.allclose(out[c <= 0], torch.zeros_like(out[c <= 0]))
    pos = feasible & (c > 0)
    assert torch.allclose(reach[pos], c[pos])  # on the hyperplane: not a step further
    assert torch.allclose(out[pos], bisected(w, c, lo, hi, norm)[pos], atol=1e-9)
    assert torch.allclose(reach[~feasible], max_reach[~feasible])  # as close as the box allows


@pytest.mark.parametrize("norm", list(Norm))
def test_finds_the_boundary_of_a_linear_model(norm):
    """One FAB step lands eta = 1.05 times the exact distance beyond the boundary: success at
    1.06 times the minimal distance, and (there is nothing closer) failure at 0.95 times."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(1, 8, 8, generator=g) * 0.1
    x = 0.4 + 0.2 * torch.rand(16, 1, 8, 8, generator=g)
    model = Linear2(w, float((x.flatten(1) @ w.flatten()).quantile(0.5)))
    with torch.no_grad():
        y = model(x).argmax(1)
    margin = (x.flatten(1) @ w.flatten() - model.b).abs()
    dual = w.abs().sum() if norm is Norm.LINF else w.norm()
    exact = margin / dual
    attack = FABT(norm=norm, steps=10)
    tested = [k for k in range(16) if exact[k] > 1e-3]  # (the median sample sits on the boundary)
    assert len(tested) >= 12
    for k in tested:
        xs, ys = x[k:k + 1], y[k:k + 1]
        far = attack(model, xs, ys, [float(exact[k]) * 1.06], rng=SampleSeeds([k]))
        near = attack(model, xs, ys, [float(exact[k]) * 0.95], rng=SampleSeeds([k]))
        assert far.success.all() and not near.success.any(), k
        found = norm.ops.measure(far.adversarials[0] - xs)
        assert torch.allclose(found, exact[k:k + 1] * 1.05, rtol=1e-3)


def test_aims_at_the_top_other_classes():
    clf = tiny_classifier()
    x = random_samples(30).prepared(clf.card)
    with torch.no_grad():
        z = clf(x)
    y = z.argmax(1)
    res = FABT(norm="linf", steps=20, n_targets=1)(clf, x, y, [0.02], rng=SampleSeeds(range(30)))
    second = z.scatter(1, y[:, None], float("-inf")).argmax(1)
    hit = res.success[0]
    assert hit.sum() > 5
    assert res.predictions[0][hit].eq(second[hit]).float().mean() > 0.8
    more = FABT(norm="linf", steps=20, n_targets=5)(clf, x, y, [0.02], rng=SampleSeeds(range(30)))
    assert (more.success >= res.success).all()


@pytest.mark.slow
@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 2.0)])
def test_agrees_with_torchattacks_fab_multi_targeted(norm, eps):
    torchattacks = pytest.importorskip("torchattacks")
    from tests.conftest import DEMO
    from worker.engine.datasets import DataRoots, DatasetRef, load_samples
    from worker.engine.models import load_classifier

    clf = load_classifier(str(DEMO / "digits_cnn.pt"), None, device="cpu")
    ref = DatasetRef.parse({"kind": "builtin", "name": "digits", "n_samples": 60, "seed": 3})
    samples = load_samples(ref, roots=DataRoots.from_env(), num_classes=10)
    x, y = samples.prepared(clf.card), samples.labels
    ours = FABT(norm=norm, steps=50)(clf, x, y, [eps], rng=SampleSeeds(range(60))).robust_accuracy()[0].item()
    theirs_attack = torchattacks.FAB(clf, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=50, n_restarts=1,
                                     multi_targeted=True, n_classes=10, seed=0)
    with torch.no_grad():
        theirs = clf(theirs_attack(x, y)).argmax(1).eq(y).double().mean().item()
    assert 0.03 < theirs < 0.9
    assert abs(ours - theirs) <= 0.034, (ours, theirs)  # 2 of 60 samples


def test_batched_targets_find_what_turn_by_turn_runs_find():
    """All (sample, target) rows run as one batch: a sample gets an adversarial inside eps iff
    one of its targets' own runs (same stream, run alone) finds one, and what it returns is
    inside the ball."""
    from worker.engine.attacks.base import row_streams

    clf = tiny_classifier()
    x = random_samples(20).prepared(clf.card)
    with torch.no_grad():
        z = clf(x)
    y = z.argmax(1)
    eps, k = 0.005, 3
    atk = FABT(norm="linf", steps=10, n_targets=k)
    rng = SampleSeeds(range(20))
    out = atk.run(clf, x, y, eps, targeted=False, mask=None, rng=rng)
    found = out.first_success >= 0
    ranked = z.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)[:, :k]
    alone = torch.zeros(20, dtype=torch.bool)
    inf = torch.full((20,), float("inf"))
    for j in range(k):
        _, size, _ = atk._once(clf, x, y, ranked[:, j], y, False, eps, None, inf, row_streams(rng, [100 * j]),
                               random_start=False)
        alone |= size <= eps
    assert 0 < int(found.sum()) < 20
    assert torch.equal(found, alone)
    norms = (out.adversarials - x).flatten(1).abs().amax(1)
    assert (norms[found] <= eps + 1e-6).all()
