"""Parts 2e-2g of the attacks suite: regional masks, loss comparison and transferability on
tiny models; exact shard merging; metrics against direct computations; the input errors."""

import json
import statistics

import pytest
import torch

from tests.tiny import TinyNet, random_samples, tiny_card
from worker.engine.attacks import IterativeLoss
from worker.engine.attacks.masks import make_mask
from worker.engine.classifier import Classifier
from worker.engine.errors import SpecError
from worker.engine.metrics import iter_leaves, path_matches
from worker.engine.runner import run_suite
from worker.engine.suites import get_suite
from worker.engine.suites.attacks.iterative_runs import perturbation_norms
from worker.engine.suites.base import ArtifactStore, SuiteContext

BASE = {"norms": ["linf", "l2"], "attacks": ["fgsm", "pgd"], "linf_eps": [0.05, 0.2], "l2_eps": [1.0],
        "attack_params": {"pgd": {"steps": 4}}, "minimal": "none", "targeted": {"enabled": False}, "batch_size": 5}
REGIONAL = {"enabled": True, "fractions": [0.17, 0.45], "steps": 8, "step": 0.05}
LOSSES = {"enabled": True, "steps": 8, "step": 0.03}
EXTRAS = {"regional": REGIONAL, "loss_comparison": LOSSES}


def classifier(size=32, num_classes=10, seed=0):
    return Classifier(TinyNet(1, num_classes, seed=seed), tiny_card(1, size, num_classes), sha256="0" * 64)


def labelled(n, wrong=0, size=32):
    """Random images labelled by the audited tiny net; the first ``wrong`` get another label."""
    samples = random_samples(n, size=size)
    with torch.no_grad():
        samples.labels = classifier(size)(samples.prepared(tiny_card(1, size))).argmax(1)
    samples.labels[:wrong] = (samples.labels[:wrong] + 1) % 10
    return samples


def surrogate(tmp_path, seed=1, num_classes=10, size=32):
    """A TorchScript tiny net with its card, as the request would name it."""
    path = tmp_path / f"sur_{seed}_{num_classes}_{size}.pt"
    torch.jit.script(TinyNet(1, num_classes, seed=seed)).save(str(path))
    card = {"format": "torchscript", "num_classes": num_classes, "input_size": [1, size, size],
            "mean": [0.5], "std": [0.25]}
    return {"model": str(path), "card": card}


def audit(tmp_path, clf, samples, raw, shards=1, progress=None):
    ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(tmp_path / "artifacts"), seed=3,
                       on_progress=progress)
    suite = get_suite("attacks")
    return run_suite("attacks", suite.validate_params(raw), ctx, samples, shards=shards)


def test_sharded_equals_unsharded_and_every_leaf_is_cataloged(tmp_path):
    raw = {**BASE, **EXTRAS, "transfer": surrogate(tmp_path)}
    clf, samples = classifier(), labelled(13, wrong=2)
    whole = audit(tmp_path / "a", clf, samples, raw)
    split = audit(tmp_path / "b", clf, samples, raw, shards=3)
    assert whole["metrics"] == split["metrics"]
    assert whole["artifacts"] == split["artifacts"]
    m = whole["metrics"]
    assert m["regional"]["untargeted"]["full"]["success_rate"]["n"] == 11  # 13 minus the 2 clean mistakes
    assert m["regional"]["targeted"]["square"]["f_0p45"]["success_rate"]["value"] > 0
    assert m["loss_comparison"]["sign_ce"]["iterations"]["median"]["n"] > 0
    assert m["transfer"]["linf"]["pgd"]["eps_0p2"]["transfer_rate"]["n"] > 0
    patterns = get_suite("attacks").metric_paths(get_suite("attacks").validate_params(raw))
    leaves = dict(iter_leaves(whole["metrics"]))
    for path in leaves:
        assert any(path_matches(p, path) for p in patterns), path
    for p in patterns:
        if "{" not in p and not p.startswith("multilabel."):  # multilabel.*: only with label sets
            assert p in leaves, p
    for art in whole["artifacts"]:
        assert (tmp_path / "a" / art).stat().st_size > (1000 if art.endswith(".png") else 0), art
    assert sum("regional_mask_" in a for a in whole["artifacts"]) == 6  # 3 shapes x 2 fractions


