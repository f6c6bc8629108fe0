"""Pixel boxes: clip, union, rejection reasons and Visual-CoT's padded-square normalization.

Every expected value below is worked out by hand in the row's comment; none is computed by the
code under test.
"""

from __future__ import annotations

import json
import math

import pytest

import schemas
from crop.geometry import boxes as B
from crop.geometry.boxes import (
    BoxRejected,
    clip_box,
    pad_square_norm_to_px,
    px_to_pad_square_norm,
    union_box,
    validate_box,
)

ALL_REASONS = {
    B.REASON_MALFORMED_BOX,
    B.REASON_NON_FINITE,
    B.REASON_EMPTY_BOXES,
    B.REASON_OUTSIDE,
    B.REASON_DEGENERATE,
}


def test_reasons_are_distinct_and_in_the_rejects_contract():
    # Five constants, five distinct strings: a pipeline can count rejects per reason.
    assert len(ALL_REASONS) == 5
    doc = json.loads(schemas.path("rejects").read_text(encoding="utf-8"))
    enum = set(doc["properties"]["reason"]["enum"])
    missing = ALL_REASONS - enum
    assert not missing, f"reasons not allowed by rejects.schema.json: {missing}"


# ---------------------------------------------------------------------------------------------
# clip_box: accepted boxes
# ---------------------------------------------------------------------------------------------

CLIP_OK = [
    # inside: unchanged, returned as floats
    pytest.param((10, 20, 30, 40), 100, 100, (10.0, 20.0, 30.0, 40.0), id="inside-unchanged"),
    # exactly the image: edges equal to W and H are allowed (x2/y2 are exclusive edges)
    pytest.param((0, 0, 100, 50), 100, 50, (0.0, 0.0, 100.0, 50.0), id="whole-image"),
    # top-left overshoot: x1 -10 -> 0, y1 -5 -> 0; y2 60 > H=50 -> 50
    pytest.param((-10, -5, 50, 60), 100, 50, (0.0, 0.0, 50.0, 50.0), id="overshoot-three-sides"),
    # DUDE-like: W=1700, x2=2252 -> 1700; the rest inside a 1700x2200 page
    pytest.param((1500, 100, 2252, 300), 1700, 2200, (1500.0, 100.0, 1700.0, 300.0), id="dude-x2-past-width"),
    # float box sticking out by a fraction of a pixel on the right and bottom
    pytest.param((0.5, 0.25, 640.4, 480.9), 640, 480, (0.5, 0.25, 640.0, 480.0), id="float-subpixel-overshoot"),
    # 1-pixel box in the last pixel of the image
    pytest.param((99, 49, 100, 50), 100, 50, (99.0, 49.0, 100.0, 50.0), id="last-pixel"),
]


@pytest.mark.parametrize("box, w, h, expected", CLIP_OK)
def test_clip_box_ok(box, w, h, expected):
    got = clip_box(box, w, h)
    assert got == expected
    assert all(type(v) is float for v in got)


# ---------------------------------------------------------------------------------------------
# clip_box / union_box: rejected boxes, each with its own reason and a message saying why
# ---------------------------------------------------------------------------------------------

