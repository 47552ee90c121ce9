"""Our tensor corruptions against the reference implementations, corruption by corruption.

Deterministic corruptions must match the reference pixel by pixel (up to its 8-bit rounding);
random ones must distort the same test image as much, measured by SSIM to the clean image and
by the mean absolute change, averaged over a few seeds on both sides.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engine.perturbation.reference_corruptions import picture, reference
from worker.engine.suites.perturbation.corruptions import CORRUPTIONS, SEVERITIES, SampleRandom, corrupt

pytest.importorskip("imagecorruptions")
structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity

DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression")
# Bands for the random corruptions: |SSIM ours - SSIM reference| and the ratio of mean changes.
# The weather layers are random textures (and our frost layer is procedural), so their band is wider;
# the reference's impulse noise draws from scikit-image's own unseeded generator, so its
# statistics vary from run to run (a few salt-and-pepper pixels at severity 1).
SSIM_BAND = {"snow": 0.08, "frost": 0.08, "fog": 0.06, "glass_blur": 0.06, "impulse_noise": 0.05}
CHANGE_BAND = {"snow": 0.2, "frost": 0.25, "fog": 0.15, "glass_blur": 0.2, "impulse_noise": 0.3}
SEEDS = 4


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(structural_similarity(a.mean(0).numpy(), b.mean(0).numpy(), data_range=1.0))


def ours(name: str, img: torch.Tensor, severity: int, seeds: int) -> torch.Tensor:
    batch = img[None].expand(seeds, *img.shape).contiguous()
    return corrupt(batch, name, severity, SampleRandom.from_seeds(range(100, 100 + seeds)))


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_match_reference_pixels(name, channels):
    img = picture(channels)
    for severity in SEVERITIES:
        got = ours(name, img, severity, 1)[0]
        want = reference(name, img, severity, seed=0)
        assert got.shape == want.shape
        err = float((got - want).abs().mean())
        assert err < 0.012, f"{name} s{severity}: mean |ours - reference| = {err:.4f}"


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n not in DETERMINISTIC])
def test_random_corruptions_match_reference_statistics(name, channels):
    img = picture(channels)
    ssim_band = SSIM_BAND.get(name, 0.04)
    change_band = CHANGE_BAND.get(name, 0.12)
    for severity in SEVERITIES:
        got = ours(name, img, severity, SEEDS)
        refs = [reference(name, img, severity, seed=s) for s in range(SEEDS)]
        s_ours = np.mean([ssim(g, img) for g in got])
        s_ref = np.mean([ssim(r, img) for r in refs])
        c_ours = float((got - img).abs().mean())
        c_ref = float(np.mean([float((r - img).abs().mean()) for r in refs]))
        assert abs(s_ours - s_ref) <= ssim_band, f"{name} s{severity}: SSIM {s_ours:.3f} vs {s_ref:.3f}"
        assert abs(c_ours / c_ref - 1) <= change_band, f"{name} s{severity}: change {c_ours:.4f} vs {c_ref:.4f}"


def test_severity_orders_the_damage():
    img = picture(3)
    for name in CORRUPTIONS:
        if name in ("snow", "frost", "fog", "glass_blur", "pixelate", "elastic_transform", "motion_blur"):
            continue  # their ImageNet-C constants are not monotone in every statistic
        scores = [ssim(ours(name, img, s, 2).mean(0), img) for s in SEVERITIES]
        assert scores[0] > scores[-1], f"{name}: SSIM {scores}"


@pytest.mark.parametrize("shape", [(3, 1, 32, 32), (2, 3, 32, 32), (2, 1, 8, 8), (1, 3, 20, 28)])
def test_every_corruption_runs_on_small_and_grey_images(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    for name in CORRUPTIONS:
        for severity in (1, 5):
            y = corrupt(x, name, severity, SampleRandom.from_seeds(range(shape[0])))
            assert y.shape == x.shape and y.dtype == x.dtype, name
            assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1, name


def test_an_image_is_corrupted_the_same_in_any_batch():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    seeds = [11, 12, 13, 14]
    for name in CORRUPTIONS:
        whole = corrupt(x, name, 3, SampleRandom.from_seeds(seeds))
        part = corrupt(x[2:], name, 3, SampleRandom.from_seeds(seeds[2:]))
        assert torch.allclose(whole[2:], part, atol=1e-6), name
        again = corrupt(x, name, 3, SampleRandom.from_seeds([s + 100 for s in seeds]))
        if name not in DETERMINISTIC:
            assert not torch.equal(whole, again), f"{name} ignores its seed"


def test_bad_arguments_are_refused():
    x = torch.rand(2, 3, 8, 8)
    rng = SampleRandom.from_seeds([0, 1])
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "rain", 1, rng)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "fog", 6, rng)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        corrupt(torch.rand(2, 4, 8, 8), "fog", 1, rng)
    with pytest.raises(ValueError, match="one random stream per image"):
        corrupt(x, "fog", 1, SampleRandom.from_seeds([0]))


def test_motion_blur_fft_path_equals_the_sum_of_shifts(monkeypatch):
    from worker.engine.suites.perturbation.corruptions import ops

    x = torch.rand(3, 3, 70, 90, generator=torch.Generator().manual_seed(2))
    angles = torch.tensor([-40.0, 3.0, 44.0])
    fft = ops.motion_blur(x, 15, 8.0, angles)
    monkeypatch.setattr(ops, "MOTION_FFT_MIN_SIDE", 10_000)
    shifts = ops.motion_blur(x, 15, 8.0, angles)
    assert torch.allclose(fft, shifts, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 1, 16, 16), (1, 3, 64, 80)])
def test_corruptions_leave_their_input_alone(shape):
    # The corruptions work in place on their own buffers; the caller's images must not change.
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    before = x.clone()
    for name in CORRUPTIONS:
        corrupt(x, name, 3, SampleRandom.from_seeds(range(shape[0])))
        assert torch.equal(x, before), name


def test_threaded_draws_give_the_same_images():
    # Large per-sample draws run on torch's thread count, one generator per task.
    x = torch.rand(3, 1, 256, 256, generator=torch.Generator().manual_seed(4))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [corrupt(x, name, 2, SampleRandom.from_seeds([5, 6, 7])) for name in ("shot_noise", "impulse_noise")]
        torch.set_num_threads(2)
        two = [corrupt(x, name, 2, SampleRandom.from_seeds([5, 6, 7])) for name in ("shot_noise", "impulse_noise")]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