def test_regional_metrics_match_a_direct_run_and_misclassified_are_apart(tmp_path):
    clf, samples = classifier(), labelled(12, wrong=3)
    raw = {**BASE, "regional": {**REGIONAL, "step": 0.002}}  # small steps: some hold
    m = audit(tmp_path, clf, samples, raw)["metrics"]["regional"]
    x = samples.prepared(clf.card)[3:]
    y = samples.labels[3:]  # the 9 correctly classified images: the only ones attacked
    mask = make_mask("square", height=32, width=32, fraction=0.17)
    res = IterativeLoss(step_size=0.002, steps=8)(clf, x, y, [1.0], mask=mask[None, None])
    ok = res.success[0]
    assert 0 < int(ok.sum()) < 9  # a mask where some images hold and some fall
    l0, l2, linf = perturbation_norms(x, res.adversarials[0])
    leaf = m["untargeted"]["square"]["f_0p17"]
    assert leaf["success_rate"]["n"] == 9 and leaf["success_rate"]["value"] == pytest.approx(ok.double().mean())
    assert leaf["fraction"]["value"] == pytest.approx(mask.double().mean().item())
    if ok.any():
        assert leaf["l2"]["value"] == pytest.approx(statistics.median([v for v, k in zip(l2, ok) if k]))
        assert leaf["linf"]["value"] == pytest.approx(statistics.median([v for v, k in zip(linf, ok) if k]))
    for mode in ("untargeted", "targeted"):
        assert m[mode]["full"]["success_rate"]["n"] == 9
        for shape in ("square", "border", "random"):
            for key, v in m[mode][shape].items():
                if v["l0"]["value"] is not None:  # only pixels of the mask may change
                    assert v["l0"]["value"] <= v["fraction"]["value"] + 1e-12, (mode, shape, key)
                assert 0 <= v["success_rate"]["value"] <= 1


def test_loss_comparison_distribution_agrees_with_its_artifact(tmp_path):
    np = pytest.importorskip("numpy")
    clf, samples = classifier(), labelled(12, wrong=2)
    entry = audit(tmp_path, clf, samples, {**BASE, "loss_comparison": {**LOSSES, "steps": 6}})
    curves = json.loads((tmp_path / "artifacts" / "attacks" / "loss_comparison.json").read_text())
    assert curves["iterations"] == list(range(7))
    for name in ("ce_l2", "sign_ce", "margin"):
        leaf = entry["metrics"]["loss_comparison"][name]
        c = curves["losses"][name]
        assert c["attacked"] == 10 and leaf["success_rate"]["n"] == 10  # the 2 clean mistakes are apart
        assert c["success_rate"][-1] == pytest.approx(leaf["success_rate"]["value"])
        its = [t for t, k in enumerate(c["first_success_counts"]) for _ in range(k)]
        assert leaf["iterations"]["median"]["n"] == len(its)
        assert 0 not in its  # correctly classified images never succeed at iteration 0
        if its:
            assert leaf["iterations"]["median"]["value"] == pytest.approx(np.median(its))
            assert leaf["iterations"]["p25"]["value"] == pytest.approx(np.percentile(its, 25))
            assert leaf["iterations"]["p75"]["value"] == pytest.approx(np.percentile(its, 75))


