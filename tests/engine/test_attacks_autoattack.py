"""The ``autoattack`` set against torchattacks' AutoAttack (the standard version, same four
attacks) on the demo CNN: the same samples and budget give the same robust accuracy, within
one sample. And on a tiny net: the set runs in AutoAttack's order, each attack on what the
previous ones left."""

import pytest
import torch

from tests.conftest import DEMO
from tests.tiny import TinyNet, random_samples, tiny_card
from worker.engine.classifier import Classifier
from worker.engine.datasets import DataRoots, DatasetRef, load_samples
from worker.engine.models import load_classifier
from worker.engine.runner import run_suite
from worker.engine.suites import get_suite
from worker.engine.suites.base import ArtifactStore, SuiteContext


def attacks_entry(tmp_path, clf, samples, params):
    ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(tmp_path / "artifacts"), seed=0)
    run_suite("clean", get_suite("clean").validate_params({}), ctx, samples)
    return run_suite("attacks", get_suite("attacks").validate_params(params), ctx, samples)


def test_autoattack_set_runs_in_order_on_survivors(tmp_path):
    clf = Classifier(TinyNet(1, 10, seed=0), tiny_card(), sha256="0" * 64)
    samples = random_samples(12, seed=0)
    with torch.no_grad():
        samples.labels = clf(samples.prepared(tiny_card())).argmax(1)
    params = {"norms": ["linf", "l2"], "linf_eps": [0.01], "l2_eps": [0.1], "attacks": ["autoattack"],
              "minimal": "none", "targeted": {"enabled": False},
              "attack_params": {"apgd-ce": {"steps": 5}, "apgd-t": {"steps": 5, "n_targets": 2},
                                "fab-t": {"steps": 5, "n_targets": 2}, "square": {"n_queries": 20}}}
    entry = attacks_entry(tmp_path, clf, samples, params)
    order = ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert entry["metadata"]["attacks"] == {"linf": order, "l2": order}
    for norm, k in (("linf", "eps_0p01"), ("l2", "eps_0p1")):
        after = [entry["metrics"]["per_attack"][norm][a][k]["value"] for a in order]
        assert after == sorted(after, reverse=True)
        assert after[-1] == entry["metrics"]["robust_accuracy"][norm][k]["value"]
        cost = entry["metadata"]["cost"][norm]
        # each later attack sees at most the samples still robust: never more work than samples x budget
        assert cost["square"]["forward_samples"] <= 12 * (20 + 2)
        assert cost["square"]["backward_samples"] == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_autoattack_matches_torchattacks_on_the_demo_cnn(tmp_path):
    """30 samples keep it to a few minutes on two cores, so the tolerance is one sample (3.3
    points); on 100 samples bench/autoattack.py measured equal robust accuracy (0.11 both)."""
    torchattacks = pytest.importorskip("torchattacks")
    clf = load_classifier(str(DEMO / "digits_cnn.pt"), None, device="cpu")
    samples = load_samples(DatasetRef.parse({"kind": "builtin", "name": "digits", "n_samples": 30, "seed": 1}),
                           roots=DataRoots.from_env(), num_classes=10)
    eps = 0.1
    entry = attacks_entry(tmp_path, clf, samples, {"norms": ["linf"], "linf_eps": [eps], "attacks": ["autoattack"],
                                                   "minimal": "none", "targeted": {"enabled": False}})
    ours = entry["metrics"]["robust_accuracy"]["linf"]["eps_0p1"]["value"]
    x, y = samples.prepared(clf.card), samples.labels
    adv = torchattacks.AutoAttack(clf, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)(x, y)
    with torch.no_grad():
        theirs = clf(adv).argmax(1).eq(y).double().mean().item()
    assert abs(ours - theirs) <= 1 / 30 + 1e-9, (ours, theirs)
