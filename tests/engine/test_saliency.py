"""Grad-CAM and the attacks suite's saliency part against hand computations: the map of a tiny CNN
split by hand into its features and head (module hooks, TorchScript through autograd, a layer the
card names), energy shares of hand-made perturbations, the part's counts against the core's
successes, models without a spatial layer, and the card field's bounds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.tiny import random_samples
from worker.engine.card import ModelCard
from worker.engine.classifier import Classifier
from worker.engine.errors import ModelCardError
from worker.engine.gradcam import LayerSource, check_layer, energy_share, gradcam, region_share, top_region
from worker.engine.html.plots import saliency_overlap
from worker.engine.runner import run_suite
from worker.engine.suites import get_suite
from worker.engine.suites.base import ArtifactStore, SuiteContext

SIZE = 12
QUICK = {"norms": ["linf", "l2"], "linf_eps": [0.05, 0.2], "l2_eps": [1.0], "attacks": ["pgd"], "minimal": "none",
         "attack_params": {"pgd": {"steps": 3}}, "targeted": {"enabled": False}, "batch_size": 4,
         "saliency": {"examples": 2}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class SmallCNN(nn.Module):
    """features (two convolutions, a pooling between) -> mean over positions -> head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def card(**extra) -> ModelCard:
    return ModelCard.from_dict({"format": "torchscript", "num_classes": 10, "input_size": [1, SIZE, SIZE],
                                "mean": [0.5], "std": [0.25], **extra})


