"""The attacks suite: exact merging of shards, metrics against direct computations, sanity
flags tripped by models built to trip them, parameter validation."""

import json

import pytest
import torch
from torch import nn

from tests.tiny import TinyNet, random_samples, tiny_card
from worker.engine.classifier import Classifier
from worker.engine.errors import SpecError
from worker.engine.metrics import iter_leaves, path_matches
from worker.engine.runner import run_suite
from worker.engine.suites import get_suite
from worker.engine.suites.attacks.common import spearman
from worker.engine.suites.attacks.params import eps_key
from worker.engine.suites.attacks.targeted import targets_for
from worker.engine.suites.base import ArtifactStore, SuiteContext

SMALL = {"linf_eps": [0.02, 0.05], "l2_eps": [0.2, 0.5], "attacks": ["pgd", "fgsm", "cw"], "cascade": False,
         "attack_params": {"pgd": {"steps": 5}, "cw": {"steps": 5, "binary_search_steps": 1}, "fmn": {"steps": 10}},
         "targeted_eps": 0.05, "targeted_steps": 5, "max_targets": 3, "batch_size": 5}
HIERARCHY = {str(i): ("low" if i < 5 else "high") for i in range(10)}


def classifier(model: nn.Module | None = None, **card) -> Classifier:
    return Classifier(model or TinyNet(1, 10, seed=0), tiny_card(**card), sha256="0" * 64)


def labelled(n, seed=0):
    """Random images labelled by the base tiny net, so that most are correctly classified."""
    samples = random_samples(n, seed=seed)
    with torch.no_grad():
        samples.labels = TinyNet(1, 10)(samples.prepared(tiny_card())).argmax(1)
    return samples


def audit(tmp_path, clf, samples, params, shards=1):
    ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(tmp_path / "artifacts"), seed=7)
    run_suite("clean", get_suite("clean").validate_params({}), ctx, samples, shards=shards)
    suite = get_suite("attacks")
    return run_suite("attacks", suite.validate_params(params), ctx, samples, shards=shards)


def test_sharded_equals_unsharded(tmp_path):
    clf = classifier(hierarchy=HIERARCHY)
    samples = labelled(17)
    whole = audit(tmp_path / "a", clf, samples, SMALL, shards=1)
    split = audit(tmp_path / "b", clf, samples, SMALL, shards=3)
    assert whole["metrics"] == split["metrics"]
    assert whole["warnings"] == split["warnings"]
    m = whole["metrics"]
    assert m["targeted"]["success_rate"]["n"] > 0
    assert set(m["targeted"]["groups"]["mimic"]) == {"low", "high"}


def test_every_leaf_is_in_the_catalog_and_rates_match_the_matrix(tmp_path):
    clf = classifier(hierarchy=HIERARCHY)
    samples = labelled(30)
    raw = {**SMALL, "targeted_eps": 0.01, "targeted_steps": 3}  # a budget where rates differ by class
    params = get_suite("attacks").validate_params(raw)
    entry = audit(tmp_path, clf, samples, raw)
    patterns = get_suite("attacks").metric_paths(params)
    leaves = dict(iter_leaves(entry["metrics"]))
    for path in leaves:
        assert any(path_matches(p, path) for p in patterns), path
    for p in patterns:
        if "{" not in p:
            assert p in leaves, p
    matrix = json.loads((tmp_path / "artifacts" / "attacks" / "targeted_matrix.json").read_text())
    t = entry["metrics"]["targeted"]
    tries, wins = torch.tensor(matrix["attempts"]), torch.tensor(matrix["successes"])
    for c, name in enumerate(matrix["class_names"]):
        if tries[c].sum():
            assert t["modify"][name]["value"] == pytest.approx((wins[c].sum() / tries[c].sum()).item())
        if tries[:, c].sum():
            assert t["mimic"][name]["value"] == pytest.approx((wins[:, c].sum() / tries[:, c].sum()).item())
    assert (tmp_path / "artifacts" / "attacks" / "robust_accuracy.png").stat().st_size > 1000


def test_robust_accuracy_is_worst_case_over_attacks(tmp_path):
    clf = classifier()
    entry = audit(tmp_path, clf, labelled(20), SMALL)
    m = entry["metrics"]
    for norm, keys in (("linf", ["eps_0p02", "eps_0p05"]), ("l2", ["eps_0p2", "eps_0p5"])):
        for k in keys:
            worst = m["robust_accuracy"][norm][k]["value"]
            for attack in m["per_attack"][norm]:
                assert worst <= m["per_attack"][norm][attack][k]["value"]
    assert set(m["per_attack"]["l2"]) == {"fgsm", "pgd", "cw"}
    assert set(m["per_attack"]["linf"]) == {"fgsm", "pgd"}  # CW-L2 only under L2


