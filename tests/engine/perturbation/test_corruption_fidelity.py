"""Fidelity of two corruptions to what ImageNet-C runs: pixelate against PIL, shot noise against
the Poisson law.

pixelate: ImageNet-C resizes a uint8 PIL image with ``Image.BOX`` and back with ``Image.NEAREST``.
Our weights and indices are compared with PIL's own, read off impulse images in PIL's float mode
("F"), and the whole corruption with PIL's output on float images (to float32 rounding) and on
8-bit images (exactly, once PIL's rounding to 8 bits after each pass is applied to ours).

shot noise: the vectorised sampler is an exact inversion; a chi-square test per rate, over many
rates, must not reject the Poisson law, and the same test must reject a near miss.

snow: given the same random draws, ours equals imagecorruptions' snow (its zoomed layer is
motion-blurred before the crop).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engine.perturbation.reference_corruptions import picture
from worker.engine.suites.perturbation.corruptions import SampleRandom, corrupt
from worker.engine.suites.perturbation.corruptions.digital import PIXELATE, box_weights, nearest_index
from worker.engine.suites.perturbation.corruptions.poisson import TABLE_MAX_RATE, poisson_from_uniforms

Image = pytest.importorskip("PIL.Image")
stats = pytest.importorskip("scipy.stats")

# (in, out) pairs: every non-integer scale of the five severities at 16, 32 and 224 px, and
# the odd sizes the issue names (16 -> 6, 32 -> 11), and a few more.
PAIRS = sorted({(s, max(1, int(s * c))) for s in (16, 28, 32, 37, 224) for c in PIXELATE}
               | {(16, 6), (32, 11), (224, 75), (100, 33), (7, 3), (5, 2)})


def pil_float_resize(a: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """PIL's resize of one float32 plane (mode "F": no 8-bit rounding); size is (width, height)."""
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize(size, resample))


@pytest.mark.parametrize(("size_in", "size_out"), PAIRS)
def test_box_weights_are_pils_impulse_responses(size_in, size_out):
    # Row j of the identity resized along its rows holds the weights of source pixel j.
    want = pil_float_resize(np.eye(size_in), (size_out, size_in), Image.BOX).T
    got = box_weights(size_in, size_out, torch.device("cpu"), torch.float64).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_box_weights_of_16_to_6_are_thirds_then_halves():
    w = box_weights(16, 6, torch.device("cpu"), torch.float64)
    assert w[0, :3].tolist() == pytest.approx([1 / 3] * 3) and w[0, 3:].abs().sum() == 0
    assert w[1, 3:5].tolist() == pytest.approx([0.5, 0.5]) and w[1].count_nonzero() == 2


def test_nearest_index_is_pils_on_every_upsampling():
    # Includes the ties where a centre falls on a pixel edge (16 -> 28, 2 -> 3).
    for size_in in range(1, 60):
        for size_out in range(size_in, 3 * size_in + 8):
            want = pil_float_resize(np.arange(size_in)[None], (size_out, 1), Image.NEAREST)[0]
            got = nearest_index(size_in, size_out).numpy()
            assert (got == want).all(), (size_in, size_out)


def down_up(x: torch.Tensor, small: tuple[int, int]) -> torch.Tensor:
    """Our pixelate's two steps for an arbitrary intermediate size (N x C x H x W)."""
    h, w = x.shape[-2:]
    y = box_weights(h, small[0], x.device, x.dtype) @ x @ box_weights(w, small[1], x.device, x.dtype).T
    return y.index_select(-2, nearest_index(small[0], h)).index_select(-1, nearest_index(small[1], w))


@pytest.mark.parametrize("size", [16, 28, 32, 37, 224])
def test_pixelate_matches_pil_on_float_images(size):
    x = torch.rand(2, 3, size, size + 3, generator=torch.Generator().manual_seed(size))
    for severity, c in enumerate(PIXELATE, start=1):
        got = corrupt(x, "pixelate", severity, SampleRandom.from_seeds([0, 1]))
        small = (max(1, int((size + 3) * c)), max(1, int(size * c)))  # PIL's (width, height)
        for i in range(2):
            for ch in range(3):
                plane = pil_float_resize(x[i, ch].numpy(), small, Image.BOX)
                want = pil_float_resize(plane, (size + 3, size), Image.NEAREST)
                np.testing.assert_allclose(got[i, ch].numpy(), want, atol=3e-7, err_msg=f"s{severity}")