def test_a_surrogate_identical_to_the_target_transfers_everything(tmp_path):
    clf, samples = classifier(), labelled(10)
    raw = {**BASE, "transfer": surrogate(tmp_path, seed=0)}
    t = audit(tmp_path, clf, samples, raw)["metrics"]["transfer"]
    assert t["not_attacked"]["value"] == 0
    seen = 0
    for norm, eps_keys in (("linf", ["eps_0p05", "eps_0p2"]), ("l2", ["eps_1"])):
        for attack in ("fgsm", "pgd"):
            for k in eps_keys:
                leaf = t[norm][attack][k]
                assert leaf["surrogate_success"]["value"] == leaf["target_fooled"]["value"]
                if leaf["transfer_rate"]["n"]:
                    seen += 1
                    assert leaf["transfer_rate"]["value"] == 1.0
    assert seen > 0


def test_samples_a_model_gets_wrong_are_counted_apart_from_transfers(tmp_path):
    clf, samples = classifier(), labelled(16, wrong=2)
    sur = surrogate(tmp_path, seed=1)
    t = audit(tmp_path, clf, samples, {**BASE, "transfer": sur})["metrics"]["transfer"]
    x = samples.prepared(clf.card)
    with torch.no_grad():
        ok_target = clf(x).argmax(1).eq(samples.labels)
        ok_sur = TinyNet(1, 10, seed=1)((x - 0.5) / 0.25).argmax(1).eq(samples.labels)
    apart = int((~(ok_target & ok_sur)).sum())
    assert apart > 2  # the two clean mistakes, plus the surrogate's own
    assert t["not_attacked"]["value"] == apart
    assert t["linf"]["pgd"]["eps_0p2"]["surrogate_success"]["n"] == 16 - apart


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 5}, r"class count 5 \(the audited model has 10\)"),
    ({"size": 16}, r"input size \[1, 16, 16\] \(the audited model takes \[1, 32, 32\]\)"),
])
def test_a_surrogate_that_does_not_fit_is_a_spec_error_before_any_work(tmp_path, kwargs, message):
    calls = []
    with pytest.raises(SpecError, match=message):
        audit(tmp_path, classifier(), labelled(4), {**BASE, "transfer": surrogate(tmp_path, **kwargs)},
              progress=lambda s, f: calls.append(f))
    assert calls == []


def test_a_mask_with_no_pixel_is_a_spec_error_before_any_work(tmp_path):
    calls = []
    with pytest.raises(SpecError, match=r"square mask at fraction 0.005 selects no pixel of a 8x8 image"):
        audit(tmp_path, classifier(size=8), labelled(4, size=8),
              {**BASE, "regional": {"enabled": True, "fractions": [0.005, 0.5]}}, progress=lambda s, f: calls.append(f))
    assert calls == []


def test_param_errors():
    suite = get_suite("attacks")
    with pytest.raises(SpecError, match=r"attacks\.transfer\.model: give the surrogate's checkpoint path"):
        suite.validate_params({"transfer": {"model_id": "m-1"}})  # an id the service did not resolve
    with pytest.raises(SpecError, match=r"attacks\.transfer\.card: must be a path"):
        suite.validate_params({"transfer": {"model": "a.pt", "card": 3}})
    with pytest.raises(SpecError, match=r"attacks\.regional\.fractions: must be >= 1e-06"):
        suite.validate_params({"regional": {"fractions": [0.0]}})
    with pytest.raises(SpecError, match=r"attacks\.regional\.fractions: fractions must differ"):
        suite.validate_params({"regional": {"fractions": [0.17, 0.170001]}})
    assert suite.validate_params({})["transfer"] == {"model": None, "card": None, "model_id": None}


@pytest.mark.parametrize("old, new", [
    ({"regional_fractions": [0.2]}, "attacks.regional.fractions"),
    ({"targeted": False}, "attacks.targeted.enabled"),
    ({"loss_steps": 4}, "attacks.loss_comparison.steps"),
    ({"surrogate": {"model": "a.pt"}}, "attacks.transfer"),
])
def test_parameters_of_the_flat_shape_name_their_new_place(old, new):
    with pytest.raises(SpecError) as err:
        get_suite("attacks").validate_params(old)
    (key,) = old
    assert err.value.details["errors"] == {f"attacks.{key}": f"moved: write {new} (see docs/parameters.md)"}
