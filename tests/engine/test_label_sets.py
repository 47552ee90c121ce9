"""Label sets (multi-label accuracy): npz ``label_sets`` arrays and JSON files, hostile files, the clean
suite's multi-label metrics and the attacks suite's multi-label success, each against a direct count."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine.test_attacks_suite import audit, classifier, labelled
from tests.tiny import random_samples, tiny_classifier
from worker.engine.datasets import DataRoots, DatasetRef, load_samples
from worker.engine.datasets.label_sets import MAX_LABEL_SETS_BYTES
from worker.engine.errors import DatasetError, PathNotAllowedError, SpecError
from worker.engine.metrics import iter_leaves
from worker.engine.runner import align_labels, run_suite
from worker.engine.suites import get_suite
from worker.engine.suites.base import ArtifactStore, SuiteContext

NAMES = np.array(["cat", "dog", "fox"])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def roots(data: Path) -> DataRoots:
    return DataRoots([data])


def six(data: Path, **extra: np.ndarray) -> None:
    """Six 2x2 images of three classes (two each)."""
    np.savez(data / "six.npz", images=np.zeros((6, 2, 2), np.uint8), labels=np.array([0, 1, 2, 0, 1, 2]),
             class_names=NAMES, **extra)


def load(roots: DataRoots, **ref: object):
    return load_samples(DatasetRef.parse({"kind": "npz", "path": "six.npz", "n_samples": 6, **ref}), roots=roots)


# -- sources ----------------------------------------------------------------------------------

def test_npz_label_sets_array(data: Path, roots: DataRoots) -> None:
    hot = np.eye(3, dtype=np.uint8)[[0, 1, 2, 0, 1, 2]]
    hot[0, 1] = 1  # item 0: cat and dog
    hot[5] = 0  # item 5: no valid class
    six(data, label_sets=hot)
    samples = load(roots)
    by_id = dict(zip(samples.ids, samples.label_sets or []))
    assert by_id == {"npz:0": (0, 1), "npz:1": (1,), "npz:2": (2,), "npz:3": (0,), "npz:4": (1,), "npz:5": ()}
    six(data, label_sets=hot.astype(bool))
    assert dict(zip(load(roots).ids, load(roots).label_sets or [])) == by_id
    six(data)  # without the array nothing changes
    assert load(roots).label_sets is None


@pytest.mark.parametrize("hot, fragment", [
    (np.eye(3, dtype=np.uint8)[[1, 1, 2, 0, 1, 2]], "row's own label is not set (rows [0])"),
    (np.eye(3, dtype=np.uint8)[[0, 1, 2, 0, 1, 2]] * 2, "0 and 1 only"),
    (np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]], "bool or uint8"),
    (np.ones((6, 4), np.uint8), "4 columns but 'class_names' has 3"),
    (np.ones((5, 3), np.uint8), "N = 6"),
])
def test_bad_npz_label_sets(data: Path, roots: DataRoots, hot: np.ndarray, fragment: str) -> None:
    six(data, label_sets=hot)
    with pytest.raises(DatasetError) as info:
        load(roots)
    assert fragment in info.value.message


def test_json_label_sets_by_index_and_name(data: Path, roots: DataRoots) -> None:
    six(data)
    (data / "real.json").write_text(json.dumps({"npz:0": [0, "dog"], "npz:2": [], "npz:4": ["fox", 1]}))
    samples = load(roots, label_sets="real.json")
    by_id = dict(zip(samples.ids, samples.label_sets or []))
    # listed items get the file's set; the others keep their own label
    assert by_id == {"npz:0": (0, 1), "npz:1": (1,), "npz:2": (), "npz:3": (0,), "npz:4": (1, 2), "npz:5": (2,)}
    assert samples.reference["label_sets"] == "real.json"


def test_label_sets_follow_the_labels_when_classes_are_reordered(data: Path, roots: DataRoots) -> None:
    six(data)
    (data / "real.json").write_text(json.dumps({"npz:0": ["cat", "dog"]}))
    samples = load(roots, label_sets="real.json")
    card = tiny_classifier(num_classes=3).card
    card_names = ["fox", "dog", "cat"]  # the model orders the classes otherwise: matched by name
    object.__setattr__(card, "class_names", card_names)
    assert align_labels(samples, card) == []
    by_id = dict(zip(samples.ids, samples.label_sets or []))
    assert by_id["npz:0"] == (1, 2) and by_id["npz:5"] == (0,)
    assert all(int(y) in s for y, s in zip(samples.labels, samples.label_sets or []) if s)


@pytest.mark.parametrize("content, fragment", [
    ({"npz:9": [0]}, "item ids the dataset does not have"),
    ({"imagefolder:x.png": [0]}, "item ids the dataset does not have"),
    ({"npz:0": ["zebra"]}, "'zebra' is not one of the dataset's classes"),
    ({"npz:0": [3]}, "class index 3 is outside 0..2"),
    ({"npz:0": [True]}, "class indices or names"),
    ({"npz:0": [0.0]}, "class indices or names"),
    ({"npz:0": [0, "cat"]}, "names a class twice"),
    ({"npz:0": "cat"}, "must be a list"),
    (["npz:0", "cat"], "must be a JSON object"),
    ({"npz:0": [[0]]}, "nested 3 levels deep"),
])
def test_bad_label_set_files(data: Path, roots: DataRoots, content: object, fragment: str) -> None:
    six(data)
    (data / "bad.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError) as info:
        load(roots, label_sets="bad.json")
    assert fragment in info.value.message


def test_hostile_label_set_paths(tmp_path: Path, data: Path, roots: DataRoots) -> None:
    six(data)
    (tmp_path / "outside.json").write_text(json.dumps({"npz:0": [0, 1]}))
    with pytest.raises(PathNotAllowedError, match="outside the data roots"):
        load(roots, label_sets="../outside.json")
    with pytest.raises(PathNotAllowedError):
        load(roots, label_sets=str(tmp_path / "outside.json"))
    (data / "link.json").symlink_to(tmp_path / "outside.json")  # a symlink that leads out
    with pytest.raises(PathNotAllowedError):
        load(roots, label_sets="link.json")
    os.mkfifo(data / "fifo.json")  # would block a reader: refused before it is opened
    with pytest.raises(DatasetError, match="not a regular file"):
        load(roots, label_sets="fifo.json")
    (data / "dir.json").mkdir()
    with pytest.raises(DatasetError, match="not a regular file"):
        load(roots, label_sets="dir.json")
    with pytest.raises(DatasetError, match="not found"):
        load(roots, label_sets="missing.json")
    big = data / "big.json"
    with big.open("wb") as fh:  # sparse: above the limit without writing it
        fh.truncate(MAX_LABEL_SETS_BYTES + 1)
    with pytest.raises(DatasetError, match="above the .*-byte limit"):
        load(roots, label_sets="big.json")
    (data / "both.json").write_text("{}")
    six(data, label_sets=np.eye(3, dtype=bool)[[0, 1, 2, 0, 1, 2]])
    with pytest.raises(DatasetError, match="give the label sets once"):
        load(roots, label_sets="both.json")


def test_reference_key_and_string_form() -> None:
    ref = DatasetRef.parse({"kind": "builtin", "name": "digits", "label_sets": "real.json"})
    assert ref.to_dict()["label_sets"] == "real.json" and str(ref) == "builtin:digits:test"
    assert "label_sets" not in DatasetRef.parse("builtin:digits").to_dict()
    with pytest.raises(DatasetError, match="label_sets"):
        DatasetRef.parse({"kind": "builtin", "name": "digits", "label_sets": 3})


# -- clean ------------------------------------------------------------------------------------

def clean_entry(tmp_path: Path, samples, shards: int = 1) -> dict:
    ctx = SuiteContext(classifier=tiny_classifier(), artifacts=ArtifactStore(tmp_path / "artifacts"))
    return run_suite("clean", get_suite("clean").validate_params({}), ctx, samples, shards=shards)


def test_label_sets_that_make_known_images_correct_raise_top1_by_that_count(tmp_path: Path) -> None:
    samples = random_samples(40)
    plain = clean_entry(tmp_path, samples)
    assert "multilabel" not in plain["metrics"]
    with torch.no_grad():
        pred = tiny_classifier()(samples.prepared(tiny_classifier().card)).argmax(1)
    wrong = [i for i in range(40) if int(pred[i]) != int(samples.labels[i])]
    fixed = wrong[:7]  # these get their predicted class as a second valid label
    sets = [tuple(sorted({int(y)} | ({int(pred[i])} if i in fixed else set()))) for i, y in enumerate(samples.labels)]
    sets[wrong[7]] = ()  # and one wrong image has no valid class at all
    samples.label_sets = sets
    entry = clean_entry(tmp_path, samples, shards=3)
    ml = entry["metrics"]["multilabel"]
    top1 = plain["metrics"]["top1"]["value"] * 40
    assert ml["top1"]["n"] == 39 and ml["empty_sets"]["value"] == 1
    assert round(ml["top1"]["value"] * 39) == round(top1) + 7
    assert ml["images_with_several"]["value"] == pytest.approx(7 / 40)
    # variable top-k, directly: the share of each set among its |set| most probable classes
    with torch.no_grad():
        probs = torch.softmax(tiny_classifier()(samples.prepared(tiny_classifier().card)).double(), 1)
    shares = [len(set(s) & set(probs[i].topk(len(s)).indices.tolist())) / len(s) for i, s in enumerate(sets) if s]
    assert ml["variable_topk"]["value"] == pytest.approx(sum(shares) / len(shares), abs=1e-12)
    # everything single-label is untouched
    assert {k: v for k, v in entry["metrics"].items() if k != "multilabel"} == plain["metrics"]


def test_a_gate_on_a_multilabel_metric_needs_label_sets(tmp_path: Path, demo_model: Path) -> None:
    from worker.engine.runner import run_audit
    from worker.engine.spec import AuditSpec

    spec = AuditSpec.from_dict({"model": str(demo_model), "dataset": {"kind": "builtin", "name": "digits",
                                                                     "n_samples": 10},
                                "suites": ["clean"], "gates": ["clean.multilabel.top1 >= 0.9"], "device": "cpu"})
    with pytest.raises(SpecError, match="carries no label sets"):
        run_audit(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "report.json").exists()


# -- attacks ----------------------------------------------------------------------------------

SMALL = {"norms": ["linf"], "linf_eps": [0.01, 0.03], "attacks": ["pgd"], "minimal": "none",
         "attack_params": {"pgd": {"steps": 3}}, "targeted": {"enabled": False}, "batch_size": 4}


def test_multilabel_success_against_a_direct_count(tmp_path: Path) -> None:
    clf = classifier()
    samples = labelled(10)
    samples.labels[:3] = (samples.labels[:3] + 1) % 10  # three clean mistakes
    plain = audit(tmp_path / "plain", clf, samples, SMALL)
    assert "multilabel" not in plain["metrics"] and "multilabel_success" not in plain["params"]
    attacks = plain["metrics"]["robust_accuracy"]["linf"]
    # every adversarial class the single-label run found becomes a valid label: each clean-correct image is
    # then multi-label robust at every budget, and the clean mistakes (label set = their label) are not
    adv: dict[str, set[int]] = {}
    ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(tmp_path / "x"), seed=7)
    partial = get_suite("attacks").run(ctx, samples, get_suite("attacks").validate_params(SMALL))
    for sid, rec in partial["samples"].items():
        adv[sid] = {c for c in rec["attacks"]["linf"]["adv_class"] or [] if c is not None}
    widened = copy.deepcopy(samples)
    widened.label_sets = [tuple(sorted({int(y)} | adv[sid])) for sid, y in zip(samples.ids, samples.labels)]
    both = audit(tmp_path / "both", clf, widened, SMALL, shards=3)
    ml = both["metrics"]["multilabel"]["robust_accuracy"]["linf"]
    assert all(leaf["value"] == pytest.approx(7 / 10) for leaf in ml.values())
    assert both["metadata"]["multilabel_success"] is True
    # single-label figures are reported as before
    assert both["metrics"]["robust_accuracy"]["linf"] == attacks
    # the label alone as the set: multi-label robust accuracy is the single-label one
    own = copy.deepcopy(samples)
    own.label_sets = [(int(y),) for y in samples.labels]
    same = audit(tmp_path / "own", clf, own, SMALL)
    for key, leaf in same["metrics"]["multilabel"]["robust_accuracy"]["linf"].items():
        assert leaf["value"] == attacks[key]["value"]
    # a clean mistake whose prediction is another valid label is attacked away from that class
    alt = copy.deepcopy(own)
    alt.label_sets = [tuple(sorted({int(y), int(t)})) for y, t in zip(own.labels, labelled(10).labels)]
    got = audit(tmp_path / "alt", clf, alt, SMALL)
    assert got["metadata"]["cost"]["linf"]["pgd"]["calls"] > same["metadata"]["cost"]["linf"]["pgd"]["calls"]
    # switched off: no multi-label numbers; switched on without sets: refused
    off = audit(tmp_path / "off", clf, own, {**SMALL, "multilabel_success": False})
    assert "multilabel" not in off["metrics"] and off["params"]["multilabel_success"] is False
    with pytest.raises(SpecError, match="no label sets"):
        audit(tmp_path / "on", clf, samples, {**SMALL, "multilabel_success": True})


def test_the_multilabel_catalog(tmp_path: Path) -> None:
    suite = get_suite("attacks")
    paths = suite.metric_paths(suite.validate_params(SMALL))
    assert "multilabel.robust_accuracy.linf.eps_0p01" in paths and "multilabel.empty_sets" in paths
    assert not [p for p in suite.metric_paths(suite.validate_params({**SMALL, "multilabel_success": False}))
                if p.startswith("multilabel.")]
    assert "multilabel.top1" in get_suite("clean").metric_paths({"ece_bins": 15})
    samples = labelled(6)
    samples.label_sets = [(int(y),) for y in samples.labels]
    entry = audit(tmp_path, classifier(), samples, SMALL)
    leaves = {p for p, _ in iter_leaves(entry["metrics"]) if p.startswith("multilabel.")}
    assert leaves == {p for p in paths if p.startswith("multilabel.")}
