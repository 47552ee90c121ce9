"""The shift suite against independent computations: two datasets with equal per-bin accuracy where the
second holds more uncertain images (naive drop large, controlled drop 0), numpy's quantiles and bins as
the oracle of the binning, exact merge of shards, and the report.html plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.tiny import tiny_card
from worker.engine.classifier import Classifier
from worker.engine.datasets import DataRoots, DatasetRef, load_samples
from worker.engine.errors import SpecError
from worker.engine.html.plots import shift_accuracy
from worker.engine.metrics import iter_leaves, path_matches
from worker.engine.runner import run_suite
from worker.engine.suites import get_suite
from worker.engine.suites.base import ArtifactStore, SuiteContext
from worker.engine.suites.shift import binning

#: confidence levels, most certain first, and the accuracy the model has at each
SHARPNESS = (6.0, 3.0, 1.5, 0.5)
ACCURACY = (0.9, 0.7, 0.5, 0.3)


class Encoded(nn.Module):
    """Reads its answer off the image: pixel (0, 0) is the predicted class (x 9), pixel (0, 1) the
    confidence level (x 3); logits = sharpness x one-hot. So an image's uncertainty and prediction
    are whatever the test wrote into it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = torch.round(x[:, 0, 0, 0] * 9).long()
        level = torch.round(x[:, 0, 0, 1] * 3).long()
        sharp = torch.tensor(SHARPNESS, dtype=x.dtype)[level]
        return sharp[:, None] * nn.functional.one_hot(cls, 10).to(x.dtype)


def encoded_classifier() -> Classifier:
    return Classifier(Encoded(), tiny_card(size=4, mean=[0.0], std=[1.0]), sha256="0" * 64)


def write_set(path: Path, per_level: tuple[int, ...]) -> None:
    """Images whose predictions are right in exactly ACCURACY[level] of each level's images."""
    images, labels = [], []
    for level, count in enumerate(per_level):
        right = round(ACCURACY[level] * count)
        for i in range(count):
            img = np.zeros((4, 4), np.uint8)
            pred = i % 10
            img[0, 0], img[0, 1] = round(pred / 9 * 255), round(level / 3 * 255)
            images.append(img)
            labels.append(pred if i < right else (pred + 1) % 10)
    np.savez(path, images=np.stack(images), labels=np.array(labels))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    write_set(root / "ref.npz", (40, 40, 40, 40))
    write_set(root / "other.npz", (10, 20, 40, 80))  # the same accuracy per level, more uncertain images
    return root


def shift(tmp_path: Path, data: Path, shards: int = 1, **params: object) -> dict:
    roots = DataRoots([data])
    clf = encoded_classifier()
    samples = load_samples(DatasetRef.parse({"kind": "npz", "path": "ref.npz", "n_samples": 1000}), roots=roots)
    ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(tmp_path / "artifacts"), seed=3, roots=roots)
    raw = {"dataset": {"kind": "npz", "path": "other.npz", "n_samples": 1000}, "bins": 4, **params}
    return run_suite("shift", get_suite("shift").validate_params(raw), ctx, samples, shards=shards)


def test_equal_per_bin_accuracy_more_uncertain_images(tmp_path: Path, data: Path) -> None:
    entry = shift(tmp_path, data)
    m = entry["metrics"]
    ref_acc, other_acc = 0.6, (9 + 14 + 20 + 24) / 150
    assert m["accuracy"]["reference"]["value"] == pytest.approx(ref_acc)
    assert m["accuracy"]["other"]["value"] == pytest.approx(other_acc)
    assert m["drop"]["value"] == pytest.approx(ref_acc - other_acc) and m["drop"]["value"] > 0.15
    assert abs(m["controlled_drop"]["value"]) < 1e-12
    low, high = m["controlled_drop"]["ci95"]
    assert low <= 0 <= high and m["controlled_drop"]["ci95_method"] == "percentile bootstrap"
    assert m["drop"]["ci95"][0] > 0  # the naive drop is real at this sample size
    assert m["coverage"]["value"] == 1.0
    for k, (count_ref, count_other) in enumerate(zip((40, 40, 40, 40), (10, 20, 40, 80))):
        b = m["bins"][str(k)]
        assert (b["count_reference"]["value"], b["count_other"]["value"]) == (count_ref, count_other)
        assert b["reference"]["value"] == pytest.approx(ACCURACY[k]) == b["other"]["value"]
    # with more bins than distinct uncertainties, ties share a bin: the answer does not change
    entry8 = shift(tmp_path / "eight", data, bins=8, uncertainty="entropy")
    assert abs(entry8["metrics"]["controlled_drop"]["value"]) < 1e-12
    assert entry8["metrics"]["mean_uncertainty"]["reference"]["unit"] == "nats"
    # the gate the issue names
    patterns = get_suite("shift").metric_paths(get_suite("shift").validate_params({"bins": 4}))
    assert "controlled_drop" in patterns and "bins.3.count_other" in patterns
    leaves = dict(iter_leaves(m))
    assert all(any(path_matches(p, path) for p in patterns) for path in leaves)
    assert all(p in leaves for p in patterns)


def test_one_and_three_shards_give_identical_results(tmp_path: Path, data: Path) -> None:
    one = shift(tmp_path / "one", data, resamples=200)
    three = shift(tmp_path / "three", data, shards=3, resamples=200)
    assert json.dumps(one["metrics"], sort_keys=True) == json.dumps(three["metrics"], sort_keys=True)
    assert one["warnings"] == three["warnings"] and one["metadata"] == three["metadata"]


