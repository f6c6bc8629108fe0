"""8x8 block regions: exact hand-worked tables (paper Sec. 3.2, Fig. 3).

Block i along x covers pixels [i*W/8, (i+1)*W/8). A block belongs to the region when the box
overlaps it with positive length on both axes, so for a box (x1, x2):
    x_min = floor(x1 * 8 / W),   x_max = ceil(x2 * 8 / W) - 1.
Each row's comment works the value out by hand; nothing here is computed by the code under test.
"""

from __future__ import annotations

import pytest

from crop import GRID_SIZE
from crop.geometry import (
    Region,
    area_recall,
    box_norm_to_region,
    box_px_to_region,
    clip_box,
    full_region,
    region_area,
    region_iou,
    region_to_box_norm,
    region_to_box_px,
)

# ---------------------------------------------------------------------------------------------
# pixel box -> region
# ---------------------------------------------------------------------------------------------

PX_TO_REGION = [
    # --- boundaries on an 800x800 image: blocks are 100 px wide.
    # x2 = 100 lies exactly on the 0|1 boundary: 100*8/800 = 1, ceil(1)-1 = 0 -> no spill.
    pytest.param((0, 0, 100, 100), 800, 800, (0, 0, 0, 0), id="edge-on-boundary-no-spill"),
    # x1 = 100 starts exactly at block 1: floor(1) = 1; x2 = 200 ends on the 1|2 boundary -> 1.
    pytest.param((100, 100, 200, 200), 800, 800, (1, 1, 1, 1), id="exactly-block-1"),
    # 99 -> floor(0.99) = 0; 101 -> ceil(1.01)-1 = 1: straddles one boundary.
    pytest.param((99, 99, 101, 101), 800, 800, (0, 0, 1, 1), id="straddles-boundary"),
    # 700..800 is the last block; x2 = W -> ceil(8)-1 = 7.
    pytest.param((700, 700, 800, 800), 800, 800, (7, 7, 7, 7), id="last-block-exact"),
    # 699.5 -> floor(6.995) = 6: half a pixel before the last block spills back into block 6.
    pytest.param((699.5, 700, 800, 800), 800, 800, (6, 7, 7, 7), id="half-pixel-before-last-block"),
    # --- 1-pixel boxes on 800x800
    pytest.param((0, 0, 1, 1), 800, 800, (0, 0, 0, 0), id="1px-origin"),
    pytest.param((799, 799, 800, 800), 800, 800, (7, 7, 7, 7), id="1px-last-pixel"),
    # 1 px right after the boundary: floor(100*8/800)=1, ceil(101*8/800)-1 = ceil(1.01)-1 = 1.
    pytest.param((100, 100, 101, 101), 800, 800, (1, 1, 1, 1), id="1px-after-boundary"),
    # 1 px right before the boundary: floor(0.99)=0, ceil(1)-1 = 0.
    pytest.param((99, 99, 100, 100), 800, 800, (0, 0, 0, 0), id="1px-before-boundary"),
    # --- full image -> 0 0 7 7, for several sizes
    pytest.param((0, 0, 800, 600), 800, 600, (0, 0, 7, 7), id="full-800x600"),
    pytest.param((0, 0, 1001, 333), 1001, 333, (0, 0, 7, 7), id="full-1001x333"),
    pytest.param((0, 0, 1, 1), 1, 1, (0, 0, 7, 7), id="full-1x1"),
    pytest.param((0, 0, 7, 5), 7, 5, (0, 0, 7, 7), id="full-7x5"),
    # --- non-square 640x480: blocks are 80 wide, 60 high.
    # x: 212.4/80 = 2.655 -> 2; 401.9/80 = 5.024 -> ceil 6 - 1 = 5.
    # y: 150/60 = 2.5 -> 2; 333.2/60 = 5.553 -> ceil 6 - 1 = 5.
    pytest.param((212.4, 150.0, 401.9, 333.2), 640, 480, (2, 2, 5, 5), id="formats-md-example-640x480"),
    # exactly block (1, 1): x 80..160, y 60..120.
    pytest.param((80, 60, 160, 120), 640, 480, (1, 1, 1, 1), id="block-1-1-640x480"),
    # half a pixel past: 160.5/80 = 2.006 -> ceil 3 - 1 = 2; 120.5/60 = 2.008 -> 2.
    pytest.param((80, 60, 160.5, 120.5), 640, 480, (1, 1, 2, 2), id="half-pixel-spill-640x480"),
    # --- W=1001, H=333 (not divisible by 8).
    # x boundaries k*1001/8: 125.125, 250.25, 375.375, 500.5, 625.625, 750.75, 875.875
    # y boundaries k*333/8:   41.625,  83.25, 124.875, 166.5, 208.125, 249.75, 291.375
    # exactly block (1, 1): 125.125..250.25 x 41.625..83.25
    pytest.param((125.125, 41.625, 250.25, 83.25), 1001, 333, (1, 1, 1, 1), id="1001x333-block-1-1-exact"),
    # ends exactly on the first boundaries -> only block 0
    pytest.param((0, 0, 125.125, 41.625), 1001, 333, (0, 0, 0, 0), id="1001x333-ends-on-boundary"),
    # a thousandth past the first boundaries -> spills into block 1
    pytest.param((0, 0, 125.126, 41.626), 1001, 333, (0, 0, 1, 1), id="1001x333-just-past-boundary"),
    # integer pixel 125..126 straddles 125.125; 41..42 straddles 41.625
    pytest.param((125, 41, 126, 42), 1001, 333, (0, 0, 1, 1), id="1001x333-1px-straddles"),
    # 500 < 500.5 < 501 and 166 < 166.5 < 167 -> blocks 3 and 4 on both axes
    pytest.param((500, 166, 501, 167), 1001, 333, (3, 3, 4, 4), id="1001x333-1px-middle"),
    # starts exactly on the 3|4 boundaries and runs to the far edge -> 4..7
    pytest.param((500.5, 166.5, 1001, 333), 1001, 333, (4, 4, 7, 7), id="1001x333-starts-on-boundary"),
    # last block exactly: 875.875..1001 x 291.375..333
    pytest.param((875.875, 291.375, 1001, 333), 1001, 333, (7, 7, 7, 7), id="1001x333-last-block"),
    # block 6 (750.75..875.875, 249.75..291.375), ending on its far boundary
    pytest.param((875, 291, 875.875, 291.375), 1001, 333, (6, 6, 6, 6), id="1001x333-ends-on-last-boundary"),
    # --- tiny 7x5 image: blocks 0.875 px wide, 0.625 px high.
    # 1 px box (0,0,1,1): x last = ceil(8/7)-1 = ceil(1.14)-1 = 1; y last = ceil(8/5)-1 = ceil(1.6)-1 = 1.
    pytest.param((0, 0, 1, 1), 7, 5, (0, 0, 1, 1), id="7x5-1px-spans-two-blocks"),
    # (3,2,4,3): x floor(24/7)=3, ceil(32/7)-1 = ceil(4.57)-1 = 4; y floor(16/5)=3, ceil(24/5)-1 = 4.
    pytest.param((3, 2, 4, 3), 7, 5, (3, 3, 4, 4), id="7x5-1px-middle"),
    # --- float boxes on 800x600 (blocks 100 x 75)
    # 99.999/100 -> ceil(0.99999)-1 = 0; 74.999/75 -> 0
    pytest.param((0.5, 0.5, 99.999, 74.999), 800, 600, (0, 0, 0, 0), id="float-just-inside-block-0"),
    # a sliver straddling 100 and 75
    pytest.param((99.9999, 74.9999, 100.0001, 75.0001), 800, 600, (0, 0, 1, 1), id="float-sliver-straddles"),
    # --- 1x1 image with sub-pixel box: blocks are 1/8 px.
    # x: 0.5*8 = 4 -> 4 .. 7; y: 0 .. ceil(0.125*8)-1 = 0.
    pytest.param((0.5, 0, 1, 0.125), 1, 1, (4, 0, 7, 0), id="1x1-subpixel"),
]


