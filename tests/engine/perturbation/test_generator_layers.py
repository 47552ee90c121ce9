"""Generator loading, layer hooks, the spread estimate and the layer attack; BigGAN-deep plumbing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.tiny import tiny_classifier
from worker.engine.generators import GeneratorError, biggan_layers, load_generator
from worker.engine.generators.hooks import perturb, record
from worker.engine.models import load_classifier
from worker.engine.suites.perturbation.generator_layers import (
    AttackSettings,
    OutputFit,
    Spread,
    attack,
    fixed_budget,
    growing_budget,
    layer_spreads,
    margins,
)

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "worker" / "engine" / "assets" / "demo"
SETTINGS = AttackSettings(steps=8, lr=0.2, kappa=0.0, eps_growth=2.0, max_eps=24.0)


@pytest.fixture(scope="module")
def digits_gen():
    return load_generator(DEMO / "digits_generator.safetensors")


def test_hook_adds_delta_at_exactly_that_layer(digits_gen):
    g = digits_gen.model
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 4, 7])
    delta = 0.3 * torch.randn(3, 64, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = g.fc(torch.cat([z, g.embed(y)], dim=1))
        h = g.block1(h) + delta
        want = g.to_image(g.block3(g.block2(h)))
        with perturb(g, "block1", digits_gen.card.layers) as shift:
            shift.delta = delta
            got = g(z, y)
        after = g(z, y)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(after, got)  # the hook is gone after the block


def test_spread_is_the_per_unit_std_or_range_of_the_reference_batch(digits_gen):
    s = layer_spreads(digits_gen, ["fc", "block2"], batch=16, kind=Spread.STD,
                      generator=torch.Generator().manual_seed(3))
    r = layer_spreads(digits_gen, ["block2"], batch=16, kind=Spread.RANGE, generator=torch.Generator().manual_seed(3))
    z = digits_gen.sample_latents(16, torch.Generator().manual_seed(3))
    y = torch.arange(16) % 10
    with torch.no_grad(), record(digits_gen.model, ["fc", "block2"], digits_gen.card.layers) as acts:
        digits_gen.model(z, y)
    assert s["fc"].shape == (128, 4, 4) and s["block2"].shape == (32, 16, 16)
    assert torch.allclose(s["block2"], acts["block2"].std(0, unbiased=False))
    assert torch.allclose(r["block2"], acts["block2"].amax(0) - acts["block2"].amin(0))


def test_attack_success_is_real_and_budgets_are_respected(digits_gen):
    clf = load_classifier(DEMO / "digits_cnn.pt")
    fit = OutputFit(digits_gen.card.output_size, clf.card, resize=False)
    z = digits_gen.sample_latents(12, torch.Generator().manual_seed(5))
    y = torch.arange(12) % 10
    spread = layer_spreads(digits_gen, ["fc"], batch=64, kind=Spread.STD,
                           generator=torch.Generator().manual_seed(0))["fc"]
    with torch.no_grad():
        clean_pred = clf(fit(digits_gen.model(z, y))).argmax(1)
    tiny = attack(digits_gen, clf, fit, "fc", z, y, y, spread, fixed_budget(1e-6), SETTINGS.steps, SETTINGS)
    assert tiny.success.eq(clean_pred.ne(y)).all()  # no budget: only seeds wrong from the start "succeed"
    big = attack(digits_gen, clf, fit, "fc", z, y, y, spread, fixed_budget(30.0), SETTINGS.steps, SETTINGS)
    assert big.success.float().mean() > 0.5
    # The reported images are the model's inputs at success: their class really differs.
    with torch.no_grad():
        again = clf(big.images[big.success]).argmax(1)
    assert again.eq(big.preds[big.success]).all() and again.ne(y[big.success]).all()
    budget, steps = growing_budget(SETTINGS)
    assert steps == 12 and budget(0) == 2.0 and budget(100) == 24.0
    grow = attack(digits_gen, clf, fit, "fc", z, y, y, spread, budget, steps, SETTINGS)
    eps = grow.eps[grow.success]
    assert (eps <= 24.0).all() and (eps > 0).all() and torch.isnan(grow.eps[~grow.success]).all()


def test_margins():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert margins(logits, torch.tensor([0, 0])).tolist() == [1.0, -5.0]


def test_output_fit_errors_and_conversion():
    card = tiny_classifier(channels=3, size=32).card
    fit = OutputFit((1, 32, 32), card, resize=False)
    assert fit(torch.rand(2, 1, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(GeneratorError, match="16x16 images but the model takes 32x32"):
        OutputFit((1, 16, 16), card, resize=False)
    assert OutputFit((3, 16, 16), card, resize=True)(torch.rand(2, 3, 16, 16)).shape == (2, 3, 32, 32)


def test_loader_refuses_pickles_and_mismatched_weights(tmp_path):
    card = json.loads((DEMO / "digits_generator.card.json").read_text())
    card["format"] = "state_dict"
    (tmp_path / "g.card.json").write_text(json.dumps(card))
    torch.save({"fc": nn.Linear(2, 2)}, tmp_path / "g.pt")
    with pytest.raises(GeneratorError, match="objects other than tensors"):
        load_generator(tmp_path / "g.pt", tmp_path / "g.card.json")
    torch.save({"fc.0.weight": torch.zeros(3, 3)}, tmp_path / "g.pt")
    with pytest.raises(GeneratorError, match="does not fit generator arch 'digits_cgen'"):
        load_generator(tmp_path / "g.pt", tmp_path / "g.card.json")
    card["arch"] = "stylegan9"
    with pytest.raises(GeneratorError, match="unknown generator arch 'stylegan9'"):
        load_generator(DEMO / "digits_generator.safetensors", card)
    card = json.loads((DEMO / "digits_generator.card.json").read_text())
    card["layers"] = ["fc", "block7"]
    with pytest.raises(GeneratorError, match="lists layer 'block7'"):
        load_generator(DEMO / "digits_generator.safetensors", card)
    card["layers"] = ["fc"]
    card["output_size"] = [1, 28, 28]
    with pytest.raises(GeneratorError, match=r"shape \(1, 32, 32\).*output_size \[1, 28, 28\]"):
        load_generator(DEMO / "digits_generator.safetensors", card)


TINY_BIGGAN = {"output_dim": 32, "z_dim": 8, "class_embed_dim": 8, "channel_width": 4, "num_classes": 10,
               "layers": [[True, 16, 8], [True, 8, 4], [True, 4, 2], [False, 2, 1]], "attention_layer_position": 2}


@pytest.fixture()
def tiny_biggan(tmp_path):
    """A randomly initialised BigGAN-deep of the package, saved as the package saves its weights."""
    pkg = pytest.importorskip("pytorch_pretrained_biggan")
    cfg = pkg.BigGANConfig.from_dict({**TINY_BIGGAN, "layers": [tuple(v) for v in TINY_BIGGAN["layers"]]})
    torch.manual_seed(0)
    net = pkg.BigGAN(cfg).eval()  # eval: spectral norm uses the stored power-iteration vectors
    with torch.no_grad():  # the package leaves the final batch norm's affine parameters uninitialised
        net.generator.bn.weight.fill_(1.0)
        net.generator.bn.bias.zero_()
    torch.save(net.state_dict(), tmp_path / "biggan.bin")
    card = {"name": "tiny-biggan", "arch": "biggan_deep", "format": "state_dict", "latent_dim": 8, "num_classes": 10,
            "conditional": True, "output_size": [3, 32, 32], "layers": biggan_layers(TINY_BIGGAN),
            "class_names": [str(i) for i in range(10)], "options": {"config": TINY_BIGGAN, "truncation": 0.5}}
    (tmp_path / "biggan.card.json").write_text(json.dumps(card))
    return tmp_path / "biggan.bin", net


def test_biggan_deep_loads_from_a_local_file_and_its_layers_can_be_perturbed(tiny_biggan):
    path, net = tiny_biggan
    gen = load_generator(path)
    assert gen.card.layers == ("net.generator.gen_z",) + tuple(f"net.generator.layers.{i}" for i in range(5))
    z = gen.sample_latents(4, torch.Generator().manual_seed(0))
    assert z.abs().max() <= 2.0 * 0.5
    y = torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        out = gen.model(z, y)
        want = (net(z, torch.eye(10)[y], 0.5) + 1) / 2
    assert out.shape == (4, 3, 32, 32) and torch.allclose(out, want, atol=1e-5)
    clf = tiny_classifier(channels=3, size=32)
    fit = OutputFit(gen.card.output_size, clf.card, resize=False)
    spreads = layer_spreads(gen, list(gen.card.layers), batch=8, kind=Spread.STD,
                            generator=torch.Generator().manual_seed(1))
    assert spreads["net.generator.gen_z"].shape == (4 * 4 * 16 * 4,)  # the linear layer before the reshape
    with torch.no_grad():
        labels = clf(fit(gen.model(z, y))).argmax(1)
    for layer in ("net.generator.gen_z", "net.generator.layers.2", "net.generator.layers.4"):
        r = attack(gen, clf, fit, layer, z, y, labels, spreads[layer], fixed_budget(50.0), 3, SETTINGS)
        assert r.success.shape == (4,) and r.images.shape == (4, 3, 32, 32)
        assert not math.isnan(float(r.images.sum()))


def test_biggan_card_must_agree_with_its_config(tiny_biggan):
    path, _ = tiny_biggan
    card = json.loads(path.with_name("biggan.card.json").read_text())
    card["latent_dim"] = 128
    with pytest.raises(GeneratorError, match="latent_dim 128"):
        load_generator(path, card)