def by_hand(model: SmallCNN, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Grad-CAM written out: activations A of ``features``, α = mean of ∂y/∂A, ReLU(Σ α A), upsampled."""
    acts = model.features((x - 0.5) / 0.25).detach().requires_grad_(True)
    score = model.head(acts.mean(dim=(2, 3)))[torch.arange(len(x)), labels].sum()
    (grads,) = torch.autograd.grad(score, acts)
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1, keepdim=True))
    return F.interpolate(cam.detach().double(), size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]


def test_gradcam_equals_the_hand_computation_for_every_way_of_finding_the_layer():
    model = SmallCNN()
    x, labels = torch.rand(3, 1, SIZE, SIZE), torch.tensor([1, 4, 7])
    expected = by_hand(model, x, labels)
    assert expected.abs().max() > 0
    hooked, layer = gradcam(Classifier(model, card(), sha256="0" * 64), x, labels)
    assert (layer.source, layer.name) == (LayerSource.HOOKS, "features")  # the container, after its ReLU
    named, layer = gradcam(Classifier(model, card(gradcam_layer="features.4"), sha256="0" * 64), x, labels)
    assert (layer.source, layer.name) == (LayerSource.CARD, "features.4")
    scripted, layer = gradcam(Classifier(torch.jit.script(model), card(), sha256="0" * 64), x, labels)
    assert layer.source is LayerSource.AUTOGRAD and layer.name == "ReluBackward0"
    # a module holding a TorchScript program: its hookable parts have no spatial output, autograd does
    wrapped, layer = gradcam(Classifier(nn.Sequential(torch.jit.script(model)), card(), sha256="0" * 64), x, labels)
    assert layer.source is LayerSource.AUTOGRAD
    for got in (hooked, named, scripted, wrapped):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-9)
    # an earlier layer the card names gives another map
    early, _ = gradcam(Classifier(model, card(gradcam_layer="features.1"), sha256="0" * 64), x, labels)
    assert not torch.allclose(early, expected)


def test_energy_share_and_the_top_region():
    cam = torch.zeros(4, 5, dtype=torch.float64)
    cam[0, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    region = top_region(cam, 0.2)  # 4 of 20 pixels
    assert region is not None and region.sum() == 4 and region[0, :4].all()
    assert region_share(0.2, 4, 5) == 0.2
    delta = torch.zeros(2, 4, 5)
    delta[0, 0, 0], delta[1, 3, 4] = 3.0, 4.0  # energy 9 inside, 16 outside
    assert energy_share(delta, region) == pytest.approx(9 / 25)
    assert energy_share(torch.ones(2, 4, 5), region) == pytest.approx(0.2)  # spread evenly: chance
    assert energy_share(torch.zeros(2, 4, 5), region) is None
    assert top_region(torch.zeros(4, 5), 0.2) is None


def labelled(clf: Classifier, n: int):
    samples = random_samples(n, channels=1, size=SIZE, seed=2)
    with torch.no_grad():
        samples.labels = clf(samples.prepared(clf.card)).argmax(1)
    return samples


def audit(tmp_path, clf, samples, params, shards=1):
    ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(tmp_path / "artifacts"), seed=11)
    run_suite("clean", get_suite("clean").validate_params({}), ctx, samples, shards=shards)
    return run_suite("attacks", get_suite("attacks").validate_params(params), ctx, samples, shards=shards)


def test_the_saliency_part_counts_each_fooled_sample_once_per_norm(tmp_path):
    clf = Classifier(SmallCNN(), card(), sha256="0" * 64)
    samples = labelled(clf, 9)
    whole = audit(tmp_path / "a", clf, samples, QUICK)
    split = audit(tmp_path / "b", clf, samples, QUICK, shards=3)
    m = whole["metrics"]
    # a sample fooled at any budget of a norm is one example of that norm: 9 x (1 - the lowest robust
    # accuracy) of them (every sample is correct on the clean image by construction)
    fooled = {norm: round(9 * (1 - min(leaf["value"] for leaf in m["robust_accuracy"][norm].values())))
              for norm in ("linf", "l2")}
    sal = m["saliency"]
    assert sal["empty_cam"]["value"] == 0  # every map has a region here, so every example has an overlap
    assert sal["overlap"]["linf"]["median"]["n"] == fooled["linf"] > 0
    assert sal["overlap"]["l2"]["median"]["n"] == fooled["l2"] > 0
    assert sal["overlap"]["median"]["n"] == fooled["linf"] + fooled["l2"]
    assert sal["overlap"]["chance"]["value"] == round(0.2 * SIZE * SIZE) / (SIZE * SIZE)
    assert 0.0 <= sal["overlap"]["median"]["value"] <= 1.0
    for path in ("overlap.median", "overlap.above_chance", "overlap.linf.median", "overlap.l2.median"):
        a, b = whole["metrics"]["saliency"], split["metrics"]["saliency"]
        for key in path.split("."):
            a, b = a[key], b[key]
        assert b["n"] == a["n"] and b["value"] == pytest.approx(a["value"], rel=1e-5, abs=1e-6), path
    assert "artifacts/attacks/saliency_overlays.png" in whole["artifacts"]
    assert whole["metadata"]["saliency"]["layer"].startswith("features")
    assert sum(sum(h) for h in whole["metadata"]["saliency"]["histogram"].values()) == sal["overlap"]["median"]["n"]
    plot = saliency_overlap(whole)
    assert plot is not None and f"(n = {sal['overlap']['median']['n']} examples)" in plot.title
    off = audit(tmp_path / "c", clf, samples, {**QUICK, "saliency": {"enabled": False}})
    assert "saliency" not in off["metrics"] and "saliency" not in off["metadata"]


def test_a_model_without_a_spatial_layer_skips_the_part(tmp_path):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 16), nn.ReLU(), nn.Linear(16, 10))
    clf = Classifier(mlp, card(), sha256="0" * 64)
    result = audit(tmp_path, clf, labelled(clf, 4), {**QUICK, "norms": ["linf"]})
    assert "saliency" not in result["metrics"] and "robust_accuracy" in result["metrics"]
    skipped = [w for w in result["warnings"] if w["code"] == "saliency_skipped"]
    assert len(skipped) == 1 and "no layer with a 4-D output" in skipped[0]["message"]


@pytest.mark.parametrize("value", ["", 5, "x" * 257, "a\0b", ["features"]])
def test_the_card_field_is_bounded(value):
    with pytest.raises(ModelCardError, match="gradcam_layer"):
        card(gradcam_layer=value)
    assert card().to_dict().get("gradcam_layer") is None and "gradcam_layer" not in card().to_dict()
    assert ModelCard.from_dict(card(gradcam_layer="features.4").to_dict()).gradcam_layer == "features.4"


def test_the_card_layer_must_exist_and_be_hookable():
    check_layer(Classifier(SmallCNN(), card(gradcam_layer="features.4"), sha256="0" * 64))
    with pytest.raises(ModelCardError, match="not a module"):
        check_layer(Classifier(SmallCNN(), card(gradcam_layer="features.9"), sha256="0" * 64))
    with pytest.raises(ModelCardError, match="TorchScript"):
        check_layer(Classifier(torch.jit.script(SmallCNN()), card(gradcam_layer="features.4"), sha256="0" * 64))
    params = get_suite("attacks").validate_params({})
    with pytest.raises(ModelCardError):  # before any work: the suite's input checks
        get_suite("attacks").check_inputs(params, random_samples(1, size=SIZE),
                                          Classifier(SmallCNN(), card(gradcam_layer="head.7"), sha256="0" * 64))
