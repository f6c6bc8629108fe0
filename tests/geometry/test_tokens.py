"""Block regions on visual-token grids (ILP/PLC masks).

A token cell c of n covers [c/n, (c+1)/n); it belongs to a region when it overlaps the region's
normalized rectangle with positive area. Expected masks are built here from hand-worked row and
column ranges, written in the comments.
"""

from __future__ import annotations

import numpy as np
import pytest

from crop.geometry import region_token_mask
from crop.geometry.tokens import box_norm_token_mask


def _rect(grid_hw, rows, cols):
    """Expected mask: inclusive row range x inclusive column range (None = empty)."""
    m = np.zeros(grid_hw, dtype=bool)
    if rows is not None:
        m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


# Qwen2-VL-style 27 columns x 20 rows (W > H). Block i of 8 along columns covers
# cells floor(i*27/8) .. ceil((i+1)*27/8)-1:
#   i=0: 0..ceil(3.375)-1=3      i=1: floor(3.375)=3..ceil(6.75)-1=6
#   i=2: floor(6.75)=6..ceil(10.125)-1=10   i=3: floor(10.125)=10..ceil(13.5)-1=13
#   i=4: floor(13.5)=13..ceil(16.875)-1=16  i=5: floor(16.875)=16..ceil(20.25)-1=20
#   i=6: floor(20.25)=20..ceil(23.625)-1=23 i=7: floor(23.625)=23..26
# Along 20 rows, block j covers floor(j*2.5) .. ceil((j+1)*2.5)-1:
#   j=0: 0..2  j=1: 2..4  j=2: 5..7  j=3: 7..9  j=4: 10..12  j=5: 12..14  j=6: 15..17  j=7: 17..19
# Neighbouring blocks share the cell a boundary cuts through (3, 6, 10, ... and rows 2, 7, 12, 17).
QWEN = (20, 27)

REGION_MASKS = [
    # --- LLaVA-1.5 24x24: block k is exactly tokens 3k..3k+2 on both axes.
    pytest.param((0, 0, 0, 0), (24, 24), (0, 2), (0, 2), id="24x24-block-0"),
    pytest.param((3, 3, 3, 3), (24, 24), (9, 11), (9, 11), id="24x24-block-3-3"),
    # x 1..2 -> cols 3..8; y 2..3 -> rows 6..11
    pytest.param((1, 2, 2, 3), (24, 24), (6, 11), (3, 8), id="24x24-2x2"),
    pytest.param((0, 0, 7, 7), (24, 24), (0, 23), (0, 23), id="24x24-full"),
    pytest.param((7, 0, 7, 0), (24, 24), (0, 2), (21, 23), id="24x24-top-right"),
    # --- 8x8 tokens: one token per block
    pytest.param((2, 5, 4, 6), (8, 8), (5, 6), (2, 4), id="8x8-identity"),
    # --- 16x32 tokens (rows 16, cols 32): block = 2 rows x 4 cols; x 1..1 -> cols 4..7, y 6..7 -> rows 12..15
    pytest.param((1, 6, 1, 7), (16, 32), (12, 15), (4, 7), id="16x32"),
    # --- Qwen-style 20 rows x 27 cols (see the table above)
    pytest.param((0, 0, 0, 0), QWEN, (0, 2), (0, 3), id="qwen-block-0-0"),
    pytest.param((1, 1, 1, 1), QWEN, (2, 4), (3, 6), id="qwen-block-1-1"),
    pytest.param((2, 2, 2, 2), QWEN, (5, 7), (6, 10), id="qwen-block-2-2"),
    # x 3..4 -> cols 10..16; y 3..4 -> rows 7..12
    pytest.param((3, 3, 4, 4), QWEN, (7, 12), (10, 16), id="qwen-2x2-middle"),
    pytest.param((7, 7, 7, 7), QWEN, (17, 19), (23, 26), id="qwen-last-block"),
    pytest.param((0, 0, 7, 7), QWEN, (0, 19), (0, 26), id="qwen-full"),
    # --- a grid smaller than 8: 3x3 tokens. Block 4 along an axis covers [4/8, 5/8) = [0.5, 0.625):
    # cell 1 covers [1/3, 2/3) -> only cell 1.
    pytest.param((4, 4, 4, 4), (3, 3), (1, 1), (1, 1), id="3x3-middle-block"),
    # block 2 covers [0.25, 0.375) -> cell floor(0.75)=0 .. ceil(1.125)-1 = 1
    pytest.param((2, 2, 2, 2), (3, 3), (0, 1), (0, 1), id="3x3-straddling-block"),
    # 1x1 token grid: any region is the single token
    pytest.param((5, 2, 6, 3), (1, 1), (0, 0), (0, 0), id="1x1"),
]