def test_binning_against_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    u_ref, u_other = torch.rand(97, generator=gen).double(), torch.rand(61, generator=gen).double() ** 0.5
    c_ref, c_other = torch.rand(97, generator=gen) < 0.7, torch.rand(61, generator=gen) < 0.6
    bins = 6
    inner = binning.edges(u_ref.tolist(), bins)
    expected = np.quantile(u_ref.numpy(), np.arange(1, bins) / bins, method="inverted_cdf")
    assert inner == pytest.approx(expected.tolist(), abs=0)
    b_ref = np.digitize(u_ref.numpy(), expected, right=True)
    b_other = np.digitize(u_other.numpy(), expected, right=True)
    tab = binning.table(u_ref, c_ref, u_other, c_other, inner)
    assert tab.count_ref == np.bincount(b_ref, minlength=bins).tolist()
    assert tab.count_other == np.bincount(b_other, minlength=bins).tolist()
    w = np.bincount(b_ref, minlength=bins) / 97
    acc_ref = np.array([c_ref.numpy()[b_ref == k].mean() for k in range(bins)])
    acc_other = np.array([c_other.numpy()[b_other == k].mean() for k in range(bins)])
    assert tab.controlled_drop() == pytest.approx(c_ref.double().mean().item() - float((w * acc_other).sum()))
    assert tab.controlled_drop() == pytest.approx(float((w * (acc_ref - acc_other)).sum()))
    assert tab.drop() == pytest.approx(c_ref.double().mean().item() - c_other.double().mean().item())
    # a bin the second set leaves empty is left out of both terms
    keep = u_other > torch.tensor(inner[0])
    gap = binning.table(u_ref, c_ref, u_other[keep], c_other[keep], inner)
    shared = [k for k in range(bins) if k > 0]
    ws = np.bincount(b_ref, minlength=bins)[shared] / np.bincount(b_ref, minlength=bins)[shared].sum()
    acc_other_kept = np.array([c_other.numpy()[keep.numpy() & (b_other == k)].mean() for k in shared])
    assert gap.coverage() == pytest.approx(1 - np.mean(b_ref == 0))
    assert gap.controlled_drop() == pytest.approx(float((ws * (acc_ref[shared] - acc_other_kept)).sum()))
    a = binning.bootstrap(u_ref, c_ref, u_other, c_other, inner, 300, torch.Generator().manual_seed(5))
    b = binning.bootstrap(u_ref, c_ref, u_other, c_other, inner, 300, torch.Generator().manual_seed(5))
    assert a == b and a[0] is not None and a[0][0] < tab.drop() < a[0][1]  # type: ignore[index]


def test_the_second_dataset_is_required_and_validated() -> None:
    suite = get_suite("shift")
    params = suite.validate_params({})
    assert params["dataset"] is None  # validates (the registry and `robustaudit metrics` need defaults)
    with pytest.raises(SpecError, match="shift.dataset"):
        suite.check_inputs(params, None, None)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="shift.dataset: .*unknown dataset kind"):
        suite.validate_params({"dataset": "nope:x"})
    assert suite.validate_params({"dataset": "builtin:digits:train"})["dataset"] == {
        "kind": "builtin", "name": "digits", "split": "train", "n_samples": 100, "seed": 0}


def test_empty_bins_and_the_plot(tmp_path: Path, data: Path) -> None:
    write_set(data / "other.npz", (0, 0, 40, 80))  # no certain images at all
    entry = shift(tmp_path, data)
    m = entry["metrics"]
    assert m["coverage"]["value"] == 0.5 and m["bins"]["0"]["other"]["value"] is None
    assert abs(m["controlled_drop"]["value"]) < 1e-12  # over the shared bins, still no gap
    warned = {w["code"]: w["details"] for w in entry["warnings"]}
    assert warned["shift_empty_bins"] == {"bins": [0, 1], "coverage": 0.5}
    assert warned["n_samples_above_dataset"] == {"dataset": "shift", "requested": 1000, "available": 120}
    plot = shift_accuracy(entry)
    assert plot is not None and plot.png.startswith(b"\x89PNG") and "160 reference, 120 second" in plot.title


def test_cli_audit_with_a_second_dataset_and_label_sets(tmp_path: Path, data_root: Path, demo_model: Path,
                                                        report_validator, capsys) -> None:
    from worker.engine.cli import main

    drawn = load_samples(DatasetRef.parse("builtin:digits", n_samples=20))
    first, label = drawn.ids[0], int(drawn.labels[0])  # e.g. digits:1203, whose set gets a second class
    (data_root / "real.json").write_text(json.dumps({first: sorted({label, (label + 1) % 10})}))
    out = tmp_path / "out"
    code = main(["audit", "--model", str(demo_model), "--dataset", "builtin:digits", "--n-samples", "20",
                 "--label-sets", "real.json", "--suite", "shift", "--set", "shift.dataset=builtin:digits:train",
                 "--set", "shift.bins=3", "--set", "shift.resamples=100", "--gate", "shift.controlled_drop <= 0.5",
                 "--gate", "clean.multilabel.images_with_several >= 0.05", "--device", "cpu", "--out", str(out),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    report_validator.validate(report)
    assert report["dataset"]["reference"]["label_sets"] == "real.json"
    assert report["suites"]["clean"]["metrics"]["multilabel"]["images_with_several"]["value"] == pytest.approx(1 / 20)
    assert report["suites"]["shift"]["metrics"]["accuracy"]["other"]["n"] == 100
    assert "Accuracy against uncertainty" in (out / "report.html").read_text()
    assert main(["metrics", "--json"]) == 0
    catalog = json.loads(capsys.readouterr().out)
    assert {"drop", "controlled_drop", "accuracy.reference", "bins.9.count_other"} <= set(catalog["shift"])
    assert {"multilabel.top1", "multilabel.variable_topk", "multilabel.images_with_several"} <= set(catalog["clean"])
    assert "multilabel.robust_accuracy.linf.eps_0p003922" in catalog["attacks"]