@pytest.mark.parametrize("box, w, h, expected", PX_TO_REGION)
def test_box_px_to_region(box, w, h, expected):
    got = box_px_to_region(box, w, h)
    assert got == Region(*expected)
    assert all(type(v) is int for v in got)


AFTER_CLIP = [
    # DUDE-like page 1700x2200, x2 = 2252 -> clipped to 1700.
    # blocks 212.5 wide, 275 high: x 1500/212.5 = 7.06 -> 7 .. 7; y 100/275 -> 0, 300/275 = 1.09 -> 1.
    pytest.param((1500, 100, 2252, 300), 1700, 2200, (7, 0, 7, 1), id="dude-x2-past-width"),
    # (-50,-50,100,100) on 800x800 -> (0,0,100,100) -> block 0 only (100 is on the boundary).
    pytest.param((-50, -50, 100, 100), 800, 800, (0, 0, 0, 0), id="negative-start"),
    # box bigger than the image on every side -> full grid
    pytest.param((-1, -1, 10_000, 10_000), 640, 480, (0, 0, 7, 7), id="covers-everything"),
]


@pytest.mark.parametrize("box, w, h, expected", AFTER_CLIP)
def test_box_px_to_region_after_clipping(box, w, h, expected):
    assert box_px_to_region(clip_box(box, w, h), w, h) == Region(*expected)


