"""One contract that every registered attack keeps: call shape, results inside the ball and
the [0, 1] box, success re-verified with the model, determinism given the seeds, masks,
cost accounting, and a parameter schema that matches the constructor."""

import inspect

import pytest
import torch

from tests.tiny import random_samples, tiny_classifier
from worker.engine.attacks import ATTACKS, Norm, make_attack
from worker.engine.attacks.losses import is_success
from worker.engine.attacks.rng import SampleSeeds
from worker.engine.errors import SpecError

#: cheap settings so that the contract runs in seconds; every other parameter keeps its default
FAST = {
    "fgsm": {}, "pgd": {"steps": 5}, "cw": {"steps": 10, "binary_search_steps": 2}, "fmn": {"steps": 10},
    "iterative": {"steps": 10}, "apgd-ce": {"steps": 10}, "apgd-dlr": {"steps": 10},
    "apgd-t": {"steps": 5, "n_targets": 3}, "fab-t": {"steps": 5, "n_targets": 3}, "square": {"n_queries": 30},
}
BUDGETS = {Norm.LINF: [0.2, 0.03], Norm.L2: [0.5, 2.0]}
CASES = [(name, norm) for name, cls in sorted(ATTACKS.items()) for norm in Norm if norm in cls.supported_norms]
N = 12


def data(n=N, seed=0):
    clf = tiny_classifier(seed=seed)
    x = random_samples(n, seed=seed).prepared(clf.card)
    with torch.no_grad():
        y = clf(x).argmax(1)
    return clf, x, y


def build(name, norm):
    return make_attack(name, norm=norm, **FAST.get(name, {}))


@pytest.mark.parametrize("name, norm", CASES)
def test_contract(name, norm):
    clf, x, y = data()
    attack = build(name, norm)
    budgets = BUDGETS[norm]
    res = attack(clf, x, y, budgets, rng=SampleSeeds(range(N)))
    assert res.success.shape == (len(budgets), N) and res.success.dtype == torch.bool
    assert res.predictions.shape == (len(budgets), N) and len(res.adversarials) == len(budgets)
    assert res.budgets == budgets
    for b, eps in enumerate(budgets):
        adv = res.adversarials[b]
        assert adv.shape == x.shape
        assert adv.min() >= 0 and adv.max() <= 1
        assert (norm.ops.measure(adv - x) <= eps * (1 + 1e-5) + 1e-6).all(), name
        with torch.no_grad():
            logits = clf(adv)
        assert torch.equal(res.predictions[b], logits.argmax(1))
        assert torch.equal(res.success[b], is_success(logits, y, targeted=False))
        assert torch.equal(adv[~res.success[b]], x[~res.success[b]])
    small, large = sorted(range(len(budgets)), key=lambda i: budgets[i])
    assert (res.success[small] <= res.success[large]).all()
    # cost: at least the clean check and a re-check; no gradients for a gradient-free attack
    assert res.forward_samples >= 2 * N - int(res.success.all(0).sum())
    assert res.seconds > 0
    if attack.gradient_free:
        assert res.backward_samples == 0
    else:
        assert res.backward_samples > 0


@pytest.mark.parametrize("name, norm", CASES)
def test_deterministic_given_seeds(name, norm):
    clf, x, y = data()
    seeds = SampleSeeds(range(500, 500 + N))
    a = build(name, norm)(clf, x, y, BUDGETS[norm], rng=seeds)
    b = build(name, norm)(clf, x, y, BUDGETS[norm], rng=seeds)
    assert torch.equal(a.success, b.success)
    for u, v in zip(a.adversarials, b.adversarials, strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("name, norm", CASES)
def test_targeted_success_is_reaching_the_target(name, norm):
    clf, x, y = data()
    t = (y + 1) % 10
    res = build(name, norm)(clf, x, t, [max(BUDGETS[norm])], targeted=True, rng=SampleSeeds(range(N)))
    with torch.no_grad():
        pred = clf(res.adversarials[0]).argmax(1)
    assert torch.equal(res.success[0], pred.eq(t))


@pytest.mark.parametrize("name, norm", CASES)
def test_mask_is_respected(name, norm):
    clf, x, y = data()
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    res = build(name, norm)(clf, x, y, [max(BUDGETS[norm])], mask=mask, rng=SampleSeeds(range(N)))
    assert ((res.adversarials[0] - x) * (1 - mask)).abs().max() == 0


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_schema_matches_the_constructor(name):
    cls = ATTACKS[name]
    sig = inspect.signature(cls.__init__)
    kw = {p.name: p.default for p in sig.parameters.values()
          if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "norm"}
    assert [p.name for p in cls.params.params] == list(kw), name  # every argument listed, in order
    for p in cls.params.params:
        assert p.default == kw[p.name], (name, p.name)
        assert p.help
    norm = next(iter(sorted(cls.supported_norms)))
    attack = make_attack(name, norm=norm)
    assert isinstance(attack, cls)
    with pytest.raises(SpecError, match=f"{name}.bogus: unknown parameter"):
        make_attack(name, norm=norm, bogus=1)
    bounded = [p for p in cls.params.params if p.maximum is not None]
    if bounded:
        p = bounded[0]
        with pytest.raises(SpecError, match=f"{name}.{p.name}: must be <="):
            make_attack(name, norm=norm, **{p.name: p.maximum + 1})


def test_registry_has_the_autoattack_attacks_and_one_gradient_free():
    assert {"apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"} <= set(ATTACKS)
    assert [n for n, c in ATTACKS.items() if c.gradient_free] == ["square"]
    assert set(FAST) == set(ATTACKS)  # a new attack gets cheap contract settings too


@pytest.mark.parametrize("name, norm", CASES)
def test_a_sample_gets_the_same_attack_in_any_batch(name, norm):
    # per-sample random streams: sharded and unsharded runs must agree
    clf, x, y = data()
    seeds = SampleSeeds(range(100, 100 + N))
    whole = build(name, norm)(clf, x, y, BUDGETS[norm], rng=seeds)
    part = build(name, norm)(clf, x[6:], y[6:], BUDGETS[norm], rng=seeds.subset(torch.arange(6, N)))
    assert torch.equal(whole.success[:, 6:], part.success)
