"""8x8 block regions (paper Sec. 3.2, Fig. 3).

A region is an inclusive rectangle of blocks ``[x_min, y_min, x_max, y_max]`` on a G x G grid
laid over the image. Block ``i`` along x covers pixels ``[i*W/G, (i+1)*W/G)``.

A block belongs to a box's region when the box overlaps it with *positive area*, so a box edge
that lies exactly on a block boundary does not spill into the next block. All arithmetic is done
on exact rationals (``fractions.Fraction`` of the float inputs), so sizes that are not divisible
by G never produce off-by-one regions from float drift.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import NamedTuple, Sequence


class Region(NamedTuple):
    """Inclusive block coordinates on a ``grid`` x ``grid`` grid."""

    x_min: int
    y_min: int
    x_max: int
    y_max: int

    def check(self, grid: int | None = 8) -> "Region":
        """Return self (plain ints) if valid on a ``grid``-sized grid, else raise ``ValueError``.

        ``grid=None`` checks only non-negativity and ordering (for area arithmetic).
        """
        for name, v in zip(self._fields, self):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"region {name}={v!r} is not an integer")
            if v < 0 or (grid is not None and v >= grid):
                raise ValueError(f"region {name}={v} is outside 0..{'' if grid is None else grid - 1}")
        if self.x_min > self.x_max:
            raise ValueError(f"region x_min={self.x_min} > x_max={self.x_max}")
        if self.y_min > self.y_max:
            raise ValueError(f"region y_min={self.y_min} > y_max={self.y_max}")
        return Region(*(int(v) for v in self))

    @property
    def width(self) -> int:
        return self.x_max - self.x_min + 1

    @property
    def height(self) -> int:
        return self.y_max - self.y_min + 1


def full_region(grid: int = 8) -> Region:
    return Region(0, 0, grid - 1, grid - 1)


def _span_to_blocks(lo: Fraction, hi: Fraction, extent: Fraction, grid: int) -> tuple[int, int]:
    """Blocks ``[first, last]`` that the open interval (lo, hi) overlaps with positive length."""
    if hi <= lo:
        raise ValueError(f"span [{float(lo)}, {float(hi)}] has no positive length")
    # first block i with lo < (i+1)*extent/G  ->  i = floor(lo*G/extent)
    first = math.floor(lo * grid / extent)
    # last block i with hi > i*extent/G       ->  i = ceil(hi*G/extent) - 1
    last = math.ceil(hi * grid / extent) - 1
    return max(0, min(grid - 1, first)), max(0, min(grid - 1, last))


def box_px_to_region(
    box_xyxy_px: Sequence[float], width: int, height: int, grid: int = 8
) -> Region:
    """Pixel box (already clipped, positive area) -> block region on a ``grid`` x ``grid`` grid."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    x1, y1, x2, y2 = (Fraction(v) for v in box_xyxy_px)
    x_min, x_max = _span_to_blocks(x1, x2, Fraction(width), grid)
    y_min, y_max = _span_to_blocks(y1, y2, Fraction(height), grid)
    return Region(x_min, y_min, x_max, y_max)


def box_norm_to_region(box_xyxy_norm: Sequence[float], grid: int = 8) -> Region:
    """Normalized box (values in [0, 1]) -> block region."""
    x1, y1, x2, y2 = (Fraction(v) for v in box_xyxy_norm)
    x_min, x_max = _span_to_blocks(x1, x2, Fraction(1), grid)
    y_min, y_max = _span_to_blocks(y1, y2, Fraction(1), grid)
    return Region(x_min, y_min, x_max, y_max)


def region_to_box_norm(region: Sequence[int], grid: int = 8) -> tuple[float, float, float, float]:
    """Block region -> the normalized rectangle it covers (right/bottom edges exclusive)."""
    r = Region(*region).check(grid)
    return (r.x_min / grid, r.y_min / grid, (r.x_max + 1) / grid, (r.y_max + 1) / grid)


def region_to_box_px(
    region: Sequence[int], width: int, height: int, grid: int = 8
) -> tuple[float, float, float, float]:
    """Block region -> the pixel rectangle it covers on a ``width`` x ``height`` image."""
    x1, y1, x2, y2 = region_to_box_norm(region, grid)
    return (x1 * width, y1 * height, x2 * width, y2 * height)


def region_area(region: Sequence[int]) -> int:
    """Area in blocks."""
    r = Region(*region).check(None)
    return r.width * r.height


def _intersection_area(a: Region, b: Region) -> int:
    w = min(a.x_max, b.x_max) - max(a.x_min, b.x_min) + 1
    h = min(a.y_max, b.y_max) - max(a.y_min, b.y_min) + 1
    return max(0, w) * max(0, h)


def area_recall(gt: Sequence[int], pred: Sequence[int]) -> float:
    """Area-based recall |GT ∩ Pred| / |GT| (paper App. D.3, Table 9)."""
    g, p = Region(*gt).check(None), Region(*pred).check(None)
    return _intersection_area(g, p) / region_area(g)


def region_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two block regions."""
    ra, rb = Region(*a).check(None), Region(*b).check(None)
    inter = _intersection_area(ra, rb)
    return inter / (region_area(ra) + region_area(rb) - inter)