PX_TO_REGION_ERRORS = [
    pytest.param((10, 0, 10, 5), 100, 100, "no positive length", id="zero-width"),
    pytest.param((0, 10, 5, 10), 100, 100, "no positive length", id="zero-height"),
    pytest.param((0, 0, 1, 1), 0, 100, "image size must be positive", id="zero-width-image"),
    pytest.param((0, 0, 1, 1), 100, -1, "image size must be positive", id="negative-height-image"),
]


@pytest.mark.parametrize("box, w, h, fragment", PX_TO_REGION_ERRORS)
def test_box_px_to_region_errors(box, w, h, fragment):
    with pytest.raises(ValueError, match=fragment):
        box_px_to_region(box, w, h)


# ---------------------------------------------------------------------------------------------
# normalized box <-> region
# ---------------------------------------------------------------------------------------------

NORM_TO_REGION = [
    pytest.param((0, 0, 1, 1), (0, 0, 7, 7), id="full"),
    # x: 0.125*8 = 1 -> 1, 0.375*8 = 3 -> ceil 3 - 1 = 2; y: 0.25*8 = 2, 0.5*8 = 4 -> 3
    pytest.param((0.125, 0.25, 0.375, 0.5), (1, 2, 2, 3), id="block-aligned"),
    # 0.1*8 = 0.8 -> 0; 0.2*8 = 1.6 -> ceil 2 - 1 = 1
    pytest.param((0.1, 0.1, 0.2, 0.2), (0, 0, 1, 1), id="straddles"),
    # 0.875..1.0 -> block 7 only
    pytest.param((0.875, 0.875, 1.0, 1.0), (7, 7, 7, 7), id="last-block"),
    # a tiny box in the middle: 0.5*8 = 4 -> 4; 0.5001*8 = 4.0008 -> ceil 5 - 1 = 4
    pytest.param((0.5, 0.5, 0.5001, 0.5001), (4, 4, 4, 4), id="tiny-middle"),
]


@pytest.mark.parametrize("box_norm, expected", NORM_TO_REGION)
def test_box_norm_to_region(box_norm, expected):
    assert box_norm_to_region(box_norm) == Region(*expected)


REGION_TO_NORM = [
    pytest.param((0, 0, 7, 7), (0.0, 0.0, 1.0, 1.0), id="full"),
    # x_min 1 -> 1/8, x_max 2 -> 3/8; y_min 2 -> 2/8, y_max 3 -> 4/8
    pytest.param((1, 2, 2, 3), (0.125, 0.25, 0.375, 0.5), id="block-aligned"),
    pytest.param((7, 0, 7, 0), (0.875, 0.0, 1.0, 0.125), id="top-right-block"),
]


@pytest.mark.parametrize("region, expected", REGION_TO_NORM)
def test_region_to_box_norm(region, expected):
    assert region_to_box_norm(region) == expected


REGION_TO_PX = [
    # 1001x333: block 1 spans 125.125..250.25 x 41.625..83.25 (see the boundary table above)
    pytest.param((1, 1, 1, 1), 1001, 333, (125.125, 41.625, 250.25, 83.25), id="1001x333-block-1-1"),
    pytest.param((0, 0, 7, 7), 1001, 333, (0.0, 0.0, 1001.0, 333.0), id="1001x333-full"),
    # 640x480: blocks 80 x 60; x 2..5 -> 160..480, y 1..6 -> 60..420
    pytest.param((2, 1, 5, 6), 640, 480, (160.0, 60.0, 480.0, 420.0), id="640x480"),
]


@pytest.mark.parametrize("region, w, h, expected", REGION_TO_PX)
def test_region_to_box_px(region, w, h, expected):
    assert region_to_box_px(region, w, h) == expected


# ---------------------------------------------------------------------------------------------
# Region.check and invalid regions
# ---------------------------------------------------------------------------------------------

BAD_REGIONS = [
    pytest.param((0, 0, 8, 7), "x_max=8 is outside 0..7", id="x_max-8"),
    pytest.param((-1, 0, 3, 3), "x_min=-1 is outside 0..7", id="x_min-negative"),
    pytest.param((0, 0, 7, 9), "y_max=9 is outside 0..7", id="y_max-9"),
    pytest.param((5, 0, 2, 7), "x_min=5 > x_max=2", id="x-swapped"),
    pytest.param((0, 6, 7, 1), "y_min=6 > y_max=1", id="y-swapped"),
    pytest.param((0, 0, 7.0, 7), "x_max=7.0 is not an integer", id="float-value"),
    pytest.param((True, 0, 7, 7), "x_min=True is not an integer", id="bool-value"),
]


