"""Several block regions per question (issue 21): boxes -> up to N disjoint block rectangles.

The paper's localizer names ONE rectangle; a question about two far-apart objects then keeps their
union, most of the image. Here every source box is mapped to its 8x8 block region
(:func:`crop.geometry.regions.box_px_to_region`, the one box -> blocks rule), and the regions are
merged only where keeping them apart buys nothing:

1. **Overlap or touch -> merge.** Two block rectangles *touch* when they share part of an edge:
   their block ranges overlap on one axis and are adjacent or overlapping on the other
   (:func:`touch_or_overlap`). Rectangles that only meet at a corner are kept apart (their
   bounding rectangle would add two whole quadrants). Two such rectangles are replaced by their
   bounding rectangle; since that can reach a third one, merging repeats until no pair overlaps or
   touches (a fixed point; the result does not depend on the order boxes were given).
2. **More than N -> merge the cheapest pair.** While more than ``max_regions`` rectangles remain,
   the pair whose bounding rectangle adds the fewest blocks beyond the two rectangles
   (``area(bbox(a, b)) - area(a) - area(b)``; they are disjoint) is merged, ties broken by the
   pair's position in reading order (first ``i``, then ``j``), then step 1 runs again.
   ``max_regions=1`` therefore gives the bounding rectangle of all boxes, which equals the region
   of :func:`crop.geometry.boxes.union_box` (the union policy; a property test holds them equal).
3. **Reading order.** The result is sorted by ``(y_min, x_min, y_max, x_max)``: top to bottom,
   then left to right.

Result guarantees (property-tested in ``tests/geometry/test_multi_region.py``): rectangles are
pairwise disjoint and do not touch, every box's block region lies inside one of them, at most
``max_regions`` are returned, and the output is deterministic (independent of the input order).

numpy / stdlib only, like the rest of :mod:`crop.geometry`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from crop.geometry.regions import Region, box_px_to_region, region_area


def reading_key(region: Sequence[int]) -> tuple[int, int, int, int]:
    """Sort key of reading order: top row first, then left column, then the smaller far corner."""
    x0, y0, x1, y1 = region
    return (y0, x0, y1, x1)


def bounding_region(regions: Iterable[Sequence[int]]) -> Region:
    """Smallest block rectangle containing every region (the union policy's region)."""
    rs = [Region(*r) for r in regions]
    if not rs:
        raise ValueError("no regions to bound")
    return Region(min(r.x_min for r in rs), min(r.y_min for r in rs),
                  max(r.x_max for r in rs), max(r.y_max for r in rs))


def _ranges_meet(a0: int, a1: int, b0: int, b1: int, gap: int) -> bool:
    """Inclusive integer ranges [a0, a1] and [b0, b1] are at most ``gap`` apart (gap 0 = overlap)."""
    return a0 <= b1 + gap and b0 <= a1 + gap


def touch_or_overlap(a: Sequence[int], b: Sequence[int]) -> bool:
    """Two block rectangles share at least one block, or share part of an edge.

    Sharing an edge: the ranges overlap on one axis and are adjacent (or overlap) on the other.
    Corner-only contact (diagonal neighbours) does not count.
    """
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    x_overlap, y_overlap = _ranges_meet(ax0, ax1, bx0, bx1, 0), _ranges_meet(ay0, ay1, by0, by1, 0)
    x_adjacent, y_adjacent = _ranges_meet(ax0, ax1, bx0, bx1, 1), _ranges_meet(ay0, ay1, by0, by1, 1)
    return (x_overlap and y_adjacent) or (y_overlap and x_adjacent)


def _merge_touching(regions: list[Region]) -> list[Region]:
    """Replace touching / overlapping pairs by their bounding rectangle until none is left."""
    out = list(regions)
    changed = True
    while changed:
        changed = False
        out.sort(key=reading_key)
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                if touch_or_overlap(out[i], out[j]):
                    merged = bounding_region((out[i], out[j]))
                    out = [r for k, r in enumerate(out) if k not in (i, j)] + [merged]
                    changed = True
                    break
            if changed:
                break
    return sorted(set(out), key=reading_key)


def merge_cost(a: Sequence[int], b: Sequence[int]) -> int:
    """Blocks the bounding rectangle of two disjoint rectangles adds beyond them."""
    return region_area(bounding_region((a, b))) - region_area(a) - region_area(b)


def merge_regions(regions: Iterable[Sequence[int]], max_regions: int, grid: int = 8) -> list[Region]:
    """Block regions -> at most ``max_regions`` disjoint, non-touching rectangles in reading order.

    Covers every input region (each lies inside one output rectangle). See the module docstring
    for the merge rules.
    """
    if isinstance(max_regions, bool) or not isinstance(max_regions, int) or max_regions < 1:
        raise ValueError(f"max_regions must be an integer >= 1, got {max_regions!r}")
    out = _merge_touching([Region(*r).check(grid) for r in regions])
    if not out:
        raise ValueError("no regions to merge")
    while len(out) > max_regions:
        pairs = ((merge_cost(out[i], out[j]), i, j) for i in range(len(out)) for j in range(i + 1, len(out)))
        _, i, j = min(pairs)
        merged = bounding_region((out[i], out[j]))
        out = _merge_touching([r for k, r in enumerate(out) if k not in (i, j)] + [merged])
    return out


def boxes_px_to_regions(boxes_xyxy_px: Sequence[Sequence[float]], width: int, height: int,
                        max_regions: int, grid: int = 8) -> list[Region]:
    """Clipped pixel boxes of one question -> up to ``max_regions`` block regions (reading order).

    THE function of the ``multi_box: regions`` recipe policy: boxes must already be validated and
    clipped (:func:`crop.geometry.boxes.validate_box`), as the union policy requires too.
    ``bounding_region(result)`` is the record's ``region_blocks`` (the union, for old readers).
    """
    if not boxes_xyxy_px:
        raise ValueError("no boxes")
    return merge_regions([box_px_to_region(b, width, height, grid) for b in boxes_xyxy_px], max_regions, grid)


def regions_blocks_area(regions: Iterable[Sequence[int]]) -> int:
    """Blocks covered by several rectangles, each block counted once."""
    cells = {(x, y) for r in regions for x in range(r[0], r[2] + 1) for y in range(r[1], r[3] + 1)}
    return len(cells)


def multi_area_recall(gt: Sequence[int], preds: Iterable[Sequence[int]]) -> float:
    """|GT ∩ (union of the predicted rectangles)| / |GT| in blocks (App. D.3 recall, several preds)."""
    g = Region(*gt).check(None)
    cover = {(x, y) for r in preds for x in range(r[0], r[2] + 1) for y in range(r[1], r[3] + 1)}
    inside = sum((x, y) in cover for x in range(g.x_min, g.x_max + 1) for y in range(g.y_min, g.y_max + 1))
    return inside / region_area(g)


__all__ = ["bounding_region", "boxes_px_to_regions", "merge_cost", "merge_regions", "multi_area_recall",
           "reading_key", "regions_blocks_area", "touch_or_overlap"]
