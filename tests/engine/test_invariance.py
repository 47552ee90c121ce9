"""The invariance suite (exact feature collisions) against independent computations: a patch
embedding whose null-space dimension is known by construction, an overlapping convolution with
none (its smallest singular value from a dense Jacobian and NumPy), the numeric ways against the
exact one, models that skip, and the exact shard merge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tests.tiny import TinyNet, random_samples
from worker.engine.card import ModelCard
from worker.engine.classifier import Classifier
from worker.engine.cli import main
from worker.engine.errors import SpecError
from worker.engine.html.plots import null_space_spectrum, suite_plots
from worker.engine.metrics import iter_leaves
from worker.engine.runner import run_suite
from worker.engine.suites import get_suite
from worker.engine.suites.base import ArtifactStore, SuiteContext
from worker.engine.suites.invariance.collisions import Objective, colliding_perturbations
from worker.engine.suites.invariance.nullspace import Method, Way, null_space
from worker.engine.suites.invariance.operator import find_first_operator

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]  # per channel: the null space in pixel space is scaled by std


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many tiny float64 products: a second thread only adds waiting on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class PatchNet(nn.Module):
    """A ViT-style patch embedding (k x k patches, stride k) with a chosen rank, then a small head.

    The per-patch matrix has ``out`` rows but rank ``rank``: its null space per patch has dimension
    C·k·k − rank, known by construction.
    """

    def __init__(self, channels: int = 3, out: int = 20, rank: int = 16, k: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Conv2d(channels, out, k, stride=k)
        left, right = torch.randn(out, rank, generator=g), torch.randn(rank, channels * k * k, generator=g)
        with torch.no_grad():
            self.embed.weight.copy_((left @ right / k).reshape(out, channels, k, k))
        self.head = nn.Linear(out, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.embed(x)).mean(dim=(2, 3)))


class OverlapNet(nn.Module):
    """A 3 x 3 convolution, stride 1, padding 1: every pixel is seen by nine overlapping windows."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def card(channels: int = 3, size: int = 16) -> ModelCard:
    return ModelCard.from_dict({"format": "torchscript", "num_classes": 10, "input_size": [channels, size, size],
                                "mean": MEAN[:channels], "std": STD[:channels]})


def classifier(model: nn.Module, channels: int = 3, size: int = 16) -> Classifier:
    return Classifier(model, card(channels, size), sha256="0" * 64)


def audit(tmp_path, clf, samples, params, shards=1):
    ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(tmp_path / "artifacts"), seed=5)
    suite = get_suite("invariance")
    return run_suite("invariance", suite.validate_params(params), ctx, samples, shards=shards)


def test_patch_embedding_has_its_known_null_space_and_colliding_pairs_give_equal_features():
    # 18 x 18 with 4 x 4 patches: 16 patches, and two rows and columns of pixels no patch reads
    model, size = PatchNet(), 18
    clf = classifier(model, size=size)
    x = random_samples(4, channels=3, size=size).prepared(clf.card)
    op = find_first_operator(clf, x[0])
    space = null_space(op, Method.AUTO, 1e-6, k=8, iterations=50, generator=torch.Generator().manual_seed(0))
    unread = 3 * (size * size - 16 * 16)
    assert space.way is Way.PATCHES
    assert space.dimension == 16 * (3 * 4 * 4 - 16) + unread == 716
    assert space.smallest == 0.0 and space.smallest_nonzero is not None and space.smallest_nonzero > 1e-3
    gens = [torch.Generator().manual_seed(i) for i in range(len(x))]
    delta = colliding_perturbations(x, torch.tensor(STD), op.in_shape, space.projector, gens,
                                    objective=Objective.L2, steps=10)
    partner = (x.double() + delta).float().clamp(0, 1)
    # independent of the suite's operator: the model's own layer on the card's normalisation
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        features = model.embed((x - mean) / std)
        features_partner = model.embed((partner - mean) / std)
        change = (clf(partner) - clf(x)).abs().amax(dim=1)
    assert (features_partner - features).abs().max() < 1e-5
    assert (change < 1e-4).all()
    assert ((partner - x).flatten(1).abs().amax(dim=1) >= 0.05).all()
    assert partner.min() >= 0 and partner.max() <= 1
    # the ascent beats the random direction it starts from
    start = colliding_perturbations(x, torch.tensor(STD), op.in_shape, space.projector,
                                    [torch.Generator().manual_seed(i) for i in range(len(x))],
                                    objective=Objective.L2, steps=0)
    assert (delta.flatten(1).norm(dim=1) > start.flatten(1).norm(dim=1)).all()


