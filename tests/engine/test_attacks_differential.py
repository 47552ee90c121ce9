"""Differential tests on the demo model: our APGD-CE, APGD-T and Square against ART 1.20.1's
AutoProjectedGradientDescent and SquareAttack (and torchattacks' Square where ART's is wrong),
on the same 100 builtin:digits images and budgets.

Tolerances, from runs on these images (seed-to-seed spread of robust accuracy):
- APGD: 2 points. Ours and ART's agree within 1 point across seeds (0.38-0.39 at L-inf 0.08,
  0.71 at L2 1.0); APGD-T (top-3 targets) 0.36 against 0.37 for ART's targeted APGD run target
  by target. At L-inf 0.1 ours is stronger (0.10-0.11 against 0.14-0.16, not tested, to keep
  the file short): its targeted DLR is AutoAttack's and every iterate is checked, where ART
  keeps only the last.
- Square is a random search: on 100 images its robust accuracy moves by 1.7 points (standard
  deviation, ours, 8 seeds) to 3 points (torchattacks, 6 seeds) between seeds at 300 queries,
  so one run against one run differs by about 2.5 points (sd) with no difference in the
  algorithms. We compare the mean of three of our seeds with one peer run, at 5 points (about
  2 sd of that difference). ART and torchattacks spend a query on a draw that leaves the image
  unchanged, ours does not (``skip_unchanged``): with it off we match them (0.365 against ART's
  0.367), with it on we are stronger (0.337), which we check one-sided.
- ART's L2 Square divides the new window by the norm it should have instead of scaling to it
  (square_attack.py, ``delta_new /= ... * np.sqrt(diff_norm / channels + w_norm**2)``), which
  weakens it (0.88 against our 0.83 at eps 1, 1,000 queries); L2 is compared with torchattacks'
  port of the authors' code instead.
"""

import numpy as np
import pytest
import torch

from worker.engine.attacks import APGD, APGDT, Square
from worker.engine.attacks.rng import SampleSeeds
from worker.engine.datasets import DataRoots, DatasetRef, load_samples
from worker.engine.models import load_classifier

art = pytest.importorskip("art")
from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402

N = 100
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    from tests.conftest import DEMO

    clf = load_classifier(str(DEMO / "digits_cnn.pt"), None, device="cpu")
    ref = DatasetRef.parse({"kind": "builtin", "name": "digits", "n_samples": N, "seed": 3})
    samples = load_samples(ref, roots=DataRoots.from_env(), num_classes=10)
    x, y = samples.prepared(clf.card), samples.labels
    est = PyTorchClassifier(model=clf, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 32, 32), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    return clf, est, x, y


def robust(est, adv, y):
    return torch.as_tensor(est.predict(adv.astype(np.float32)).argmax(axis=1)).eq(y).double().mean().item()


def art_apgd(est, x, y, eps, norm, loss, *, targeted=False, seed=0):
    np.random.seed(seed)
    attack = AutoProjectedGradientDescent(est, norm=norm, eps=eps, eps_step=2 * eps, max_iter=100, nb_random_init=1,
                                          batch_size=N, loss_type=loss, targeted=targeted, verbose=False)
    return attack.generate(x.numpy(), y=y.numpy())


def art_apgd_t(clf, est, x, y, eps, norm, k):
    """APGD-T from ART's parts: targeted APGD (DLR) at the j-th most likely other class, j = 1..k,
    each on the images still robust."""
    with torch.no_grad():
        logits = clf(x)
    ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
    alive = logits.argmax(1).eq(y)
    for j in range(k):
        idx = alive.nonzero().squeeze(1)
        if not idx.numel():
            break
        adv = art_apgd(est, x[idx], ranked[idx, j], eps, norm, "difference_logits_ratio", targeted=True, seed=j)
        alive[idx] &= torch.as_tensor(est.predict(adv).argmax(axis=1)).eq(y[idx])
    return alive.double().mean().item()


@pytest.mark.parametrize("norm, eps, art_norm", [("linf", 0.08, np.inf), ("l2", 1.0, 2)])
def test_apgd_ce_within_two_points_of_art(setup, norm, eps, art_norm):
    clf, est, x, y = setup
    ours = APGD(norm=norm)(clf, x, y, [eps], rng=SampleSeeds(range(N))).robust_accuracy()[0].item()
    theirs = robust(est, art_apgd(est, x, y, eps, art_norm, "cross_entropy"), y)
    assert 0.1 < theirs < 0.9  # a budget where the comparison means something
    assert abs(ours - theirs) <= 0.02 + 1e-9, (ours, theirs)


def test_apgd_t_within_two_points_of_art(setup):
    clf, est, x, y = setup
    ours = APGDT(norm="linf", n_targets=3)(clf, x, y, [0.08], rng=SampleSeeds(range(N))).robust_accuracy()[0].item()
    theirs = art_apgd_t(clf, est, x, y, 0.08, np.inf, 3)
    assert 0.1 < theirs < 0.9
    assert abs(ours - theirs) <= 0.02 + 1e-9, (ours, theirs)


def test_square_linf_agrees_with_art(setup):
    clf, est, x, y = setup
    eps, queries = 0.1, 300
    np.random.seed(0)
    attack = SquareAttack(est, norm=np.inf, eps=eps, max_iter=queries, p_init=0.8, nb_restarts=1, batch_size=N,
                          verbose=False)
    theirs = robust(est, attack.generate(x.numpy(), y=y.numpy()), y)

    def ours(skip: bool, seed: int) -> float:
        seeds = SampleSeeds(range(seed * N, (seed + 1) * N))
        res = Square(norm="linf", n_queries=queries, skip_unchanged=skip)(clf, x, y, [eps], rng=seeds)
        return res.robust_accuracy()[0].item()

    like_theirs = float(np.mean([ours(False, s) for s in range(3)]))
    assert 0.1 < theirs < 0.9
    assert abs(like_theirs - theirs) <= 0.05, (like_theirs, theirs)
    assert ours(True, 0) <= theirs + 0.02  # no wasted queries: at least as strong


def test_square_l2_agrees_with_torchattacks(setup):
    torchattacks = pytest.importorskip("torchattacks")
    clf, _, x, y = setup
    eps, queries = 2.0, 300
    peer = torchattacks.Square(clf, norm="L2", eps=eps, n_queries=queries, n_restarts=1, p_init=0.8, loss="margin",
                               resc_schedule=True, seed=0)
    with torch.no_grad():
        theirs = clf(peer(x, y)).argmax(1).eq(y).double().mean().item()
    attack = Square(norm="l2", n_queries=queries)
    runs = [attack(clf, x, y, [eps], rng=SampleSeeds(range(s * N, (s + 1) * N))) for s in range(3)]
    ours = float(np.mean([r.robust_accuracy()[0].item() for r in runs]))
    assert 0.1 < theirs < 0.9
    assert abs(ours - theirs) <= 0.05, (ours, theirs)
