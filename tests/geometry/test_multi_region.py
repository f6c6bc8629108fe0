"""Several block regions per question: merge rules (hand cases + hypothesis properties), the
multi-region template and its parsers."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crop.formatting import (
    RegionParseError,
    format_region,
    format_regions,
    parse_regions_lenient,
    parse_regions_strict,
)
from crop.geometry import Region, box_px_to_region, union_box
from crop.geometry.multi_region import (
    bounding_region,
    boxes_px_to_regions,
    merge_cost,
    merge_regions,
    multi_area_recall,
    reading_key,
    regions_blocks_area,
    touch_or_overlap,
)

# ------------------------------------------------------------------------------- hand cases


def test_far_apart_boxes_stay_apart_in_reading_order():
    # 80x80 image: 10 px per block. Box B (top-right) comes first in the input, A (top-left) second.
    regions = boxes_px_to_regions([[60, 0, 80, 15], [0, 0, 20, 15]], 80, 80, max_regions=4)
    assert regions == [Region(0, 0, 1, 1), Region(6, 0, 7, 1)]


def test_overlapping_and_edge_touching_boxes_merge():
    # blocks x 0..1 and x 2..3 on the same rows: they share an edge -> one rectangle
    assert merge_regions([Region(0, 0, 1, 1), Region(2, 0, 3, 1)], 4) == [Region(0, 0, 3, 1)]
    # overlap
    assert merge_regions([Region(0, 0, 3, 3), Region(2, 2, 5, 5)], 4) == [Region(0, 0, 5, 5)]
    # a side shared only partly still counts (rows 1..2 against rows 2..5)
    assert merge_regions([Region(0, 1, 1, 2), Region(2, 2, 3, 5)], 4) == [Region(0, 1, 3, 5)]


def test_corner_only_contact_is_kept_apart():
    a, b = Region(0, 0, 1, 1), Region(2, 2, 3, 3)
    assert not touch_or_overlap(a, b)
    assert merge_regions([b, a], 4) == [a, b]


def test_merging_repeats_until_stable():
    # a and b share an edge; c meets each of them only at a corner, but shares an edge with their
    # bounding rectangle (0,0)-(1,2): the second pass merges it
    a, b, c = Region(0, 0, 0, 1), Region(1, 1, 1, 2), Region(2, 0, 2, 0)
    assert touch_or_overlap(a, b) and not touch_or_overlap(a, c) and not touch_or_overlap(b, c)
    assert merge_regions([c, a, b], 4) == [Region(0, 0, 2, 2)]
    # without the bridge the far one stays apart
    assert merge_regions([a, b, Region(5, 1, 5, 4)], 4) == [Region(0, 0, 1, 2), Region(5, 1, 5, 4)]


def test_beyond_max_regions_the_cheapest_pair_merges():
    a, b, c = Region(0, 0, 0, 0), Region(2, 0, 2, 0), Region(7, 7, 7, 7)
    assert merge_cost(a, b) == 1 and merge_cost(a, c) == 64 - 2 and merge_cost(b, c) == 48 - 2
    assert merge_regions([c, b, a], 2) == [Region(0, 0, 2, 0), c]
    assert merge_regions([c, b, a], 1) == [Region(0, 0, 7, 7)]
    # equal costs: the pair first in reading order merges (a with b, not b with c)
    a, b, c = Region(0, 0, 0, 0), Region(2, 0, 2, 0), Region(4, 0, 4, 0)
    assert merge_regions([a, b, c], 2) == [Region(0, 0, 2, 0), c]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="max_regions"):
        merge_regions([Region(0, 0, 1, 1)], 0)
    with pytest.raises(ValueError, match="outside"):
        merge_regions([Region(0, 0, 8, 1)], 2)
    with pytest.raises(ValueError, match="no boxes"):
        boxes_px_to_regions([], 10, 10, 2)


def test_area_helpers():
    assert regions_blocks_area([Region(0, 0, 1, 1), Region(1, 1, 2, 2)]) == 4 + 4 - 1
    assert multi_area_recall(Region(0, 0, 3, 0), [Region(0, 0, 0, 0), Region(3, 0, 5, 0)]) == 0.5
    assert multi_area_recall(Region(0, 0, 3, 0), [Region(0, 0, 7, 7)]) == 1.0


# ------------------------------------------------------------------------------- properties

GRID = 8
_box = st.tuples(st.integers(0, 79), st.integers(0, 59), st.integers(1, 80), st.integers(1, 60)).filter(
    lambda b: b[0] < b[2] and b[1] < b[3])


def _cells(r):
    return {(x, y) for x in range(r[0], r[2] + 1) for y in range(r[1], r[3] + 1)}


@settings(max_examples=300, deadline=None)
@given(boxes=st.lists(_box, min_size=1, max_size=7), n=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_merge_properties(boxes, n, seed):
    w, h = 80, 60
    out = boxes_px_to_regions(boxes, w, h, n, GRID)
    assert 1 <= len(out) <= n
    for i, a in enumerate(out):  # disjoint, not touching
        for b in out[i + 1:]:
            assert not (_cells(a) & _cells(b)), (a, b)
            assert not touch_or_overlap(a, b), (a, b)
    for box in boxes:  # every box's blocks inside one output rectangle
        r = box_px_to_region(box, w, h, GRID)
        assert any(_cells(r) <= _cells(o) for o in out), (box, r, out)
    assert out == sorted(out, key=reading_key)
    shuffled = list(boxes)
    random.Random(seed).shuffle(shuffled)
    assert boxes_px_to_regions(shuffled, w, h, n, GRID) == out  # independent of the input order
    # one region = the union policy's region (the region of the union box)
    assert boxes_px_to_regions(boxes, w, h, 1, GRID) == [box_px_to_region(union_box(boxes), w, h, GRID)]
    assert bounding_region(out) == box_px_to_region(union_box(boxes), w, h, GRID)


_region = st.tuples(st.integers(0, 7), st.integers(0, 7), st.integers(0, 7), st.integers(0, 7)).map(
    lambda t: Region(min(t[0], t[2]), min(t[1], t[3]), max(t[0], t[2]), max(t[1], t[3])))


@settings(max_examples=200, deadline=None)
@given(regions=st.lists(_region, min_size=1, max_size=4))
def test_template_round_trip(regions):
    text = format_regions(regions)
    assert parse_regions_strict(text) == regions
    assert parse_regions_lenient(text) == regions
    assert parse_regions_strict(format_regions(regions, trailing_period=False)) == regions


# ------------------------------------------------------------------------------- template


def test_one_region_formats_as_the_single_template():
    r = Region(2, 1, 5, 4)
    assert format_regions([r]) == format_region(r) == "2 1 5 4."
    assert format_regions([r], trailing_period=False) == format_region(r, trailing_period=False) == "2 1 5 4"
    assert format_regions([Region(0, 0, 1, 1), Region(6, 0, 7, 1)]) == "0 0 1 1; 6 0 7 1."


def test_strict_parser_errors():
    assert parse_regions_strict(" 0 0 1 1;6 0 7 1 ") == [Region(0, 0, 1, 1), Region(6, 0, 7, 1)]
    for bad, msg in [("0 0 1 1, 6 0 7 1.", "groups separated"), ("0 0 1 1; 6 0 7.", "groups separated"),
                     ("0 0 1 1; 6 0 8 1.", "outside"), ("0 0 1 1; 7 0 6 1.", "x_min=7 > x_max=6"),
                     ("0 0 1 1; 6 0 7 1.", "at most 1")]:
        with pytest.raises(RegionParseError, match=msg):
            parse_regions_strict(bad, max_regions=1 if "at most" in msg else None)


def test_lenient_parser_groups_of_four():
    assert parse_regions_lenient("regions: [0, 0, 1, 1] and [7, 0, 6, 1] and 3") == [
        Region(0, 0, 1, 1), Region(6, 0, 7, 1)]
    assert parse_regions_lenient("0 0 1 1 2 2 3 3 4 4 5 5", max_regions=2) == [Region(0, 0, 1, 1), Region(2, 2, 3, 3)]
    assert parse_regions_lenient("0.5 1 2") == []
