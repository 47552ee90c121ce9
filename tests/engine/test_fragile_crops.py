"""The batched crop-and-resize equals F.interpolate of each crop."""

import pytest
import torch
import torch.nn.functional as F

from worker.engine.suites.fragile.crops import CropResizer, reference_crop, resize_matrix
from worker.engine.suites.fragile.params import Interpolation

BILINEAR, BICUBIC, NEAREST = Interpolation.BILINEAR, Interpolation.BICUBIC, Interpolation.NEAREST


def all_reference(img, side, out, mode=BILINEAR, antialias=False):
    _, h, w = img.shape
    return torch.stack([reference_crop(img, i, j, side, out, mode=mode, antialias=antialias)
                        for i in range(h - side + 1) for j in range(w - side + 1)])


@pytest.mark.parametrize("shape, side, out, mode, antialias", [
    ((1, 12, 12), 7, (32, 32), BILINEAR, False),    # upsampling
    ((3, 9, 14), 5, (3, 4), BILINEAR, False),       # downsampling, non-square output
    ((3, 31, 27), 21, (8, 11), BILINEAR, False),    # strong downsampling: more than 2 source pixels per output
    ((1, 10, 13), 3, (7, 5), BILINEAR, False),      # odd sizes
    ((1, 10, 13), 1, (4, 4), BILINEAR, False),      # a one-pixel crop (C_{l-2} of l = 3)
    ((3, 31, 27), 21, (8, 11), BILINEAR, True),     # antialias
    ((1, 20, 25), 15, (29, 6), BILINEAR, True),     # antialias up one axis, down the other
    ((3, 20, 25), 9, (17, 13), BICUBIC, False),
    ((3, 20, 25), 15, (7, 6), BICUBIC, True),
    ((1, 20, 25), 9, (17, 13), NEAREST, False),
])
def test_batched_crops_equal_interpolate(shape, side, out, mode, antialias):
    img = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape) + side))
    resizer = CropResizer(out, mode=mode, antialias=antialias)
    n = (shape[1] - side + 1) * (shape[2] - side + 1)
    got = resizer.crops(img, side, 0, n)
    assert got.shape == (n, shape[0], *out)
    torch.testing.assert_close(got, all_reference(img, side, out, mode, antialias), rtol=0, atol=1e-5)


def test_any_range_of_crops_straddling_rows():
    img = torch.rand(3, 11, 9, generator=torch.Generator().manual_seed(3))
    resizer = CropResizer((6, 10))
    ref = all_reference(img, 4, (6, 10))
    for start, stop in [(0, 1), (5, 6), (4, 17), (13, 42), (41, 48), (7, 7)]:
        torch.testing.assert_close(resizer.crops(img, 4, start, stop), ref[start:stop], rtol=0, atol=1e-5)


def test_edges_are_clamped_at_the_crop_not_the_image():
    # A bright frame around a dark crop: roi_align-style sampling would blend the frame in.
    img = torch.ones(1, 9, 9)
    img[:, 2:7, 2:7] = 0.0
    got = CropResizer((16, 16)).crops(img, 5, 2 * 5 + 2, 2 * 5 + 3)
    assert got.abs().max() == 0.0


def test_resize_matrix_rows_sum_to_one():
    for mode, aa in [(BILINEAR, False), (BILINEAR, True), (BICUBIC, False), (NEAREST, False)]:
        m = resize_matrix(13, 5, mode=mode, antialias=aa)
        torch.testing.assert_close(m.sum(dim=1), torch.ones(5), rtol=0, atol=1e-6)
        x = torch.rand(13)
        kwargs = {} if mode is NEAREST else {"align_corners": False, "antialias": aa}
        ref = F.interpolate(x.view(1, 1, 13, 1).expand(1, 1, 13, 3), size=(5, 3), mode=mode.value, **kwargs)
        torch.testing.assert_close(m @ x, ref[0, 0, :, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    ((8, 0, 1), "does not fit"), ((3, 0, 100), "out of bounds"), ((3, 5, 4), "out of bounds")])
def test_bad_ranges_refused(args, message):
    with pytest.raises(ValueError, match=message):
        CropResizer((4, 4)).crops(torch.rand(1, 7, 7), *args)


def test_antialias_nearest_refused():
    with pytest.raises(ValueError, match="antialias"):
        CropResizer((4, 4), mode=NEAREST, antialias=True)
