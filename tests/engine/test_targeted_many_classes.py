"""The targeted part (2b) on a model with many classes and a sample of few (issue 18: 1000 ImageNet
classes, photos of 5): targets among the classes present, a warning that says so, no empty plot,
no correlation or easiest/hardest on one or two attempts; shards merge exactly in every mode; the
10-class case keeps its targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.tiny import TinyNet, random_samples, tiny_card
from worker.engine.classifier import Classifier
from worker.engine.errors import SpecError
from worker.engine.metrics import iter_leaves
from worker.engine.runner import run_suite
from worker.engine.samples import SampleSet
from worker.engine.suites import get_suite
from worker.engine.suites.attacks.targeted import Targets, resolve_targets, top_targets
from worker.engine.suites.base import ArtifactStore, SuiteContext

CLASSES = 1000
#: the classes the sample holds, and each image's prototype amplitude (small: easy to move)
PRESENT = (3, 281, 500, 967)
AMPLITUDES = (0.05, 0.08, 0.3)
#: the cheapest untargeted core, so that the targeted part is what runs
CORE = {"norms": ["linf"], "linf_eps": [0.05], "attacks": ["fgsm"], "minimal": "none", "batch_size": 16}


class Prototypes(nn.Module):
    """Average-pool to 4x4 and score each class by a +-1 prototype: the four PRESENT classes get
    their own patterns, the other 996 a weak random one and a low bias, so an image built from a
    prototype is that class, and a targeted attack succeeds when its budget beats the amplitude."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(16, CLASSES)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(CLASSES, 16, generator=g) * 0.02)
            self.fc.bias.fill_(-2.0)
            for k, c in enumerate(PRESENT):
                self.fc.weight[c] = prototype(k)
                self.fc.bias[c] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


def prototype(k: int) -> torch.Tensor:
    """A +-1 pattern over the 16 pooled cells, distinct per k."""
    return torch.tensor([1.0 if (i >> k) & 1 or (i * (k + 3)) % 5 == 0 else -1.0 for i in range(16)])


def many_classes() -> tuple[Classifier, SampleSet]:
    """The 1000-class model and 12 images of 4 of its classes (3 amplitudes each), 32x32 grey."""
    card = tiny_card(num_classes=CLASSES, class_names=[f"c{i}" for i in range(CLASSES)])
    clf = Classifier(Prototypes(), card, sha256="0" * 64)
    images, labels, ids = [], [], []
    for k, c in enumerate(PRESENT):
        cells = prototype(k).view(1, 1, 4, 4)
        for a in AMPLITUDES:  # normalised input (x - 0.5) / 0.25 = a * prototype, per 8x8 cell
            images.append((0.5 + 0.25 * a * cells).repeat_interleave(8, 2).repeat_interleave(8, 3)[0])
            labels.append(c)
            ids.append(f"proto:{c}:{a}")
    samples = SampleSet(images=images, labels=torch.tensor(labels), ids=ids,
                        class_names=list(card.class_names), reference={"kind": "test"})
    return clf, samples


def audit(tmp_path: Path, clf: Classifier, samples: SampleSet, targeted: dict, shards: int = 1) -> dict:
    ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(tmp_path / "artifacts"), seed=3)
    run_suite("clean", get_suite("clean").validate_params({}), ctx, samples, shards=shards)
    params = get_suite("attacks").validate_params({**CORE, "targeted": {"eps": 0.03, "steps": 5, **targeted}})
    return run_suite("attacks", params, ctx, samples, shards=shards)


@pytest.fixture(scope="module")
def model() -> tuple[Classifier, SampleSet]:
    clf, samples = many_classes()
    assert clf(samples.prepared(clf.card)).argmax(1).tolist() == samples.labels.tolist()  # every image correct
    return clf, samples


def matrix(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "artifacts" / "attacks" / "targeted_matrix.json").read_text())


def codes(entry: dict) -> list[str]:
    return [w["code"] for w in entry["warnings"]]


def test_auto_targets_the_classes_present_and_says_so(tmp_path, model):
    clf, samples = model
    entry = audit(tmp_path, clf, samples, {})
    t = entry["metrics"]["targeted"]
    names = {f"c{c}" for c in PRESENT}
    # every source attacked towards the 3 other present classes: a square study of 4 classes
    assert t["success_rate"]["n"] == 12 * 3
    assert set(t["modify"]) == set(t["mimic"]) == names
    assert all(t["mimic"][c]["n"] == 9 for c in names)
    m = matrix(tmp_path)  # over the classes that take part, not 1000 x 1000
    assert m["class_indices"] == list(PRESENT) and m["class_names"] == sorted(names, key=lambda c: int(c[1:]))
    attempts = torch.tensor(m["attempts"])
    assert attempts.sum() == 36 and attempts.diagonal().sum() == 0 and (attempts.sum(0) == 9).all()
    warning = next(w for w in entry["warnings"] if w["code"] == "targeted_targets_present")
    assert "4 of the model's 1000 classes" in warning["message"] and "'top_k'" in warning["message"]
    assert warning["details"] == {"classes_present": 4, "model_classes": 1000, "targets": "present"}
    assert "targeted_few_attempts" not in codes(entry)
    meta = entry["metadata"]["targeted"]
    assert meta["targets"] == "present" and meta["requested"] == "auto" and meta["plot_note"] is None
    # the rates differ by amplitude, not by class: modify rates are equal, so easiest/hardest say so
    assert t["spearman"]["n"] == 4
    for side in ("modify", "mimic"):
        easiest, hardest = t[f"easiest_to_{side}"], t[f"hardest_to_{side}"]
        values = {t[side][c]["value"] for c in names}
        if len(values) > 1:
            assert easiest["class"] != hardest["class"] and easiest["value"] > hardest["value"]
        else:
            assert easiest["value"] is hardest["value"] is None and "same" in easiest["note"]
    assert "artifacts/attacks/modify_mimic.png" in entry["artifacts"]