@pytest.mark.parametrize("region, fragment", BAD_REGIONS)
def test_region_check_rejects(region, fragment):
    with pytest.raises(ValueError) as info:
        Region(*region).check()
    assert fragment in str(info.value)
    # every consumer that validates says the same thing
    with pytest.raises(ValueError) as info:
        region_to_box_norm(region)
    assert fragment in str(info.value)


def test_region_check_other_grid():
    # On a 4x4 grid 3 is the last block and 4 is out of range.
    assert Region(0, 0, 3, 3).check(4) == (0, 0, 3, 3)
    with pytest.raises(ValueError, match="outside 0..3"):
        Region(0, 0, 4, 3).check(4)


def test_full_region_and_grid_constant():
    assert GRID_SIZE == 8
    assert full_region() == Region(0, 0, 7, 7)
    assert full_region(4) == Region(0, 0, 3, 3)
    assert Region(2, 1, 5, 6).width == 4 and Region(2, 1, 5, 6).height == 6


# ---------------------------------------------------------------------------------------------
# area, area recall (paper Table 9: |GT ∩ Pred| / |GT|) and IoU
# ---------------------------------------------------------------------------------------------

AREA = [
    pytest.param((0, 0, 7, 7), 64, id="full"),
    pytest.param((1, 2, 2, 3), 4, id="2x2"),
    pytest.param((3, 3, 3, 3), 1, id="single-block"),
    pytest.param((0, 0, 7, 0), 8, id="top-row"),
    pytest.param((2, 1, 5, 6), 24, id="4-wide-6-high"),
]


@pytest.mark.parametrize("region, area", AREA)
def test_region_area(region, area):
    assert region_area(region) == area


@pytest.mark.parametrize("region", [(5, 0, 2, 7), (3, 0, 2, 7)], ids=["negative-area", "zero-width"])
def test_region_area_rejects_swapped(region):
    with pytest.raises(ValueError, match="x_min="):
        region_area(region)


@pytest.mark.parametrize("gt", [(3, 0, 2, 7), (5, 0, 2, 7)], ids=["zero-width-gt", "swapped-gt"])
def test_metrics_reject_invalid_regions(gt):
    with pytest.raises(ValueError, match="x_min="):
        area_recall(gt, (0, 0, 7, 7))
    with pytest.raises(ValueError, match="x_min="):
        region_iou(gt, (0, 0, 7, 7))


METRICS = [
    # gt 4x4 at the top-left (16 blocks); pred 6x6 bottom-right (36 blocks);
    # overlap x 2..3, y 2..3 = 4 blocks. recall = 4/16; iou = 4/(16+36-4) = 4/48.
    pytest.param((0, 0, 3, 3), (2, 2, 7, 7), 0.25, 4 / 48, id="partial-overlap"),
    # pred covers the whole image: recall 1, iou = 4/64
    pytest.param((2, 2, 3, 3), (0, 0, 7, 7), 1.0, 0.0625, id="pred-full"),
    # gt is the whole image, pred a 2x2: recall 4/64 (recall is not symmetric)
    pytest.param((0, 0, 7, 7), (2, 2, 3, 3), 0.0625, 0.0625, id="gt-full"),
    # adjacent blocks share no area (inclusive block coordinates)
    pytest.param((0, 0, 1, 1), (2, 0, 3, 1), 0.0, 0.0, id="adjacent-no-overlap"),
    pytest.param((0, 0, 1, 1), (6, 6, 7, 7), 0.0, 0.0, id="disjoint"),
    pytest.param((1, 2, 5, 6), (1, 2, 5, 6), 1.0, 1.0, id="identical"),
    # gt 1 row x 8 blocks; pred the left half (4 cols x 8 rows): overlap 4; recall 4/8;
    # iou = 4/(8+32-4) = 4/36
    pytest.param((0, 3, 7, 3), (0, 0, 3, 7), 0.5, 4 / 36, id="row-vs-half"),
]


@pytest.mark.parametrize("gt, pred, recall, iou", METRICS)
def test_area_recall_and_iou(gt, pred, recall, iou):
    assert area_recall(gt, pred) == pytest.approx(recall)
    assert region_iou(gt, pred) == pytest.approx(iou)
    assert region_iou(pred, gt) == pytest.approx(iou)  # IoU is symmetric
