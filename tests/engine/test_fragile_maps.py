"""FRI maps on hand-made correctness maps: the four types, both signs and the border rule."""

import torch

from tests.engine.fragile_naive import naive_shift, naive_shrink
from worker.engine.suites.fragile.maps import fri_maps, shift_maps, shrink_maps, sign_counts
from worker.engine.suites.fragile.params import FriType


def t(rows):
    return torch.tensor(rows, dtype=torch.int8)


def test_single_flipped_cell_in_the_middle():
    c = t([[1, 1, 1],
           [1, 0, 1],
           [1, 1, 1]])
    loose, strict = shift_maps(c)
    # The centre differs from all 8 neighbours: strict, and -1 (incorrect -> correct).
    # Every border cell differs from one neighbour (the centre) only: loose, +1.
    assert loose.tolist() == [[1, 1, 1], [1, -1, 1], [1, 1, 1]]
    assert strict.tolist() == [[0, 0, 0], [0, -1, 0], [0, 0, 0]]


def test_border_counts_only_existing_neighbours():
    # The corner has three neighbours, all different: strict although it has only 3, not 8.
    c = t([[1, 0, 0],
           [0, 0, 0],
           [0, 0, 0]])
    loose, strict = shift_maps(c)
    assert strict.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert loose.tolist() == [[1, -1, 0], [-1, -1, 0], [0, 0, 0]]


def test_edge_cell_with_five_neighbours_and_one_row_maps():
    c = t([[0, 1, 0, 0]])  # one row: cells have 1 or 2 neighbours
    loose, strict = shift_maps(c)
    assert loose.tolist() == [[-1, 1, -1, 0]]
    assert strict.tolist() == [[-1, 1, 0, 0]]
    single_loose, single_strict = shift_maps(t([[1]]))  # no neighbours at all: never fragile
    assert single_loose.tolist() == [[0]] and single_strict.tolist() == [[0]]


def test_uniform_maps_have_no_fris():
    for value in (0, 1):
        c = torch.full((4, 5), value, dtype=torch.int8)
        c2 = torch.full((6, 7), value, dtype=torch.int8)
        for m in fri_maps(c, c2).values():
            assert m.abs().sum() == 0


def test_shrink_loose_strict_and_signs():
    c = t([[1, 0]])
    c2 = t([[1, 1, 1, 0],
            [1, 1, 1, 0],
            [1, 0, 1, 0]])
    loose, strict = shrink_maps(c, c2)
    # (0,0): correct; its nine sub-regions c2[0:3, 0:3] hold one 0 -> loose +1, not strict.
    # (0,1): incorrect; sub-regions c2[0:3, 1:4] hold 0s and 1s -> loose -1, not strict.
    assert loose.tolist() == [[1, -1]]
    assert strict.tolist() == [[0, 0]]
    c2_all_wrong = torch.zeros(3, 4, dtype=torch.int8)
    loose, strict = shrink_maps(t([[1, 0]]), c2_all_wrong)
    assert loose.tolist() == [[1, 0]] and strict.tolist() == [[1, 0]]
    loose, strict = shrink_maps(t([[0, 0]]), torch.ones(3, 4, dtype=torch.int8))
    assert strict.tolist() == [[-1, -1]]


def test_shrink_shape_checked():
    import pytest

    with pytest.raises(ValueError, match="C_"):
        shrink_maps(t([[1, 0]]), t([[1, 0]]))


def test_random_maps_match_the_cell_loop():
    g = torch.Generator().manual_seed(0)
    for rows, cols, p in [(5, 7, 0.5), (9, 4, 0.9), (2, 2, 0.3), (1, 6, 0.5), (12, 12, 0.97)]:
        c = (torch.rand(rows, cols, generator=g) < p).to(torch.int8)
        c2 = (torch.rand(rows + 2, cols + 2, generator=g) < p).to(torch.int8)
        maps = fri_maps(c, c2)
        loose, strict = naive_shift(c.tolist())
        assert maps[FriType.LOOSE_SHIFT].tolist() == loose
        assert maps[FriType.STRICT_SHIFT].tolist() == strict
        loose, strict = naive_shrink(c.tolist(), c2.tolist())
        assert maps[FriType.LOOSE_SHRINK].tolist() == loose
        assert maps[FriType.STRICT_SHRINK].tolist() == strict
        for m in maps.values():
            assert m.dtype == torch.int8


def test_sign_counts():
    assert sign_counts(t([[1, -1, 0], [1, 1, -1]])) == (3, 2)
