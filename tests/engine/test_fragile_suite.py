"""The fragile suite end to end: against the naive loop, sharding, the crop guard, the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.engine.fragile_naive import naive_image
from tests.tiny import TinyNet, random_samples, tiny_card, tiny_classifier
from worker.engine.classifier import Classifier
from worker.engine.cli import main
from worker.engine.errors import AuditCancelled, SpecError
from worker.engine.metrics import iter_leaves, path_matches
from worker.engine.runner import run_suite
from worker.engine.samples import SampleSet
from worker.engine.suites import get_suite
from worker.engine.suites.base import ArtifactStore, SuiteContext
from worker.engine.suites.fragile.params import r_key
from worker.engine.suites.fragile.suite import total_crops

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "worker" / "engine" / "assets" / "demo"
MAP_KEYS = ("correct_l", "correct_l2", "pred_l", "pred_l2", "loose_shift", "strict_shift", "loose_shrink",
            "strict_shrink")


class TinyConv(nn.Module):
    """A 3x3 convolution, ReLU, 2x2 pooling and a linear layer: position-sensitive, seeded."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def models():
    return {
        "tinynet_rgb": Classifier(TinyNet(3, 10, seed=5), tiny_card(3, 16, 10), sha256="0" * 64),
        "tinyconv_grey": Classifier(TinyConv(seed=2), tiny_card(1, 8, 5), sha256="0" * 64),
    }


def small_images(clf, n_classes):
    """12x12 and 9x14 RGB images; each labelled with the model's class for its full view, so that
    correctness maps hold both values."""
    g = torch.Generator().manual_seed(11)
    images = [torch.rand(3, 12, 12, generator=g), torch.rand(3, 9, 14, generator=g),
              torch.rand(3, 12, 12, generator=g), torch.rand(3, 9, 14, generator=g)]
    labels = []
    for i, img in enumerate(images):
        x = torch.nn.functional.interpolate(img[None, : clf.input_size[0]] if clf.input_size[0] == 3
                                            else img.mean(0, keepdim=True)[None], size=clf.input_size[1:],
                                            mode="bilinear", align_corners=False)
        labels.append(int(clf(x).argmax()) if i % 2 == 0 else int(clf(x).argsort(descending=True)[0, 1]))
    return SampleSet(images=images, labels=torch.tensor(labels), ids=[f"img:{i}" for i in range(4)],
                     class_names=[str(c) for c in range(n_classes)], reference={"kind": "test"})


def context(tmp_path, clf):
    return SuiteContext(classifier=clf, artifacts=ArtifactStore(tmp_path / "artifacts"), seed=3)


def untimed(tree):
    """Metrics without the timing leaves (crops per second), which no two runs share."""
    out = {}
    for key, node in tree.items():
        if isinstance(node, dict) and node.get("timing"):
            continue
        out[key] = untimed(node) if isinstance(node, dict) and "value" not in node else node
    return out


@pytest.mark.parametrize("name", ["tinynet_rgb", "tinyconv_grey"])
def test_maps_identical_to_naive_loop(tmp_path, name):
    clf = models()[name]
    samples = small_images(clf, clf.num_classes)
    rs = [0.3, 0.6, 0.8]
    k = 2 if name == "tinynet_rgb" else 1
    params = get_suite("fragile").validate_params({"region_fractions": rs, "top_k": k, "pngs": False})
    entry = run_suite("fragile", params, context(tmp_path, clf), samples)
    mixed = 0
    for sid, img, label in zip(samples.ids, samples.images, samples.labels.tolist()):
        for r in rs:
            ref = naive_image(clf, img, label, r, k=k)
            key = r_key(r)
            got = np.load(tmp_path / "artifacts" / "fragile" / f"{sid.replace(':', '_')}_{key}.npz")
            for m in MAP_KEYS:
                assert got[m].tolist() == ref[m], (sid, r, m)
            assert got["correct_l"].dtype == np.int8 and got["confidence_l"].dtype == np.float32
            np.testing.assert_allclose(got["confidence_l"], np.array(ref["confidence_l"]), rtol=0, atol=1e-5)
            mixed += 0 < np.mean(ref["correct_l"]) < 1
    assert mixed >= 4, "the test images should give maps with both correct and incorrect regions"
    assert entry["status"] == "completed"