@pytest.mark.parametrize("region, grid_hw, rows, cols", REGION_MASKS)
def test_region_token_mask(region, grid_hw, rows, cols):
    got = region_token_mask(region, grid_hw)
    assert got.dtype == np.bool_
    assert got.shape == grid_hw
    np.testing.assert_array_equal(got, _rect(grid_hw, rows, cols))


def test_region_on_24x24_is_exactly_3x3_tokens_per_block():
    # Every single block on LLaVA-1.5's grid is exactly 9 tokens, and the 64 blocks tile the grid.
    total = np.zeros((24, 24), dtype=int)
    for y in range(8):
        for x in range(8):
            m = region_token_mask((x, y, x, y), (24, 24))
            assert m.sum() == 9
            total += m
    np.testing.assert_array_equal(total, np.ones((24, 24), dtype=int))


BOX_MASKS = [
    # partly outside [0, 1]: x -0.5..0.25 is cut to 0..0.25 -> cols 0..0 on 4 cols;
    # y 0.5..1.5 cut to 0.5..1 -> rows 2..3
    pytest.param((-0.5, 0.5, 0.25, 1.5), (4, 4), (2, 3), (0, 0), id="partly-outside-cut"),
    # entirely right of the image -> empty
    pytest.param((1.0, 0.0, 1.5, 1.0), (4, 4), None, None, id="entirely-outside-right"),
    # entirely above -> empty
    pytest.param((0.0, -0.7, 1.0, -0.1), (4, 4), None, None, id="entirely-outside-above"),
    # bigger than the image -> everything
    pytest.param((-1, -1, 2, 2), (3, 5), (0, 2), (0, 4), id="covers-everything"),
    # edges on cell boundaries do not spill: 0.25..0.5 on 4 cells -> cell 1 only
    pytest.param((0.25, 0.25, 0.5, 0.5), (4, 4), (1, 1), (1, 1), id="edges-on-boundaries"),
    # a sliver of positive width still takes its cell: 0.5..0.5001 on 4 cells -> floor(2) = 2 ..
    # ceil(2.0004)-1 = 2. (Floats are taken literally: 0.6 is slightly below 3/5, so on 5 cells a
    # box starting at 0.6 would also touch cell 2; hence a power-of-two boundary here.)
    pytest.param((0.5, 0.5, 0.5001, 0.5001), (4, 4), (2, 2), (2, 2), id="sliver"),
    # zero-width box -> empty
    pytest.param((0.5, 0.0, 0.5, 1.0), (4, 4), None, None, id="zero-width"),
]


@pytest.mark.parametrize("box_norm, grid_hw, rows, cols", BOX_MASKS)
def test_box_norm_token_mask(box_norm, grid_hw, rows, cols):
    got = box_norm_token_mask(box_norm, grid_hw)
    assert got.shape == grid_hw and got.dtype == np.bool_
    np.testing.assert_array_equal(got, _rect(grid_hw, rows, cols))


@pytest.mark.parametrize(
    "region, fragment",
    [((0, 0, 8, 7), "x_max=8 is outside 0..7"), ((5, 0, 2, 7), "x_min=5 > x_max=2")],
    ids=["out-of-range", "swapped"],
)
def test_region_token_mask_rejects_invalid_region(region, fragment):
    with pytest.raises(ValueError) as info:
        region_token_mask(region, (24, 24))
    assert fragment in str(info.value)
