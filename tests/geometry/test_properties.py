"""Property tests (hypothesis) for the grid geometry, the token masks and the answer strings.

Oracles here are independent of the code under test: block overlaps are decided by brute force
over all 8 blocks with exact ``Fraction`` arithmetic, not by the floor/ceil formulas.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from crop.formatting import format_region, parse_region_lenient, parse_region_strict
from crop.geometry import (
    BoxRejected,
    Region,
    area_recall,
    box_norm_to_region,
    box_px_to_region,
    clip_box,
    pad_square_norm_to_px,
    px_to_pad_square_norm,
    region_area,
    region_iou,
    region_to_box_norm,
    region_to_box_px,
    region_token_mask,
)

G = 8
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sizes = st.integers(min_value=1, max_value=5000)
coords = st.floats(min_value=-1.0, max_value=1.5, allow_nan=False, allow_infinity=False)


@st.composite
def regions(draw, grid=G):
    x0, x1 = sorted(draw(st.integers(0, grid - 1)) for _ in range(2))
    y0, y1 = sorted(draw(st.integers(0, grid - 1)) for _ in range(2))
    return Region(x0, y0, x1, y1)


@st.composite
def image_and_box(draw):
    """(W, H, box) with a box that may stick out of the image; clipped later by the test."""
    w, h = draw(sizes), draw(sizes)
    fx = sorted(draw(coords) for _ in range(2))
    fy = sorted(draw(coords) for _ in range(2))
    # Mix float boxes with integer-pixel boxes (many sources have ints, which hit boundaries).
    if draw(st.booleans()):
        box = (fx[0] * w, fy[0] * h, fx[1] * w, fy[1] * h)
    else:
        box = (round(fx[0] * w), round(fy[0] * h), round(fx[1] * w), round(fy[1] * h))
    return w, h, box


def _overlapping_blocks(lo: Fraction, hi: Fraction, extent: int) -> list[int]:
    """Brute force: blocks i whose [i*E/G, (i+1)*E/G) meets (lo, hi) with positive length."""
    return [
        i for i in range(G)
        if min(hi, Fraction((i + 1) * extent, G)) > max(lo, Fraction(i * extent, G))
    ]


def _clipped_or_skip(box, w, h):
    """``clip_box``, or skip the example (hypothesis ``assume``) when the box is rejected."""
    try:
        return clip_box(box, w, h)
    except BoxRejected:
        assume(False)


@FAST
@given(image_and_box())
def test_region_is_exactly_the_blocks_the_clipped_box_overlaps(case):
    w, h, box = case
    clipped = _clipped_or_skip(box, w, h)
    region = box_px_to_region(clipped, w, h)
    x1, y1, x2, y2 = (Fraction(v) for v in clipped)
    xs = _overlapping_blocks(x1, x2, w)
    ys = _overlapping_blocks(y1, y2, h)
    # Minimality and coverage in one: the region is the span of the overlapped blocks, so no
    # block of the region is disjoint from the box and no overlapped block is left out.
    assert region == Region(xs[0], ys[0], xs[-1], ys[-1])
    assert xs == list(range(xs[0], xs[-1] + 1))  # a box overlaps a contiguous run of blocks


@FAST
@given(image_and_box())
def test_region_pixel_rectangle_covers_the_clipped_box(case):
    w, h, box = case
    clipped = _clipped_or_skip(box, w, h)
    region = box_px_to_region(clipped, w, h)
    rx1, ry1, rx2, ry2 = region_to_box_px(region, w, h)
    x1, y1, x2, y2 = clipped
    assert rx1 <= x1 and ry1 <= y1 and x2 <= rx2 and y2 <= ry2
    # ...and the region is inside the image
    assert 0 <= rx1 and 0 <= ry1 and rx2 <= w and ry2 <= h


@FAST
@given(sizes, sizes)
def test_full_image_is_0_0_7_7(w, h):
    assert box_px_to_region((0, 0, w, h), w, h) == Region(0, 0, 7, 7)
    assert format_region(box_px_to_region(clip_box((-5, -5, w + 5, h + 5), w, h), w, h)) == "0 0 7 7."


@FAST
@given(regions(), st.booleans())
def test_format_then_strict_parse_returns_region(region, period):
    assert parse_region_strict(format_region(region, trailing_period=period)) == region


@FAST
@given(regions())
def test_format_without_period_then_lenient_parse_returns_region(region):
    assert parse_region_lenient(format_region(region, trailing_period=False)) == region


@FAST
@given(regions())
def test_format_with_period_then_lenient_parse_returns_region(region):
    assert parse_region_lenient(format_region(region)) == region


@FAST
@given(regions())
def test_norm_region_norm_round_trip(region):
    norm = region_to_box_norm(region)
    assert box_norm_to_region(norm) == region
    assert region_to_box_norm(box_norm_to_region(norm)) == norm


@FAST
@given(regions(), sizes, sizes)
def test_region_px_region_round_trip_any_image_size(region, w, h):
    # Block edges k*W/8 are exact in binary floating point, so block-aligned pixel boxes map back
    # to the same region for every image size (the "no float drift" requirement).
    assert box_px_to_region(region_to_box_px(region, w, h), w, h) == region


@st.composite
def px_box_inside(draw):
    w, h = draw(sizes), draw(sizes)
    fx = sorted(draw(st.floats(0, 1)) for _ in range(2))
    fy = sorted(draw(st.floats(0, 1)) for _ in range(2))
    return w, h, (fx[0] * w, fy[0] * h, fx[1] * w, fy[1] * h)


@FAST
@given(px_box_inside())
def test_pad_square_px_norm_px_round_trip(case):
    w, h, box = case
    norm = px_to_pad_square_norm(box, w, h)
    # every value lies in the padded square [0, 1]
    assert all(-1e-12 <= v <= 1 + 1e-12 for v in norm)
    back = pad_square_norm_to_px(norm, w, h)
    assert back == pytest.approx(box, abs=1e-9 * max(w, h))


@FAST
@given(px_box_inside())
def test_pad_square_offsets_only_the_short_side(case):
    w, h, box = case
    s = max(w, h)
    x1, y1, x2, y2 = px_to_pad_square_norm(box, w, h)
    if w > h:  # x untouched, y shifted by (W - H) // 2
        assert (x1, x2) == pytest.approx((box[0] / s, box[2] / s))
        assert (y1, y2) == pytest.approx(((box[1] + (w - h) // 2) / s, (box[3] + (w - h) // 2) / s))
    else:
        assert (y1, y2) == pytest.approx((box[1] / s, box[3] / s))
        assert (x1, x2) == pytest.approx(((box[0] + (h - w) // 2) / s, (box[2] + (h - w) // 2) / s))


@FAST
@given(regions(), st.integers(1, 6), st.integers(1, 6))
def test_token_mask_on_grids_divisible_by_8(region, a, b):
    rows, cols = 8 * a, 8 * b
    mask = region_token_mask(region, (rows, cols))
    assert mask.sum() == region_area(region) * a * b
    # the mask is the 8x8 block mask with every block blown up to a x b tokens
    blocks = np.zeros((G, G), dtype=bool)
    blocks[region.y_min : region.y_max + 1, region.x_min : region.x_max + 1] = True
    np.testing.assert_array_equal(mask, np.kron(blocks, np.ones((a, b), dtype=bool)))


@FAST
@given(regions(), st.integers(1, 40), st.integers(1, 40))
def test_token_mask_any_grid_is_exactly_the_overlapping_cells(region, rows, cols):
    mask = region_token_mask(region, (rows, cols))
    rx1, ry1 = Fraction(region.x_min, G), Fraction(region.y_min, G)
    rx2, ry2 = Fraction(region.x_max + 1, G), Fraction(region.y_max + 1, G)
    col_in = [min(rx2, Fraction(c + 1, cols)) > max(rx1, Fraction(c, cols)) for c in range(cols)]
    row_in = [min(ry2, Fraction(r + 1, rows)) > max(ry1, Fraction(r, rows)) for r in range(rows)]
    np.testing.assert_array_equal(mask, np.outer(row_in, col_in))
    assert mask.any()  # a valid region always keeps at least one token


@FAST
@given(regions(), regions())
def test_metric_properties(a, b):
    assert area_recall(a, a) == 1.0 and region_iou(a, a) == 1.0
    r_ab, iou = area_recall(a, b), region_iou(a, b)
    assert 0.0 <= iou <= r_ab <= 1.0
    assert iou == region_iou(b, a)
    # brute-force intersection over the 64 blocks
    inter = sum(
        1 for x in range(G) for y in range(G)
        if a.x_min <= x <= a.x_max and a.y_min <= y <= a.y_max
        and b.x_min <= x <= b.x_max and b.y_min <= y <= b.y_max
    )
    assert r_ab == pytest.approx(inter / region_area(a))


@FAST
@given(image_and_box(), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_region_is_monotone_under_containment(case, tx1, tx2, ty1, ty2):
    # A box inside another box never gets a larger region.
    w, h, outer = case
    outer = _clipped_or_skip(outer, w, h)
    # an inner box at fractions t of the outer one, clamped into it against rounding
    ox1, oy1, ox2, oy2 = outer
    ix = sorted(min(ox2, max(ox1, ox1 + (ox2 - ox1) * t)) for t in (tx1, tx2))
    iy = sorted(min(oy2, max(oy1, oy1 + (oy2 - oy1) * t)) for t in (ty1, ty2))
    assume(ix[1] > ix[0] and iy[1] > iy[0])
    r_out = box_px_to_region(outer, w, h)
    r_in = box_px_to_region((ix[0], iy[0], ix[1], iy[1]), w, h)
    assert r_out.x_min <= r_in.x_min <= r_in.x_max <= r_out.x_max
    assert r_out.y_min <= r_in.y_min <= r_in.y_max <= r_out.y_max