@pytest.mark.parametrize(("size", "small"), [(16, 6), (32, 11), (224, 75), (224, 89)])
def test_pixelate_matches_pil_on_8bit_images_pixel_for_pixel(size, small):
    # PIL resizes an 8-bit image horizontally, then vertically, rounding half up to 8 bits after
    # each pass; applying that rounding to our two products must give PIL's bytes exactly.
    g = torch.Generator().manual_seed(small)
    levels = torch.randint(0, 256, (3, size, size), generator=g).double()
    rows = box_weights(size, small, torch.device("cpu"), torch.float64)
    across = torch.floor(levels @ rows.T + 0.5)
    down = torch.floor(rows @ across + 0.5)
    ours = down.index_select(-2, nearest_index(small, size)).index_select(-1, nearest_index(small, size))
    img = Image.fromarray(levels.permute(1, 2, 0).numpy().astype(np.uint8))
    want = np.asarray(img.resize((small, small), Image.BOX).resize((size, size), Image.NEAREST))
    assert (ours.permute(1, 2, 0).numpy().astype(np.uint8) == want).all()
    # And the float corruption itself is within one level of PIL's bytes (two roundings of half
    # a level at most, the first one averaged).
    assert np.abs(down_up(levels[None] / 255, (small, small))[0].permute(1, 2, 0).numpy() * 255
                  - want).max() <= 1.0 + 1e-9


def chi_square_p(samples: np.ndarray, rate: float) -> float:
    """p-value of Pearson's chi-square test of samples against Poisson(rate); bins pooled to an
    expected count of at least 5, the upper tail into the last bin."""
    n = len(samples)
    top = int(max(samples.max(), stats.poisson.ppf(1 - 1e-9, rate)))
    expected = stats.poisson.pmf(np.arange(top + 1), rate) * n
    expected[-1] += stats.poisson.sf(top, rate) * n
    observed = np.bincount(samples.astype(np.int64), minlength=top + 1).astype(float)
    obs_bins, exp_bins, o, e = [], [], 0.0, 0.0
    for ob, ex in zip(observed, expected):
        o, e = o + ob, e + ex
        if e >= 5:
            obs_bins.append(o)
            exp_bins.append(e)
            o = e = 0.0
    obs_bins[-1] += o
    exp_bins[-1] += e
    return float(stats.chisquare(obs_bins, exp_bins).pvalue)


# Rates that cross every path: zero, the remainder search alone, grid points and between them,
# the whole shot-noise range (photons 3 to 60, so rates up to 60), and large tabulated rates.
RATES = (0.003, 0.05, 0.124, 0.3, 0.5, 0.999, 1.0, 1.7, 2.3, 3.0, 4.999, 5.5, 8.0, 11.9, 12.0, 15.99, 16.2, 25.0,
         30.2, 47.77, 59.5, 60.0, 100.25, 200.06, 254.9)
DRAWS = 60_000


def test_poisson_sampler_passes_chi_square_over_many_rates():
    g = torch.Generator().manual_seed(2026)
    ps = []
    for rate in RATES:
        u = torch.rand(2, DRAWS, generator=g, dtype=torch.float64)
        counts = poisson_from_uniforms(torch.full((DRAWS,), rate), u[0], u[1]).numpy()
        assert (counts == np.round(counts)).all() and counts.min() >= 0
        ps.append(chi_square_p(counts, rate))
    # Seeded, so the p-values are fixed numbers; each rate and their combination must hold.
    assert min(ps) > 1e-3, dict(zip(RATES, ps))
    assert stats.combine_pvalues(ps).pvalue > 1e-3, ps


def test_chi_square_rejects_a_near_miss():
    # The test must be able to fail: rounded normal draws with the right mean and variance.
    g = torch.Generator().manual_seed(1)
    for rate in (5.5, 30.2):
        near = (rate + rate ** 0.5 * torch.randn(DRAWS, generator=g)).round().clamp_min(0).numpy()
        assert chi_square_p(near, rate) < 1e-6, rate