def test_all_targets_on_many_classes_leave_out_what_one_attempt_cannot_tell(tmp_path, model):
    clf, samples = model
    entry = audit(tmp_path, clf, samples, {"targets": "all", "max_targets": 5})
    t = entry["metrics"]["targeted"]
    assert t["success_rate"]["n"] == 12 * 5
    assert max(leaf["n"] for leaf in t["mimic"].values()) <= 2  # random targets among 999: one or two tries
    assert t["spearman"]["value"] is None and "a rank correlation needs 3" in t["spearman"]["note"]
    for key in ("easiest_to_mimic", "hardest_to_mimic"):  # too few attempts, or the few classes with 2 tie
        assert t[key]["value"] is None and t[key]["class"] is None and t[key]["note"].startswith("undefined")
    assert not any(a.endswith("modify_mimic.png") for a in entry["artifacts"])
    assert not (tmp_path / "artifacts" / "attacks" / "modify_mimic.png").exists()
    assert "targeted_targets_present" not in codes(entry)
    few = next(w for w in entry["warnings"] if w["code"] == "targeted_few_attempts")
    assert "plot" in few["message"] and "'present'" in few["message"]
    assert "plot left out" in entry["metadata"]["targeted"]["plot_note"]


def test_top_k_targets_are_each_images_most_likely_other_classes(tmp_path, model):
    clf, samples = model
    entry = audit(tmp_path, clf, samples, {"targets": "top_k", "max_targets": 2}, shards=2)
    logits = clf(samples.prepared(clf.card)).detach()
    want = torch.zeros(CLASSES, CLASSES, dtype=torch.long)
    for row, y in zip(top_targets(logits, samples.labels, 2), samples.labels.tolist()):
        for target in row:
            want[y, target] += 1
            assert target != y
    m = matrix(tmp_path)
    index = torch.tensor(m["class_indices"])
    assert torch.equal(torch.tensor(m["attempts"]), want[index][:, index])
    assert want.sum() == torch.tensor(m["attempts"]).sum() == 24
    assert entry["metadata"]["targeted"]["targets"] == "top_k"


def test_shards_choose_the_same_present_classes(tmp_path, model):
    """A shard holds a class or two; the whole sample's classes decide its targets all the same."""
    clf, samples = model
    whole = audit(tmp_path / "one", clf, samples, {})
    split = audit(tmp_path / "three", clf, samples, {}, shards=3)
    assert dict(iter_leaves(whole["metrics"])) == dict(iter_leaves(split["metrics"]))
    assert whole["warnings"] == split["warnings"] and whole["metadata"]["targeted"] == split["metadata"]["targeted"]
    assert matrix(tmp_path / "one") == matrix(tmp_path / "three")


def test_ten_classes_keep_all_other_classes_as_targets(tmp_path):
    """The sample covers the model's classes: auto is every other class, as before (9 targets each)."""
    clf = Classifier(TinyNet(1, 10, seed=0), tiny_card(), sha256="0" * 64)
    samples = random_samples(10)
    with torch.no_grad():
        samples.labels = clf(samples.prepared(tiny_card())).argmax(1)
    auto = audit(tmp_path, clf, samples, {"max_targets": 9})
    assert auto["metadata"]["targeted"]["targets"] == "all" and "targeted_targets_present" not in codes(auto)
    m = matrix(tmp_path)
    assert m["class_indices"] == list(range(10))  # the 10 x 10 matrix, as before
    sources = torch.tensor(m["attempts"]).sum(1)
    per_class = torch.bincount(samples.labels, minlength=10)
    assert torch.equal(sources, 9 * per_class)  # every correct image aims at the 9 other classes


def test_resolving_auto():
    assert resolve_targets("auto", 1000, 5, 9) is Targets.PRESENT
    assert resolve_targets("auto", 10, 3, 9) is Targets.ALL  # every other class fits in max_targets
    assert resolve_targets("auto", 100, 60, 9) is Targets.ALL  # more than half the classes present
    assert resolve_targets("auto", 100, 50, 9) is Targets.PRESENT
    assert resolve_targets("auto", 1000, 1, 9) is Targets.ALL  # one class present: no other to aim at
    assert resolve_targets("top_k", 10, 10, 9) is Targets.TOP_K
    with pytest.raises(SpecError) as err:
        get_suite("attacks").validate_params({"targeted": {"targets": "nearest"}})
    assert "attacks.targeted.targets" in err.value.message and "top_k" in err.value.message
