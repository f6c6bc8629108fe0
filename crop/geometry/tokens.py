"""Regions on token grids: which visual tokens of an h x w grid lie in a block region.

Used by ILP, PLC and the "prune" baseline. A token cell covers ``[c/w, (c+1)/w)`` of the image
(normalized); it belongs to a region when it overlaps the region's normalized rectangle with
positive area. On LLaVA-1.5's 24x24 grid each of the 8x8 blocks is exactly 3x3 tokens.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import numpy as np


def _cells_overlapping(lo: Fraction, hi: Fraction, n: int) -> tuple[int, int]:
    """Cells ``[first, last]`` of ``n`` equal cells on [0, 1) overlapping (lo, hi); may be empty."""
    import math

    lo, hi = max(lo, Fraction(0)), min(hi, Fraction(1))
    if hi <= lo:
        return 0, -1
    return math.floor(lo * n), math.ceil(hi * n) - 1


def box_norm_token_mask(box_xyxy_norm: Sequence[float], grid_hw: tuple[int, int]) -> np.ndarray:
    """Boolean mask ``(rows, cols)`` of the token cells a normalized box overlaps.

    Parts of the box outside [0, 1] are ignored (a region may fall partly outside a center crop).
    """
    rows, cols = grid_hw
    x1, y1, x2, y2 = (Fraction(v) for v in box_xyxy_norm)
    c0, c1 = _cells_overlapping(x1, x2, cols)
    r0, r1 = _cells_overlapping(y1, y2, rows)
    mask = np.zeros((rows, cols), dtype=bool)
    if c1 >= c0 and r1 >= r0:
        mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask


def region_token_mask(region: Sequence[int], grid_hw: tuple[int, int], grid: int = 8) -> np.ndarray:
    """Boolean mask ``(rows, cols)`` of tokens inside a block region on a plain (resized) image."""
    from crop.geometry.regions import Region

    r = Region(*region).check(grid)
    box = (
        Fraction(r.x_min, grid),
        Fraction(r.y_min, grid),
        Fraction(r.x_max + 1, grid),
        Fraction(r.y_max + 1, grid),
    )
    return box_norm_token_mask(box, grid_hw)