def test_metrics_are_the_per_image_fractions(tmp_path):
    clf = models()["tinynet_rgb"]
    samples = small_images(clf, 10)
    params = get_suite("fragile").validate_params({"region_fractions": [0.6], "pngs": False})
    entry = run_suite("fragile", params, context(tmp_path, clf), samples)
    fracs, acc = [], []
    for img, label in zip(samples.images, samples.labels.tolist()):
        ref = naive_image(clf, img, label, 0.6)
        cells = np.array(ref["loose_shrink"])
        fracs.append(np.count_nonzero(cells == -1) / cells.size)
        acc.append(np.mean(ref["correct_l"]))
    m = entry["metrics"]["r_0p6"]
    assert m["loose_shrink"]["negative"]["mean"]["value"] == pytest.approx(np.mean(fracs), abs=1e-12)
    assert m["loose_shrink"]["negative"]["median"]["value"] == pytest.approx(np.median(fracs), abs=1e-12)
    assert m["region_accuracy"]["mean"]["value"] == pytest.approx(np.mean(acc), abs=1e-12)
    lo, hi = m["region_accuracy"]["ci95_low"]["value"], m["region_accuracy"]["ci95_high"]["value"]
    assert min(acc) <= lo <= np.mean(acc) <= hi <= max(acc)
    assert m["crops"]["value"] == total_crops([0.6], [(12, 12), (9, 14)] * 2)
    assert m["crops_per_second"]["value"] > 0 and m["crops_per_second"]["timing"] is True


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_equals_unsharded(tmp_path, shards):
    clf = tiny_classifier(seed=1)
    samples = random_samples(7, size=14, seed=2)
    params = get_suite("fragile").validate_params({"region_fractions": [0.3, 0.7], "pngs": False})
    whole = run_suite("fragile", params, context(tmp_path / "a", clf), samples, shards=1)
    split = run_suite("fragile", params, context(tmp_path / "b", clf), samples, shards=shards)
    assert untimed(whole["metrics"]) == untimed(split["metrics"])
    assert whole["artifacts"] == split["artifacts"]


def test_metric_paths_cover_every_leaf(tmp_path):
    suite = get_suite("fragile")
    params = suite.validate_params({"region_fractions": [0.5], "fri_types": ["strict_shift"], "pngs": False})
    entry = run_suite("fragile", params, context(tmp_path, tiny_classifier()), random_samples(3, size=10))
    produced = [p for p, _ in iter_leaves(entry["metrics"])]
    patterns = suite.metric_paths(params)
    assert sorted(produced) == sorted(patterns)
    assert not any(path_matches(p, "r_0p5.loose_shift.overall.mean") for p in patterns)
    assert all(path_matches(p, p) for p in patterns)


def test_small_images_skipped_with_a_warning(tmp_path):
    samples = random_samples(3, size=4)  # r = 0.4: l = 2*floor(0.8)+1 = 1 < 3
    params = get_suite("fragile").validate_params({"region_fractions": [0.4, 0.9], "pngs": False})
    entry = run_suite("fragile", params, context(tmp_path, tiny_classifier()), samples)
    assert [w["code"] for w in entry["warnings"]] == ["fragile_region_too_small"]
    assert entry["warnings"][0]["details"]["images"] == 3
    assert entry["metrics"]["r_0p4"]["region_accuracy"]["mean"] == {**entry["metrics"]["r_0p4"]["region_accuracy"][
        "mean"], "value": None, "n": 0}
    assert entry["metrics"]["r_0p9"]["region_accuracy"]["mean"]["n"] == 3


def test_crop_guard_refuses_with_the_count(tmp_path):
    samples = random_samples(5, size=20)
    params = get_suite("fragile").validate_params({"region_fractions": [0.5], "max_crops": 1000})
    expected = 5 * ((20 - 11 + 1) ** 2 + (20 - 9 + 1) ** 2)
    ctx = context(tmp_path, tiny_classifier())
    calls = []
    ctx.on_progress = lambda s, f: calls.append(f)
    with pytest.raises(SpecError, match=f"need {expected:,} crops"):
        run_suite("fragile", params, ctx, samples, shards=5)
    assert calls == [], "nothing may run before the guard"


@pytest.mark.parametrize("raw, message", [
    ({"region_fractions": [0.2, 0.2000000001]}, "repeated metric keys"),
    ({"region_fractions": [1.0]}, "<= 0.99"),
    ({"interpolation": "nearest", "antialias": True}, "antialias"),
    ({"fri_types": ["loose"]}, "must be one of"),
    ({"max_crops": 0}, "max_crops"),
])
def test_bad_params_refused(raw, message):
    with pytest.raises(SpecError, match=message):
        get_suite("fragile").validate_params(raw)


def test_top_k_not_below_class_count_refused(tmp_path):
    params = get_suite("fragile").validate_params({"top_k": 10})
    with pytest.raises(SpecError, match="top_k"):
        run_suite("fragile", params, context(tmp_path, tiny_classifier()), random_samples(2))


def test_cancel_stops_between_batches(tmp_path):
    ctx = context(tmp_path, tiny_classifier())
    ctx.should_stop = lambda: True
    params = get_suite("fragile").validate_params({"region_fractions": [0.5], "batch_size": 16})
    with pytest.raises(AuditCancelled):
        run_suite("fragile", params, ctx, random_samples(2, size=12))