def test_poisson_counts_depend_on_rates_and_uniforms_only():
    g = torch.Generator().manual_seed(3)
    rates = torch.rand(4, 50, generator=g) * 60
    u = torch.rand(2, 4, 50, generator=g, dtype=torch.float64)
    whole = poisson_from_uniforms(rates, u[0], u[1])
    assert whole.shape == rates.shape
    part = poisson_from_uniforms(rates[1:3], u[0, 1:3], u[1, 1:3])
    assert torch.equal(whole[1:3], part)
    # The table for the batch's largest rate changes with the batch; the counts must not.
    assert torch.equal(poisson_from_uniforms(rates[:1] / 8, u[0, :1], u[1, :1]),
                       poisson_from_uniforms(torch.cat([rates[:1] / 8, rates[1:2] * 4]),
                                             u[0, :2], u[1, :2])[:1])


def test_poisson_refuses_rates_out_of_range():
    u = torch.zeros(3, dtype=torch.float64)
    for bad in (-0.5, TABLE_MAX_RATE + 1.0, float("nan")):
        with pytest.raises(ValueError, match="Poisson rates"):
            poisson_from_uniforms(torch.tensor([1.0, bad, 2.0]), u, u)


def test_shot_noise_keeps_the_poisson_law_per_pixel():
    # A grey level v under severity s: counts Poisson(v * photons), divided by photons.
    photons = 12
    x = torch.full((3, 1, 64, 64), 0.4)
    y = corrupt(x, "shot_noise", 3, SampleRandom.from_seeds([7, 8, 9]))
    counts = (y * photons).round().view(-1).numpy()
    assert chi_square_p(counts, 0.4 * photons) > 1e-3


@pytest.mark.parametrize("size", [16, 32, 64])
def test_snow_equals_imagecorruptions_given_the_same_draws(size, monkeypatch):
    # imagecorruptions' snow itself, fed our normal noise and angle through numpy's sampler:
    # what is left to differ is arithmetic (float32 here, float64 there), not the method.
    icc = pytest.importorskip("imagecorruptions.corruptions")
    from worker.engine.suites.perturbation.corruptions.weather import SNOW

    img = torch.nn.functional.interpolate(picture(3)[None], size=(size, size), mode="bilinear")[0]
    img = (img * 255).round() / 255
    for severity in (1, 2, 3, 4, 5):
        for seed in range(3):
            ours = corrupt(img[None], "snow", severity, SampleRandom.from_seeds([seed]))[0]
            again = SampleRandom.from_seeds([seed])  # the same stream, drawn in snow's order
            mean, std = SNOW[severity - 1][:2]
            noise = again.normal((size, size), mean, std)[0].double().numpy()
            angle = float(again.uniform((), -135.0, -45.0)[0])
            monkeypatch.setattr(np.random, "normal", lambda size, loc, scale, out=noise: out)
            monkeypatch.setattr(np.random, "uniform", lambda lo, hi, out=angle: out)
            arr = np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            want = torch.from_numpy(np.asarray(icc.snow(arr, severity)) / 255).permute(2, 0, 1)
            err = (ours.double() - want).abs()
            # The layer is rounded to 8 bits on both sides: a float difference may flip one level.
            assert err.max() <= 1 / 255 + 1e-5 and err.mean() < 2e-4, (severity, seed, float(err.max()))


def test_poisson_counts_do_not_depend_on_cpu_blocks_or_threads(monkeypatch):
    from worker.engine.suites.perturbation.corruptions import poisson

    g = torch.Generator().manual_seed(5)
    rates = torch.rand(3, 5000, generator=g) * 60
    u = torch.rand(2, 3, 5000, generator=g, dtype=torch.float64)
    monkeypatch.setattr(poisson, "CPU_BLOCK", 1 << 30)
    one_pass = poisson_from_uniforms(rates, u[0], u[1])
    threads = torch.get_num_threads()
    monkeypatch.setattr(poisson, "CPU_BLOCK", 777)
    try:
        torch.set_num_threads(2)
        blocks = poisson_from_uniforms(rates, u[0], u[1])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one_pass, blocks)
