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
         "targeted": {"eps": 0.05, "steps": 5, "max_targets": 3}, "batch_size": 5}
HIERARCHY = {str(i): ("low" if i < 5 else "high") for i in range(10)}


def classifier(model: nn.Module | None = None, **card) -> Classifier:
    return Classifier(model or TinyNet(1, 10, seed=0), tiny_card(**card), sha256="0" * 64)


def labelled(n, seed=0):
    """Random images labelled by the base tiny net, so that most are correctly classified."""
    samples = random_samples(n, seed=seed)
    with torch.no_grad():  # through the classifier: its normalisation is what the suites see
        samples.labels = classifier()(samples.prepared(tiny_card())).argmax(1)
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
    # FMN's minimal L2 norms are continuous: a row's float result depends on the size of the
    # batch it is computed in (BLAS kernels), so they agree to float precision; the rest exactly
    a, b = dict(iter_leaves(whole["metrics"])), dict(iter_leaves(split["metrics"]))
    assert a.keys() == b.keys()
    for path in a:
        if path.startswith("minimal_perturbation.") and a[path]["value"] is not None:
            assert b[path]["value"] == pytest.approx(a[path]["value"], rel=1e-5), path
        else:
            assert a[path] == b[path], path
    assert whole["warnings"] == split["warnings"]
    m = whole["metrics"]
    assert m["targeted"]["success_rate"]["n"] > 0
    assert set(m["targeted"]["groups"]["mimic"]) == {"low", "high"}


def test_every_leaf_is_in_the_catalog_and_rates_match_the_matrix(tmp_path):
    clf = classifier(hierarchy=HIERARCHY)
    samples = labelled(30)
    raw = {**SMALL, "targeted": {"eps": 0.01, "steps": 3, "max_targets": 3}}  # a budget where rates differ by class
    params = get_suite("attacks").validate_params(raw)
    entry = audit(tmp_path, clf, samples, raw)
    patterns = get_suite("attacks").metric_paths(params)
    leaves = dict(iter_leaves(entry["metrics"]))
    for path in leaves:
        assert any(path_matches(p, path) for p in patterns), path
    for p in patterns:
        if "{" not in p and not p.startswith("multilabel."):  # multilabel.*: only with label sets
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


QUICK = {**SMALL, "targeted": {"enabled": False}, "minimal": "none", "attacks": ["fgsm", "pgd"], "norms": ["linf"]}


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


def test_schema_comes_from_the_registry_and_sets_expand():
    from worker.engine.attacks import ATTACKS
    from worker.engine.suites.attacks.params import ATTACK_SETS, attacks_for

    suite = get_suite("attacks")
    described = {p["name"]: p for p in suite.params.describe()}
    nested = {p["name"]: p for p in described["attack_params"]["fields"]}
    assert set(nested) == set(ATTACKS)
    for name, cls in ATTACKS.items():
        assert [f["name"] for f in nested[name]["fields"]] == [p.name for p in cls.params.params]
    assert set(described["attacks"]["choices"]) == set(ATTACKS) | set(ATTACK_SETS)
    for old in ("pgd_steps", "cw_steps", "minimal_steps", "early_exit", "check_every"):
        assert old not in described
    with pytest.raises(SpecError, match=r"attack_params\.pgd\.steps"):
        suite.validate_params({"attack_params": {"pgd": {"steps": 0}}})
    p = suite.validate_params({"attacks": ["autoattack"]})
    assert attacks_for(p, "linf") == list(ATTACK_SETS["autoattack"].attacks)
    # the cheap preset implies a short Square and PGD-10, unless the request says otherwise
    fast = suite.validate_params({"attacks": ["fast"], "attack_params": {"square": {"p_init": 0.5}}})
    assert fast["attack_params"]["square"]["n_queries"] == 300 and fast["attack_params"]["square"]["p_init"] == 0.5
    assert fast["attack_params"]["pgd"]["steps"] == 10
    mine = suite.validate_params({"attacks": ["fast"], "attack_params": {"square": {"n_queries": 50}}})
    assert mine["attack_params"]["square"]["n_queries"] == 50
    default = suite.validate_params({})
    assert any(ATTACKS[a].gradient_free for a in attacks_for(default, "linf"))
    assert any(ATTACKS[a].gradient_free for a in attacks_for(default, "l2"))