def test_the_suite_reports_the_collisions_and_one_shard_equals_three(tmp_path):
    clf = classifier(PatchNet(), size=16)
    samples = random_samples(7, channels=3, size=16)
    params = {"null_space": {"steps": 4, "examples": 2}}
    whole = audit(tmp_path / "a", clf, samples, params)
    split = audit(tmp_path / "b", clf, samples, params, shards=3)
    assert whole["metrics"] == split["metrics"]
    m = whole["metrics"]["null_space"]
    assert m["dimension"]["value"] == 16 * (48 - 16) and m["dimension"]["n"] == 3 * 16 * 16
    assert m["same_prediction"]["value"] == 1.0 and m["same_prediction"]["n"] == 7
    assert m["max_logit_change"]["value"] < 1e-4 and m["linf"]["median"]["value"] >= 0.05
    paths = get_suite("invariance").metric_paths(get_suite("invariance").validate_params(params))
    assert sorted(paths) == sorted(p for p, _ in iter_leaves(whole["metrics"]))
    assert whole["artifacts"] == ["artifacts/invariance/null_space_pairs.png"]
    assert (tmp_path / "a" / whole["artifacts"][0]).read_bytes().startswith(b"\x89PNG")
    assert whole["warnings"] == [] and whole["null_space"]["way"] == "exact_patches"
    plots = suite_plots("invariance", whole, [])
    assert len(plots) == 1 and "(n = 48 values)" in plots[0].title and plots[0].png.startswith(b"\x89PNG")


def _dense_singular_values(conv: nn.Conv2d, shape: tuple[int, int, int], std: list[float]) -> np.ndarray:
    """Singular values of x -> conv((x - mean) / std) without bias: its matrix, column by column (the
    layer applied to each basis image), by NumPy's SVD."""
    n = int(np.prod(shape))
    scale = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape) / scale
    with torch.no_grad():
        columns = torch.nn.functional.conv2d(basis, conv.weight.double(), None, conv.stride, conv.padding)
    return np.linalg.svd(columns.reshape(n, -1).numpy().T, compute_uv=False)


def test_an_overlapping_convolution_has_no_null_space(tmp_path):
    model = OverlapNet(channels=1)
    clf = classifier(model, channels=1, size=12)
    result = audit(tmp_path, clf, random_samples(3, channels=1, size=12), {"null_space": {"steps": 2}})
    m = result["metrics"]["null_space"]
    assert m["dimension"]["value"] == 0 and result["null_space"]["way"] == "dense"
    # the suite works on the normalised input: std 1 there; NumPy's answer on the same map
    expected = _dense_singular_values(model.conv, (1, 12, 12), [1.0]).min()
    assert m["smallest_singular_value"]["value"] == pytest.approx(expected, rel=1e-6)
    assert m["linf"]["median"]["value"] is None and m["same_prediction"]["n"] == 0
    assert result["artifacts"] == []


def test_the_numeric_ways_agree_with_the_exact_one():
    gen = torch.Generator
    # full rank per patch (4 x 4 per-patch matrix): no null space, the smallest singular value known
    full = classifier(PatchNet(channels=1, out=4, rank=4, k=2), channels=1, size=8)
    op = find_first_operator(full, torch.rand(1, 8, 8))
    ways = {m: null_space(op, m, 1e-6, k=4, iterations=300, generator=gen().manual_seed(0))
            for m in (Method.AUTO, Method.DENSE, Method.ITERATIVE)}
    assert [w.way for w in ways.values()] == [Way.PATCHES, Way.DENSE, Way.ITERATIVE]
    exact = ways[Method.AUTO].smallest
    assert exact > 1e-3 and all(w.dimension == 0 for w in ways.values())
    assert ways[Method.DENSE].smallest == pytest.approx(exact, rel=1e-8)
    assert ways[Method.ITERATIVE].smallest == pytest.approx(exact, rel=1e-6) and ways[Method.ITERATIVE].converged
    # rank 2 of 4 per patch: the dense way finds the same dimension; LOBPCG's k values are all zero
    low = classifier(PatchNet(channels=1, out=4, rank=2, k=2), channels=1, size=8)
    op = find_first_operator(low, torch.rand(1, 8, 8))
    exact_space = null_space(op, Method.AUTO, 1e-6, k=4, iterations=200, generator=gen().manual_seed(0))
    dense_space = null_space(op, Method.DENSE, 1e-6, k=4, iterations=200, generator=gen().manual_seed(0))
    iterative = null_space(op, Method.ITERATIVE, 1e-6, k=4, iterations=200, generator=gen().manual_seed(0))
    assert exact_space.dimension == dense_space.dimension == 16 * 2
    assert iterative.dimension == 4 and iterative.lower_bound
    u = torch.randn(3, *op.in_shape, dtype=torch.float64)
    for space in (exact_space, dense_space, iterative):
        assert space.projector is not None
        # in null(W) up to the float32 weights' own rounding (their "zero" singular values are ~1e-8)
        assert op.apply(space.projector(u)).abs().max() < 1e-6 * u.abs().max()
    # the two exact projections are the same projection
    assert torch.allclose(exact_space.projector(u), dense_space.projector(u), atol=1e-10)