CLIP_REJECTED = [
    # -- malformed: wrong shape or type
    pytest.param((1, 2, 3), 100, 100, B.REASON_MALFORMED_BOX, "expected 4 numbers", id="three-values"),
    pytest.param((1, 2, 3, 4, 5), 100, 100, B.REASON_MALFORMED_BOX, "expected 4 numbers", id="five-values"),
    pytest.param("1234", 100, 100, B.REASON_MALFORMED_BOX, "expected 4 numbers", id="string-not-box"),
    pytest.param(None, 100, 100, B.REASON_MALFORMED_BOX, "expected 4 numbers", id="none"),
    pytest.param((1, 2, 3, "4"), 100, 100, B.REASON_MALFORMED_BOX, "'4' is not a number", id="str-value"),
    pytest.param((True, 0, 1, 1), 100, 100, B.REASON_MALFORMED_BOX, "True is not a number", id="bool-value"),
    pytest.param((0, 0, None, 1), 100, 100, B.REASON_MALFORMED_BOX, "None is not a number", id="none-value"),
    # -- swapped corners
    pytest.param((50, 0, 20, 10), 100, 100, B.REASON_MALFORMED_BOX, "x2 < x1", id="x2-lt-x1"),
    pytest.param((0, 50, 10, 20), 100, 100, B.REASON_MALFORMED_BOX, "y2 < y1", id="y2-lt-y1"),
    # -- non-finite
    pytest.param((float("nan"), 0, 1, 1), 100, 100, B.REASON_NON_FINITE, "nan is not finite", id="nan"),
    pytest.param((0, 0, float("inf"), 1), 100, 100, B.REASON_NON_FINITE, "inf is not finite", id="inf"),
    pytest.param((float("-inf"), 0, 1, 1), 100, 100, B.REASON_NON_FINITE, "-inf is not finite", id="minus-inf"),
    # -- entirely outside: to the right (x1 = 200 >= W = 100)
    pytest.param((200, 10, 300, 20), 100, 100, B.REASON_OUTSIDE, "outside the 100x100 image", id="right-of-image"),
    # below (y1 = 60 >= H = 50)
    pytest.param((0, 60, 10, 70), 100, 50, B.REASON_OUTSIDE, "outside the 100x50 image", id="below-image"),
    # left/above: x2 = -1 <= 0, y2 = -1 <= 0
    pytest.param((-20, -20, -1, -1), 100, 50, B.REASON_OUTSIDE, "outside", id="above-left"),
    # touching the left edge from outside: x2 = 0 -> no positive-area overlap
    pytest.param((-50, 10, 0, 20), 100, 100, B.REASON_OUTSIDE, "outside", id="touches-left-edge-from-outside"),
    # touching the right edge from outside: x1 = W. Clipping would give zero width; the code
    # classifies a positive-size box that only touches the image as outside (documented decision).
    pytest.param((1700, 10, 2252, 20), 1700, 2200, B.REASON_OUTSIDE, "outside the 1700x2200", id="starts-at-width"),
    # -- degenerate: zero width or height
    pytest.param((10, 10, 10, 20), 100, 100, B.REASON_DEGENERATE, "zero area", id="zero-width-inside"),
    pytest.param((10, 10, 20, 10), 100, 100, B.REASON_DEGENERATE, "zero area", id="zero-height-inside"),
    # zero-width box lying on the right edge x = W: degenerate, not "outside" (code comment)
    pytest.param((100, 10, 100, 20), 100, 100, B.REASON_DEGENERATE, "zero area", id="zero-width-on-right-edge"),
    # zero-size point at the origin
    pytest.param((0, 0, 0, 0), 100, 100, B.REASON_DEGENERATE, "zero area", id="zero-point-origin"),
    # zero-width box far outside stays "outside"
    pytest.param((500, 10, 500, 20), 100, 100, B.REASON_OUTSIDE, "outside", id="zero-width-far-outside"),
]


@pytest.mark.parametrize("box, w, h, reason, fragment", CLIP_REJECTED)
def test_clip_box_rejected(box, w, h, reason, fragment):
    with pytest.raises(BoxRejected) as info:
        clip_box(box, w, h)
    assert info.value.reason == reason
    assert str(info.value).startswith(reason + ": ")
    assert fragment in str(info.value)
    # BoxRejected is a ValueError so that callers that only know ValueError still catch it.
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("w, h", [(0, 10), (10, 0), (-5, 10)], ids=["w0", "h0", "w-negative"])
def test_clip_box_rejects_bad_image_size(w, h):
    with pytest.raises(ValueError, match="image size must be positive"):
        clip_box((0, 0, 1, 1), w, h)


VALIDATE = [
    # inside: unchanged, not clipped (ints compare equal to their floats)
    pytest.param((0, 0, 50, 50), 100, 100, (0.0, 0.0, 50.0, 50.0), False, id="inside"),
    # x1 = -10 -> 0: clipped
    pytest.param((-10, 0, 50, 50), 100, 100, (0.0, 0.0, 50.0, 50.0), True, id="clipped-left"),
    # y2 = 101 -> 100: clipped
    pytest.param((0, 0, 50, 101), 100, 100, (0.0, 0.0, 50.0, 100.0), True, id="clipped-bottom"),
]


@pytest.mark.parametrize("box, w, h, expected, was_clipped", VALIDATE)
def test_validate_box(box, w, h, expected, was_clipped):
    assert validate_box(box, w, h) == (expected, was_clipped)


UNION = [
    pytest.param([(1, 2, 3, 4)], (1.0, 2.0, 3.0, 4.0), id="single"),
    # min x1 = 0, min y1 = 0, max x2 = 20, max y2 = 10
    pytest.param([(0, 0, 10, 10), (5, 5, 20, 8)], (0.0, 0.0, 20.0, 10.0), id="two-overlapping"),
    # disjoint boxes: the union spans the gap
    pytest.param([(0, 0, 1, 1), (98.5, 40.25, 100, 50)], (0.0, 0.0, 100.0, 50.0), id="disjoint-floats"),
    # duplicates (Visual-CoT has them) change nothing
    pytest.param([(3, 3, 7, 7)] * 3, (3.0, 3.0, 7.0, 7.0), id="duplicates"),
    # a generator is accepted (Iterable)
    pytest.param((b for b in [(2, 3, 4, 5), (1, 4, 3, 9)]), (1.0, 3.0, 4.0, 9.0), id="generator"),
]


@pytest.mark.parametrize("boxes, expected", UNION)
def test_union_box(boxes, expected):
    assert union_box(boxes) == expected