def test_demo_model_through_the_cli(tmp_path, report_validator, data_root, capsys):
    out = tmp_path / "out"
    code = main(["audit", "--quiet", "--model", str(DEMO / "digits_cnn.pt"), "--dataset", "builtin:digits",
                 "--n-samples", "12", "--suite", "fragile", "--set", "fragile.region_fractions=[0.6, 0.8]",
                 "--set", "fragile.example_pairs=2", "--gate", "fragile.r_0p8.loose_shift.overall.mean<=1",
                 "--gate", "fragile.r_0p6.region_accuracy.mean>=0", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert code == 0, report["gates"]
    report_validator.validate(report)
    fragile = report["suites"]["fragile"]
    assert fragile["metrics"]["r_0p6"]["crops"]["value"] == 12 * (14 * 14 + 16 * 16)
    assert 0 < fragile["metrics"]["r_0p6"]["region_accuracy"]["mean"]["value"] < 1
    names = {Path(a).name for a in fragile["artifacts"]}
    assert len([n for n in names if n.endswith(".npz")]) == 24
    assert len([n for n in names if n.endswith("_maps.png")]) == 24
    assert any(n.endswith("_pairs.png") for n in names)
    for rel in fragile["artifacts"]:
        assert (out / rel).is_file()
    npz = np.load(out / next(a for a in fragile["artifacts"] if a.endswith("_r_0p6.npz")))
    assert set(npz.files) >= {"correct_l", "correct_l2", "confidence_l", "loose_shift", "strict_shift",
                              "loose_shrink", "strict_shrink"}
    assert npz["correct_l"].shape == (14, 14) and npz["correct_l2"].shape == (16, 16)


def test_cli_refuses_too_many_crops_before_running(tmp_path, data_root, capsys):
    code = main(["audit", "--quiet", "--model", str(DEMO / "digits_cnn.pt"), "--dataset", "builtin:digits",
                 "--n-samples", "10", "--suite", "fragile", "--set", "fragile.region_fractions=[0.4]",
                 "--set", "fragile.max_crops=1000", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "need 8,840 crops" in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.json").exists()


def test_channels_last_and_autocast_paths_run_on_the_cpu():
    from worker.engine.batching import BatchSize
    from worker.engine.suites.fragile.crops import CropResizer
    from worker.engine.suites.fragile.scan import CropClassifier, Segment, channels_last_model

    clf = models()["tinyconv_grey"]
    img = torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(4))
    segs = [Segment.of(0, 7, 12, 12), Segment.of(0, 5, 12, 12)]
    plain, _ = CropClassifier(clf, CropResizer((8, 8)), top_k=1, batch=BatchSize(10)).scan([img], [1], segs)
    with channels_last_model(clf, True) as applied:
        assert applied and clf.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
        cl, _ = CropClassifier(clf, CropResizer((8, 8)), top_k=1, channels_last=True,
                               batch=BatchSize(64)).scan([img], [1], segs)
    assert clf.model.conv.weight.is_contiguous()
    assert torch.equal(plain.pred, cl.pred) and torch.equal(plain.correct, cl.correct)
    torch.testing.assert_close(plain.confidence, cl.confidence, rtol=0, atol=1e-6)
    low, _ = CropClassifier(clf, CropResizer((8, 8)), top_k=1, autocast=torch.bfloat16).scan([img], [1], segs)
    assert low.confidence.dtype == torch.float32 and low.correct.shape == plain.correct.shape
    assert (low.pred == plain.pred).float().mean() > 0.9


def test_small_waves_and_batches_give_the_same_result(tmp_path, monkeypatch):
    import worker.engine.suites.fragile.suite as fragile_suite

    clf = tiny_classifier(seed=3)
    samples = random_samples(5, size=13, seed=4)
    params = get_suite("fragile").validate_params({"region_fractions": [0.4], "pngs": False})
    whole = run_suite("fragile", params, context(tmp_path / "a", clf), samples)
    monkeypatch.setattr(fragile_suite, "WAVE_CROPS", 50)  # one image per wave
    small = run_suite("fragile", {**params, "batch_size": 7}, context(tmp_path / "b", clf), samples)
    assert untimed(whole["metrics"]) == untimed(small["metrics"])
    for name in ("rand_0_r_0p4.npz", "rand_4_r_0p4.npz"):
        a = np.load(tmp_path / "a" / "artifacts" / "fragile" / name)
        b = np.load(tmp_path / "b" / "artifacts" / "fragile" / name)
        for key in MAP_KEYS:
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_allclose(a["confidence_l"], b["confidence_l"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("r, key", [(0.2, "r_0p2"), (0.07, "r_0p07"), (0.125, "r_0p125"), (0.8, "r_0p8"),
                                    (0.99, "r_0p99"), (1.0, "r_1")])
def test_metric_keys_follow_the_one_rule(r, key):
    assert r_key(r) == key


@pytest.mark.parametrize("r, h, w, side", [(0.2, 375, 500, 75), (0.58, 50, 60, 29), (0.6, 32, 32, 19),
                                           (0.99, 32, 40, 31), (0.1, 20, 20, 3), (0.05, 20, 20, 1)])
def test_region_side(r, h, w, side):
    from worker.engine.suites.fragile.params import region_side

    assert region_side(r, h, w) == side
