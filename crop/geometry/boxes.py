"""Pixel boxes: validation, clipping, union, and Visual-CoT's padded-square normalization.

Every failure carries a machine-readable ``reason`` so that pipelines can turn it into a
rejects record instead of dropping the input (see ``schemas/rejects.schema.json``).
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Sequence

BoxXYXY = tuple[float, float, float, float]

# Reasons are part of the data contract (rejects.schema.json lists them).
REASON_MALFORMED_BOX = "malformed_box"
REASON_NON_FINITE = "non_finite_number"
REASON_EMPTY_BOXES = "empty_bboxs"
REASON_OUTSIDE = "box_outside_image"
REASON_DEGENERATE = "degenerate_box_after_clip"


class BoxRejected(ValueError):
    """A box cannot be used; ``reason`` is one of the ``REASON_*`` constants."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def as_box(box: Sequence[float]) -> BoxXYXY:
    """Check a box is four finite numbers with x1 <= x2, y1 <= y2; raise BoxRejected with the reason."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise BoxRejected(REASON_MALFORMED_BOX, f"expected 4 numbers [x1, y1, x2, y2], got {box!r}")
    out = []
    for v in box:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise BoxRejected(REASON_MALFORMED_BOX, f"box value {v!r} is not a number in {box!r}")
        if not math.isfinite(v):
            raise BoxRejected(REASON_NON_FINITE, f"box value {v!r} is not finite in {box!r}")
        out.append(float(v))
    x1, y1, x2, y2 = out
    if x2 < x1 or y2 < y1:
        raise BoxRejected(REASON_MALFORMED_BOX, f"box {box!r} has x2 < x1 or y2 < y1")
    return x1, y1, x2, y2


def clip_box(box_xyxy_px: Sequence[float], width: int, height: int) -> BoxXYXY:
    """Clip a pixel box to ``[0, width] x [0, height]``.

    Raises ``BoxRejected`` with ``box_outside_image`` when nothing of the box lies inside the
    image (no positive-area overlap and not even touching from inside), and with
    ``degenerate_box_after_clip`` when the clipped box has zero width or height.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    x1, y1, x2, y2 = as_box(box_xyxy_px)
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        if x1 == x2 or y1 == y2:
            # A zero-size box is degenerate wherever it lies; say so rather than "outside".
            if 0 <= x1 <= width and 0 <= y1 <= height:
                raise BoxRejected(REASON_DEGENERATE, f"box {list(box_xyxy_px)} has zero area")
        raise BoxRejected(
            REASON_OUTSIDE, f"box {list(box_xyxy_px)} lies outside the {width}x{height} image"
        )
    cx1, cy1 = max(0.0, x1), max(0.0, y1)
    cx2, cy2 = min(float(width), x2), min(float(height), y2)
    if cx2 <= cx1 or cy2 <= cy1:
        raise BoxRejected(
            REASON_DEGENERATE,
            f"box {list(box_xyxy_px)} clipped to {width}x{height} is {[cx1, cy1, cx2, cy2]}, zero area",
        )
    return cx1, cy1, cx2, cy2


def union_box(boxes: Iterable[Sequence[float]]) -> BoxXYXY:
    """Smallest box containing all boxes (Visual-CoT's own multi-box rule)."""
    boxes = [as_box(b) for b in boxes]
    if not boxes:
        raise BoxRejected(REASON_EMPTY_BOXES, "no boxes to merge")
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def validate_box(box_xyxy_px: Sequence[float], width: int, height: int) -> tuple[BoxXYXY, bool]:
    """Validate and clip one box; returns ``(clipped_box, was_clipped)``."""
    original = as_box(box_xyxy_px)
    clipped = clip_box(original, width, height)
    return clipped, clipped != original


def px_to_pad_square_norm(box_xyxy_px: Sequence[float], width: int, height: int) -> BoxXYXY:
    """Pixel box -> coordinates normalized to the image padded (centred) to a square.

    This is how Visual-CoT's LLaVA-format files write boxes (formats.md section 2): with
    ``s = max(W, H)`` the short side is shifted by ``(long - short) // 2`` and all four values are
    divided by ``s``.
    """
    x1, y1, x2, y2 = as_box(box_xyxy_px)
    s = max(width, height)
    if width > height:
        off = (width - height) // 2
        y1, y2 = y1 + off, y2 + off
    else:
        off = (height - width) // 2
        x1, x2 = x1 + off, x2 + off
    return x1 / s, y1 / s, x2 / s, y2 / s


def pad_square_norm_to_px(box_xyxy_norm_sq: Sequence[float], width: int, height: int) -> BoxXYXY:
    """Inverse of :func:`px_to_pad_square_norm`."""
    x1, y1, x2, y2 = as_box(box_xyxy_norm_sq)
    s = max(width, height)
    x1, y1, x2, y2 = x1 * s, y1 * s, x2 * s, y2 * s
    if width > height:
        off = (width - height) // 2
        y1, y2 = y1 - off, y2 - off
    else:
        off = (height - width) // 2
        x1, x2 = x1 - off, x2 - off
    return x1, y1, x2, y2