CASCADE = {**QUICK, "cascade": True, "attacks": ["pgd", "fgsm", "square"], "linf_eps": [0.01, 0.03, 0.1],
           "attack_params": {"pgd": {"steps": 5}, "square": {"n_queries": 20}}}


def test_cascade_gives_the_same_robust_accuracy_for_less_work(tmp_path):
    samples = labelled(24)
    each = audit(tmp_path / "a", classifier(), samples, {**CASCADE, "cascade": False})
    turn = audit(tmp_path / "b", classifier(), samples, CASCADE)
    assert turn["metrics"]["robust_accuracy"] == each["metrics"]["robust_accuracy"]
    a, b = each["metadata"]["cost"]["linf"], turn["metadata"]["cost"]["linf"]
    assert sum(c["forward_samples"] for c in b.values()) < sum(c["forward_samples"] for c in a.values())
    # per_attack under cascade: robust after the attacks so far, so it only falls
    per = turn["metrics"]["per_attack"]["linf"]
    for k in ("eps_0p01", "eps_0p03", "eps_0p1"):
        vals = [per[a][k]["value"] for a in ("pgd", "fgsm", "square")]
        assert vals == sorted(vals, reverse=True)
        assert vals[-1] == turn["metrics"]["robust_accuracy"]["linf"][k]["value"]
        assert per["pgd"][k]["cumulative"] is True
    assert turn["metadata"]["attacks"]["linf"] == ["pgd", "fgsm", "square"] and turn["metadata"]["cascade"]


def test_cost_merges_exactly_across_shards(tmp_path):
    """The merged cost is the sum of what each shard spent (the work itself may differ from an
    unsharded run: a batch whose samples all fell skips its backward pass)."""
    samples = labelled(17)
    split = audit(tmp_path / "all", classifier(), samples, CASCADE, shards=3)
    parts = [audit(tmp_path / str(i), classifier(), shard, CASCADE) for i, shard in enumerate(samples.shards(3))]
    for name, c in split["metadata"]["cost"]["linf"].items():
        for key in ("forward_samples", "backward_samples", "calls"):
            assert c[key] == sum(p["metadata"]["cost"]["linf"][name][key] for p in parts), (name, key)
    assert split["metadata"]["cost"]["linf"]["square"]["backward_samples"] == 0
    assert split["metadata"]["cost"]["linf"]["square"]["forward_samples"] > 0
    assert split["metadata"]["cost"]["linf"]["pgd"]["backward_samples"] > 0


def test_weaker_attack_stronger_seen_under_cascade(tmp_path):
    # FGSM runs on what PGD left: a PGD that cannot move leaves FGSM samples to fool
    params = {**QUICK, "cascade": True, "attacks": ["pgd", "fgsm"],
              "attack_params": {"pgd": {"steps": 5, "rel_stepsize": 1e-6, "random_start": False}}}
    entry = audit(tmp_path, classifier(), labelled(20), params)
    flags = [w for w in entry["warnings"] if w["code"] == "weaker_attack_stronger"]
    assert flags and flags[0]["details"]["stronger"] == "pgd"
    assert "weaker_attack_stronger" in entry["unreliable"]["flags"]
    assert "per_attack.linf.pgd.eps_0p02" in entry["unreliable"]["metrics"]
    # the other order cannot see it: PGD never ran where FGSM succeeded
    other = audit(tmp_path / "b", classifier(), labelled(20), {**params, "attacks": ["fgsm", "pgd"]})
    assert "weaker_attack_stronger" not in {w["code"] for w in other["warnings"]}


def test_gradient_free_attack_backs_robust_accuracy_of_a_masked_model(tmp_path):
    params = {**CASCADE, "attacks": ["pgd", "square"]}
    entry = audit(tmp_path, classifier(Rounded(1, 10)), labelled(20), params)
    shaky = entry["unreliable"]
    assert "zero_gradients" in shaky["flags"] and shaky["gradient_free"] == {"linf": ["square"]}
    assert "robust_accuracy.linf.eps_0p1" not in shaky["metrics"]
    assert "per_attack.linf.square.eps_0p1" not in shaky["metrics"]
    assert "per_attack.linf.pgd.eps_0p1" in shaky["metrics"]
    assert "not_attacked" not in shaky["metrics"]
