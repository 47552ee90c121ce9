"""The committed demo assets (written by scripts/train_demo.py) load and behave as documented."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import worker.engine
from worker.engine.card import ModelCard, ModelFormat
from worker.engine.generators import GENERATOR_ARCHS
from worker.engine.generators.digits import LAYERS, DigitsGenerator

ENGINE = Path(worker.engine.__file__).resolve().parent
ASSETS = ENGINE / "assets" / "demo"
DATA = ENGINE / "data" / "digits.pt"

CLASSIFIER_CARDS = {"digits_cnn": ModelFormat.TORCHSCRIPT, "digits_cnn_pgd": ModelFormat.TORCHSCRIPT,
                    "digits_cnn_export": ModelFormat.EXPORT}
TORCHSCRIPT = ("digits_cnn", "digits_cnn_pgd")


# Same semantics as the shared digits loader/split (and scripts/train_demo.py).
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    raw = torch.load(DATA, weights_only=True)
    x = raw["images"].to(torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=False)
    return x.clamp(0, 1), raw["labels"].to(torch.int64)


def _test_indices(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    test = []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c, as_tuple=True)[0]
        perm = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(seed + c))
        test.append(idx[perm[:round(0.2 * idx.numel())]])
    return torch.sort(torch.cat(test)).values


def _load_torchscript(name: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch >= 2.15
        return torch.jit.load(str(ASSETS / f"{name}.pt"), map_location="cpu").eval()


@pytest.fixture(scope="module")
def test_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 200 test-split images, NORMALISED as the cards say, and their labels."""
    x, y = _digits()
    idx = _test_indices(y)[:200]
    card = ModelCard.from_file(ASSETS / "digits_cnn.card.json")
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    return (x[idx] - mean) / std, y[idx]


@pytest.fixture(scope="module")
def generator_card() -> dict:
    return json.loads((ASSETS / "digits_generator.card.json").read_text())


@pytest.fixture(scope="module")
def generator(generator_card: dict) -> nn.Module:
    arch = GENERATOR_ARCHS[generator_card["arch"]]
    g = arch(latent_dim=generator_card["latent_dim"], num_classes=generator_card["num_classes"])
    g.load_state_dict(load_file(str(ASSETS / "digits_generator.safetensors")), strict=True)
    return g.eval()


@pytest.mark.parametrize("name", sorted(CLASSIFIER_CARDS))
def test_classifier_cards_parse(name: str) -> None:
    card = ModelCard.from_file(ASSETS / f"{name}.card.json")
    assert card.format is CLASSIFIER_CARDS[name]
    assert card.num_classes == 10 and card.input_size == (1, 32, 32)
    assert card.mean == (0.5,) and card.std == (0.5,)
    assert card.class_names == tuple(str(i) for i in range(10))
    assert set(card.hierarchy.values()) == {"round", "straight", "curved"}


def test_generator_card(generator_card: dict) -> None:
    assert generator_card["arch"] in GENERATOR_ARCHS and generator_card["format"] == "safetensors"
    assert generator_card["latent_dim"] == 32 and generator_card["num_classes"] == 10
    assert generator_card["conditional"] is True
    assert generator_card["output_size"] == [1, 32, 32]
    assert generator_card["layers"] == list(LAYERS)
    assert generator_card["class_names"] == [str(i) for i in range(10)]


def test_assets_are_small() -> None:
    for p in ASSETS.iterdir():
        assert p.stat().st_size < 1_000_000, p.name


@pytest.mark.parametrize("name", TORCHSCRIPT)
def test_torchscript_logits_and_accuracy(name: str, test_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = test_batch
    model = _load_torchscript(name)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (len(x), 10) and torch.isfinite(logits).all()
    assert (logits.argmax(1) == y).float().mean().item() >= 0.9


def test_export_program_matches_torchscript(test_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = test_batch
    exported = torch.export.load(str(ASSETS / "digits_cnn_export.pt2")).module()
    scripted = _load_torchscript("digits_cnn")
    with torch.no_grad():
        for n in (1, 7, len(x)):  # the batch dimension is dynamic
            torch.testing.assert_close(exported(x[:n]), scripted(x[:n]), atol=1e-4, rtol=1e-4)


def test_generator_outputs_images(generator: nn.Module) -> None:
    assert isinstance(generator, DigitsGenerator)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20, 32, generator=gen)
    y = torch.arange(10).repeat(2)
    with torch.no_grad():
        out = generator(z, y)
    assert out.shape == (20, 1, 32, 32)
    assert out.min() >= 0 and out.max() <= 1


def test_generator_layers_are_hookable_coarse_to_fine(generator: nn.Module) -> None:
    assert LAYERS == ("fc", "block1", "block2", "block3")
    children = [name for name, _ in generator.named_children()]
    positions = [children.index(name) for name in LAYERS]
    assert positions == sorted(positions)
    seen: dict[str, torch.Tensor] = {}
    handles = [generator.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: seen.__setitem__(name, out)) for name in LAYERS]
    try:
        with torch.no_grad():
            generator(torch.zeros(2, 32), torch.tensor([3, 7]))
    finally:
        for h in handles:
            h.remove()
    assert list(seen) == list(LAYERS)  # called in coarse -> fine order
    assert all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in seen.values())
    assert [seen[name].shape[-1] for name in LAYERS] == [4, 8, 16, 32]


def test_generator_hook_perturbation_changes_output(generator: nn.Module) -> None:
    z, y = torch.zeros(1, 32), torch.tensor([5])
    with torch.no_grad():
        base = generator(z, y)
        handle = generator.get_submodule("block1").register_forward_hook(lambda _m, _i, out: out + 1.0)
        try:
            perturbed = generator(z, y)
        finally:
            handle.remove()
    assert not torch.allclose(base, perturbed)


def test_metrics_present() -> None:
    m = json.loads((ASSETS / "metrics.json").read_text())
    robust = {}
    for name in ("digits_cnn", "digits_cnn_pgd"):
        entry = m["models"][name]
        assert 0.95 <= entry["clean_test_accuracy"] <= 1
        robust[name] = entry["pgd20_linf_eps0.1_robust_accuracy"]
        assert 0 <= robust[name] <= 1
    assert robust["digits_cnn_pgd"] > robust["digits_cnn"] + 0.2
    assert 0.8 <= m["generator"]["fidelity"] <= 1
    assert set(m["generator"]["fidelity_per_class"]) == {str(i) for i in range(10)}
    assert m["seeds"] and m["robust_eval"]["eps"] == 0.1 and m["robust_eval"]["steps"] == 20


def test_the_demo_audit_has_a_gate_on_a_metric_it_produces():
    """``make demo`` ends with a verdict: an audit without gates would have none (verdict "none")."""
    from service.demo import demo_body
    from worker.engine.gates import Gate, check_gates
    from worker.engine.spec import metric_catalog, validate_suites

    body = demo_body("model-id", 50)
    gates = [Gate.parse(g) for g in body["gates"]]
    assert gates
    check_gates(gates, metric_catalog(validate_suites(body["suites"])))
