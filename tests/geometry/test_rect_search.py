"""The exact block-rectangle search against a brute force written here from the documented rules.

The oracle loops over every (x_min, y_min, x_max, y_max) with plain Python sums (no prefix
sums) and applies the tie rules of :mod:`crop.geometry.rect_search` literally. Scores are
integer-valued so both sides sum exactly and ties really happen (hypothesis draws many zeros).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crop.geometry import Region, all_rects, best_rect_within_budget, rect_masses, smallest_rect_with_share


def _brute_rects(g):
    for y0 in range(g):
        for x0 in range(g):
            for y1 in range(y0, g):
                for x1 in range(x0, g):
                    yield (x0, y0, x1, y1)


def _mass(s, r):
    x0, y0, x1, y1 = r
    return sum(int(s[y][x]) for y in range(y0, y1 + 1) for x in range(x0, x1 + 1))


def _area(r):
    return (r[2] - r[0] + 1) * (r[3] - r[1] + 1)


def brute_share(s, share):
    g = len(s)
    total = _mass(s, (0, 0, g - 1, g - 1))
    if total == 0:
        return (0, 0, g - 1, g - 1)
    ok = [r for r in _brute_rects(g) if _mass(s, r) >= share * total]
    # smallest area, then larger mass, then canonical (y_min, x_min, y_max, x_max)
    return min(ok, key=lambda r: (_area(r), -_mass(s, r), r[1], r[0], r[3], r[2]))


def brute_budget(s, cost, budget):
    ok = [r for r in _brute_rects(len(s)) if cost(r) <= budget]
    return min(ok, key=lambda r: (-_mass(s, r), cost(r), _area(r), r[1], r[0], r[3], r[2]))


def test_there_are_1296_rectangles_each_once_in_canonical_order():
    r = all_rects(8)
    assert r.shape == (1296, 4)
    assert len({tuple(v) for v in r.tolist()}) == 1296
    keys = [(y0, x0, y1, x1) for x0, y0, x1, y1 in r.tolist()]
    assert keys == sorted(keys)


grids = st.integers(2, 8).flatmap(
    lambda g: st.lists(st.lists(st.sampled_from([0, 0, 0, 1, 2, 3, 7]), min_size=g, max_size=g), min_size=g, max_size=g))


@settings(max_examples=60, deadline=None)
@given(grids, st.sampled_from([0.25, 0.5, 0.75, 0.9, 1.0]))
def test_smallest_rect_with_share_equals_brute_force(s, share):
    region, got_share = smallest_rect_with_share(np.array(s, dtype=float), share)
    want = brute_share(s, share)
    assert tuple(region) == want
    total = _mass(s, (0, 0, len(s) - 1, len(s) - 1))
    assert got_share == pytest.approx(_mass(s, want) / total if total else 1.0)


@settings(max_examples=60, deadline=None)
@given(grids, st.integers(1, 40), st.integers(1, 3))
def test_best_rect_within_budget_equals_brute_force(s, budget, row_weight):
    g = len(s)

    def cost(r):  # an anisotropic token cost: rows cost row_weight, + 1 per column
        return (r[3] - r[1] + 1) * row_weight * (r[2] - r[0] + 1) + (r[2] - r[0] + 1)

    costs = np.array([cost(tuple(r)) for r in all_rects(g).tolist()], dtype=float)
    if costs.min() > budget:
        with pytest.raises(ValueError, match="no block rectangle fits"):
            best_rect_within_budget(np.array(s, float), costs, budget)
        return
    region, _ = best_rect_within_budget(np.array(s, float), costs, budget)
    assert tuple(region) == brute_budget(s, cost, budget)


def test_tie_rules_on_hand_cases():
    s = np.zeros((8, 8))
    s[2, 3] = s[5, 6] = 1.0  # two equal peaks
    # half of the mass: both single blocks qualify; the canonical order takes the upper one
    assert smallest_rect_with_share(s, 0.5) == (Region(3, 2, 3, 2), 0.5)
    # all of it: the bounding rectangle
    assert smallest_rect_with_share(s, 1.0) == (Region(3, 2, 6, 5), 1.0)
    # nothing anywhere: the whole grid (no pruning), never a corner
    assert smallest_rect_with_share(np.zeros((8, 8)), 0.5) == (Region(0, 0, 7, 7), 1.0)
    # budget of one block: the upper peak; budget 16 blocks covers both (a 4x4 rectangle)
    area = np.array([(r[2] - r[0] + 1) * (r[3] - r[1] + 1) for r in all_rects(8).tolist()], float)
    assert best_rect_within_budget(s, area, 1) == (Region(3, 2, 3, 2), 0.5)
    assert best_rect_within_budget(s, area, 16) == (Region(3, 2, 6, 5), 1.0)


def test_masses_equal_direct_sums_on_float_scores():
    rng = np.random.default_rng(0)
    s = rng.random((8, 8))
    m = rect_masses(s)
    for i in rng.choice(1296, 50, replace=False):
        x0, y0, x1, y1 = all_rects(8)[i]
        assert m[i] == pytest.approx(s[y0 : y1 + 1, x0 : x1 + 1].sum(), rel=1e-12)


@pytest.mark.parametrize("bad", [np.full((8, 8), -1.0), np.full((8, 7), 1.0), np.full((8, 8), np.nan)])
def test_bad_scores_are_refused(bad):
    with pytest.raises(ValueError):
        smallest_rect_with_share(bad, 0.5)


def test_bad_share_is_refused():
    with pytest.raises(ValueError, match="share"):
        smallest_rect_with_share(np.ones((8, 8)), 0.0)
