"""Differential tests: our FGSM and PGD against the Adversarial Robustness Toolbox (ART) on the
demo model, the same samples and the same parameters."""

import numpy as np
import pytest
import torch

from worker.engine.attacks import FGSM, PGD
from worker.engine.datasets import DataRoots, DatasetRef, load_samples
from worker.engine.models import load_classifier

art = pytest.importorskip("art")
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402

N = 100


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.conftest import DEMO

    clf = load_classifier(str(DEMO / "digits_cnn.pt"), None, device="cpu")
    ref = DatasetRef.parse({"kind": "builtin", "name": "digits", "n_samples": N, "seed": 3})
    samples = load_samples(ref, roots=DataRoots.from_env(), num_classes=10)
    x, y = samples.prepared(clf.card), samples.labels
    est = PyTorchClassifier(model=clf, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 32, 32), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    return clf, est, x, y


def art_predictions(est, adv):
    return torch.as_tensor(est.predict(adv.astype(np.float32)).argmax(axis=1))


def test_fgsm_agrees_exactly(setup):
    clf, est, x, y = setup
    for eps in (0.05, 0.1):
        ours = FGSM(norm="linf")(clf, x, y, [eps])
        adv = FastGradientMethod(est, norm=np.inf, eps=eps, batch_size=N).generate(x.numpy(), y=y.numpy())
        theirs = art_predictions(est, adv)
        assert torch.equal(ours.predictions[0], theirs)
        assert torch.equal(ours.success[0], theirs.ne(y))
        # where the attack succeeds on a correctly classified image, the images are the same
        with torch.no_grad():
            ok = ours.success[0] & clf(x).argmax(1).eq(y)
        assert ok.sum() > 10
        assert np.abs(adv[ok.numpy()] - ours.adversarials[0][ok].numpy()).max() <= 1e-6


@pytest.mark.parametrize("norm, eps, step, art_norm", [("linf", 0.1, 0.01, np.inf), ("l2", 1.0, 0.1, 2)])
def test_pgd_robust_accuracy_within_two_points(setup, norm, eps, step, art_norm):
    clf, est, x, y = setup
    torch.manual_seed(0)
    np.random.seed(0)
    ours = PGD(norm=norm, steps=20, abs_stepsize=step)(clf, x, y, [eps], rng=torch.Generator().manual_seed(0))
    attack = ProjectedGradientDescent(est, norm=art_norm, eps=eps, eps_step=step, max_iter=20, num_random_init=1,
                                      batch_size=N, verbose=False)
    adv = attack.generate(x.numpy(), y=y.numpy())
    art_robust = art_predictions(est, adv).eq(y).double().mean().item()
    our_robust = ours.robust_accuracy()[0].item()
    assert 0.05 < our_robust < 0.95  # a budget where the comparison means something
    assert abs(our_robust - art_robust) <= 0.02, (our_robust, art_robust)
