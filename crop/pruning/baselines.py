"""Region baselines of the paper's Table 10: Center and Random regions of the predicted size.

Both keep the predicted region's block width and height on the 8x8 grid; Center places it in
the middle (ties towards the top-left), Random draws its top-left uniformly from the valid
placements with a seed (an int, or a string such as the sample key, hashed with sha256 so runs
are reproducible across processes).
"""

from __future__ import annotations

import hashlib

import numpy as np

from crop.geometry.regions import Region


def center_region(region: Region, grid: int = 8) -> Region:
    r = Region(*region).check(grid)
    x0, y0 = (grid - r.width) // 2, (grid - r.height) // 2
    return Region(x0, y0, x0 + r.width - 1, y0 + r.height - 1)


def _seed_int(seed: int | str) -> int:
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    if isinstance(seed, str):
        return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little")
    raise ValueError(f"seed must be an int or a str, got {seed!r}")


def random_region(region: Region, seed: int | str, grid: int = 8) -> Region:
    r = Region(*region).check(grid)
    rng = np.random.default_rng(_seed_int(seed))
    x0 = int(rng.integers(0, grid - r.width + 1))
    y0 = int(rng.integers(0, grid - r.height + 1))
    return Region(x0, y0, x0 + r.width - 1, y0 + r.height - 1)