def test_spearman_and_targets():
    stats = pytest.importorskip("scipy.stats")
    a, b = [0.1, 0.5, 0.5, 0.9, 0.3], [0.2, 0.1, 0.4, 0.8, 0.8]
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0])
    assert spearman([1, 1], [1, 2]) is None
    assert targets_for(0, "s", 3, 10, 9) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    few = targets_for(0, "s", 3, 100, 5)
    assert len(few) == 5 and 3 not in few and few == targets_for(0, "s", 3, 100, 5)
    assert few != targets_for(1, "s", 3, 100, 5)


def test_eps_keys_and_param_errors():
    assert eps_key(8 / 255) == "eps_0p03137"
    assert eps_key(1.0) == "eps_1" and eps_key(0.25) == "eps_0p25"
    suite = get_suite("attacks")
    with pytest.raises(SpecError, match="same key"):
        suite.validate_params({"linf_eps": [0.031371, 0.031372]})
    with pytest.raises(SpecError, match="no requested attack supports the linf norm"):
        suite.validate_params({"attacks": ["cw"]})
    with pytest.raises(SpecError, match=r"attacks\.attacks"):
        suite.validate_params({"attacks": ["deepfool"]})


class Softmaxed(TinyNet):
    def forward(self, x):
        return torch.softmax(super().forward(x), dim=1)


class Noisy(TinyNet):
    def forward(self, x):
        return super().forward(x) + 0.5 * torch.randn(x.shape[0], 10)


class Rounded(TinyNet):
    """Quantises its input: exactly zero gradients everywhere."""

    def forward(self, x):
        return super().forward(torch.round(x * 4) / 4)


class NaNGrad(TinyNet):
    """Same outputs, but the input gradient is NaN (0 * inf through sqrt at 0)."""

    def forward(self, x):
        return super().forward(x) + 0 * torch.sqrt((x - x.detach()).abs()).sum(dim=(1, 2, 3))[:, None]


class Constant(TinyNet):
    def forward(self, x):
        return super().forward(x) * 0 + torch.arange(10, 0, -1, dtype=x.dtype)


QUICK = {**SMALL, "targeted": False, "minimal": "none", "attacks": ["fgsm", "pgd"], "norms": ["linf"]}


@pytest.mark.parametrize("model, code", [(Softmaxed(1, 10), "probabilities_not_logits"),
                                         (Noisy(1, 10), "randomized_model"),
                                         (Rounded(1, 10), "zero_gradients"),
                                         (NaNGrad(1, 10), "nan_gradients"),
                                         (Constant(1, 10), "clean_near_chance")])
def test_sanity_flag_tripped_by_a_model_built_for_it(tmp_path, model, code):
    samples = labelled(20)
    entry = audit(tmp_path, classifier(model), samples, QUICK)
    codes = {w["code"] for w in entry["warnings"]}
    assert code in codes


def test_weaker_attack_stronger_is_flagged(tmp_path):
    # PGD that cannot move (a vanishing step, no random start) is beaten by FGSM.
    params = {**QUICK, "attack_params": {"pgd": {"steps": 5, "rel_stepsize": 1e-6, "random_start": False}}}
    entry = audit(tmp_path, classifier(), labelled(20), params)
    flags = [w for w in entry["warnings"] if w["code"] == "weaker_attack_stronger"]
    assert flags and flags[0]["details"]["weaker"] == "fgsm" and flags[0]["details"]["samples"] > 0
    fine = audit(tmp_path, classifier(), labelled(20), QUICK)
    assert "weaker_attack_stronger" not in {w["code"] for w in fine["warnings"]}


def test_progress_rises_and_cancel_stops(tmp_path):
    from worker.engine.errors import AuditCancelled

    seen = []
    ctx = SuiteContext(classifier=classifier(), artifacts=ArtifactStore(tmp_path / "artifacts"),
                       on_progress=lambda s, f: seen.append((s, f)))
    samples = labelled(8)
    run_suite("clean", get_suite("clean").validate_params({}), ctx, samples)
    run_suite("attacks", get_suite("attacks").validate_params(QUICK), ctx, samples, shards=2)
    mine = [f for s, f in seen if s == "attacks"]
    assert mine[-1] == 1.0 and all(b >= a for a, b in zip(mine, mine[1:]))
    ctx.should_stop = lambda: True
    with pytest.raises(AuditCancelled):
        run_suite("attacks", get_suite("attacks").validate_params(QUICK), ctx, samples)