UNION_REJECTED = [
    pytest.param([], B.REASON_EMPTY_BOXES, "no boxes", id="empty"),
    pytest.param([(0, 0, 1, 1), (1, 2, 3)], B.REASON_MALFORMED_BOX, "expected 4 numbers", id="one-short"),
    pytest.param([(0, 0, 1, 1), (5, 0, 2, 7)], B.REASON_MALFORMED_BOX, "x2 < x1", id="one-swapped"),
    pytest.param([(0, 0, 1, 1), (0, 0, float("nan"), 1)], B.REASON_NON_FINITE, "not finite", id="one-nan"),
]


@pytest.mark.parametrize("boxes, reason, fragment", UNION_REJECTED)
def test_union_box_rejected(boxes, reason, fragment):
    with pytest.raises(BoxRejected) as info:
        union_box(boxes)
    assert info.value.reason == reason
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------------------------
# Visual-CoT padded-square normalization (formats.md section 2):
#   s = max(W, H); if W > H: y += (W - H) // 2 else x += (H - W) // 2; divide all by s.
# ---------------------------------------------------------------------------------------------

PAD_SQUARE = [
    # W > H: 640x480, s = 640, off = (640-480)//2 = 80 added to y.
    # px (64, 0, 320, 480) -> (64, 80, 320, 560) / 640 = (0.1, 0.125, 0.5, 0.875)
    pytest.param((64, 0, 320, 480), 640, 480, (0.1, 0.125, 0.5, 0.875), id="wide-640x480"),
    # H > W: 300x500, s = 500, off = (500-300)//2 = 100 added to x.
    # px (0, 50, 300, 500) -> (100, 50, 400, 500) / 500 = (0.2, 0.1, 0.8, 1.0)
    pytest.param((0, 50, 300, 500), 300, 500, (0.2, 0.1, 0.8, 1.0), id="tall-300x500"),
    # W > H, odd difference: 8x3, s = 8, off = 5//2 = 2 (floor of 2.5) added to y.
    # px (0, 0, 8, 3) -> (0, 2, 8, 5) / 8 = (0, 0.25, 1, 0.625)
    pytest.param((0, 0, 8, 3), 8, 3, (0.0, 0.25, 1.0, 0.625), id="wide-odd-8x3"),
    # H > W, odd difference: 3x8, s = 8, off = 2 added to x.
    # px (1, 4, 2, 8) -> (3, 4, 4, 8) / 8 = (0.375, 0.5, 0.5, 1)
    pytest.param((1, 4, 2, 8), 3, 8, (0.375, 0.5, 0.5, 1.0), id="tall-odd-3x8"),
    # W > H, odd difference, larger: 1001x500, s = 1001, off = 501//2 = 250 added to y.
    # px (0, 0, 1001, 500) -> (0, 250, 1001, 750) / 1001
    pytest.param((0, 0, 1001, 500), 1001, 500, (0.0, 250 / 1001, 1.0, 750 / 1001), id="wide-odd-1001x500"),
    # square: no offset, s = 400 -> px / 400
    pytest.param((100, 200, 300, 400), 400, 400, (0.25, 0.5, 0.75, 1.0), id="square-400"),
]


@pytest.mark.parametrize("box_px, w, h, norm_sq", PAD_SQUARE)
def test_px_to_pad_square_norm(box_px, w, h, norm_sq):
    assert px_to_pad_square_norm(box_px, w, h) == pytest.approx(norm_sq, abs=1e-12)


@pytest.mark.parametrize("box_px, w, h, norm_sq", PAD_SQUARE)
def test_pad_square_norm_to_px(box_px, w, h, norm_sq):
    # The inverse of the same hand-worked rows: the offset is subtracted from the same axis.
    assert pad_square_norm_to_px(norm_sq, w, h) == pytest.approx(box_px, abs=1e-9)


def test_pad_square_three_decimal_box_lands_near_the_pixel_box():
    # Visual-CoT writes 3 decimals. 640x480: (0.293, 0.316, 0.410, 0.395) * 640
    # = (187.52, 202.24, 262.4, 252.8); minus off 80 on y -> (187.52, 122.24, 262.4, 172.8).
    got = pad_square_norm_to_px((0.293, 0.316, 0.410, 0.395), 640, 480)
    assert got == pytest.approx((187.52, 122.24, 262.4, 172.8), abs=1e-9)


def test_pad_square_rejects_malformed():
    with pytest.raises(BoxRejected) as info:
        pad_square_norm_to_px((0.5, 0.1, 0.2, 0.3), 640, 480)
    assert info.value.reason == B.REASON_MALFORMED_BOX
    with pytest.raises(BoxRejected) as info:
        px_to_pad_square_norm((0, 0, math.nan, 1), 640, 480)
    assert info.value.reason == B.REASON_NON_FINITE