def test_a_linear_first_layer_and_scripted_models():
    # an MLP: W is the matrix of the first Linear on the flattened image; rank 30 of 48 inputs
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 30), nn.ReLU(), nn.Linear(30, 10))
    clf = classifier(torch.jit.script(mlp), channels=3, size=4)
    op = find_first_operator(clf, torch.rand(3, 4, 4))
    space = null_space(op, Method.AUTO, 1e-6, k=4, iterations=50, generator=torch.Generator().manual_seed(0))
    assert op.kind == "linear" and space.way is Way.MATRIX and space.dimension == 48 - 30
    # the patch embedding through TorchScript: the same operator as the module
    patch = PatchNet()
    scripted = find_first_operator(classifier(torch.jit.script(patch)), torch.rand(3, 16, 16))
    assert torch.equal(scripted.weight, find_first_operator(classifier(patch), torch.rand(3, 16, 16)).weight)


class UsesInputTwice(OverlapNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x) + x.mean()).mean(dim=(2, 3)))


class Rescales(OverlapNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # an element-wise scale before the first layer
        return super().forward(x * torch.linspace(0.5, 1.5, x.shape[-1]))


@pytest.mark.parametrize("model, says", [
    (TinyNet(3, 10), "AdaptiveAvgPool2D"),
    (UsesInputTwice(), "reaches 2 operations"),
    (Rescales(), "Mul"),
])
def test_a_first_operation_that_is_not_a_linear_layer_skips_with_a_warning(tmp_path, model, says):
    result = audit(tmp_path, classifier(model), random_samples(2, channels=3, size=16), {})
    assert result["status"] == "skipped" and result["metrics"] == {}
    (warning,) = result["warnings"]
    assert warning["code"] == "null_space_skipped" and says in warning["message"]


def test_parameters_are_bounded():
    suite = get_suite("invariance")
    for bad in ({"null_space": {"rtol": 0.5}}, {"null_space": {"k": 0}}, {"null_space": {"method": "svd"}},
                {"null_space": {"steps": -1}}, {"null_space": {"examples": 17}}, {"null_space": {"nope": 1}}):
        with pytest.raises(SpecError):
            suite.validate_params(bad)
    params = suite.validate_params({"null_space": {"method": "dense"}})
    big = classifier(OverlapNet(), channels=3, size=40)  # 4800 input values: above the dense limit
    with pytest.raises(SpecError, match="dense"):
        suite.check_inputs(params, random_samples(1, channels=3, size=40), big)


def test_spectrum_plot_reads_the_report_entry_alone():
    entry = {"null_space": {"way": "iterative", "spectrum": [2.0, 1e-9, 1e-9], "spectrum_length": 3, "rtol": 1e-6,
                            "dimension": 2, "lower_bound": True}}
    plot = null_space_spectrum(entry)
    assert plot is not None and "(n = 3 values)" in plot.title
    assert null_space_spectrum({"null_space": {"spectrum": []}}) is None and null_space_spectrum({}) is None


def test_cli_audit_gates_on_the_dimension_and_the_report_validates(tmp_path, report_validator, data_root):
    path = tmp_path / "patch.pt"
    torch.jit.script(PatchNet(channels=1, out=8, rank=8)).save(str(path))
    (tmp_path / "patch.card.json").write_text(json.dumps({"format": "torchscript", "num_classes": 10,
                                                          "input_size": [1, 32, 32], "mean": [0.5], "std": [0.5]}))
    out = tmp_path / "out"
    code = main(["audit", "--quiet", "--out", str(out), "--model", str(path), "--dataset", "builtin:digits",
                 "--n-samples", "4", "--suite", "invariance", "--set", 'invariance.null_space={"steps": 2}',
                 "--gate", "invariance.null_space.dimension >= 512",
                 "--gate", "invariance.null_space.max_logit_change < 0.0001"])
    report = json.loads((out / "report.json").read_text())
    report_validator.validate(report)
    assert code == 0 and report["verdict"] == "pass"
    assert report["suites"]["invariance"]["metrics"]["null_space"]["dimension"]["value"] == 64 * (16 - 8)
    assert "First-layer singular values" in (out / "report.html").read_text()
