"""Exact search for one block rectangle over a G x G grid of block scores (numpy only).

Used by the ``self`` region source (:mod:`crop.pruning.methods.self_region`): the VLM's own
attention, mapped to 8x8 block scores on the original image, is turned into ONE contiguous
region. On an 8x8 grid there are ``C(9, 2) ** 2 = 1296`` block rectangles; all are scored at
once from a 2-D prefix sum (inclusion-exclusion), so the search is exact, not greedy.

Rectangles are ``Region(x_min, y_min, x_max, y_max)`` (inclusive blocks, as everywhere in
:mod:`crop.geometry`). Their canonical order, used to break the last ties, is lexicographic
in ``(y_min, x_min, y_max, x_max)`` (top-most, then left-most, then the smaller far corner).

Tie rules (documented because planted and brute-force tests rely on them):

* :func:`smallest_rect_with_share` -- among the rectangles whose mass is ``>= share * total``:
  the smallest area in blocks, then the larger mass, then the canonical order.
* :func:`best_rect_within_budget` -- among the rectangles whose cost is ``<= budget``: the
  larger mass, then the smaller cost, then the smaller area, then the canonical order.

Masses are float64 inclusion-exclusion sums of the prefix-sum table, and ``total`` is the
whole grid's entry of that table; "equal" means equal float64 values (integer-valued scores,
as in the property tests, are summed exactly).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from crop.geometry.regions import Region


@lru_cache(maxsize=8)
def all_rects(grid: int = 8) -> np.ndarray:
    """Every block rectangle of a ``grid`` x ``grid`` grid, ``(n, 4)`` rows ``[x_min, y_min, x_max, y_max]``,
    in canonical order (``n = (grid * (grid + 1) / 2) ** 2``; read-only)."""
    spans = [(a, b) for a in range(grid) for b in range(a, grid)]  # inclusive [a, b], ordered by (a, b)
    rows = [(x0, y0, x1, y1) for y0, y1 in spans for x0, x1 in spans]
    out = np.array(sorted(rows, key=lambda r: (r[1], r[0], r[3], r[2])), dtype=np.int64)
    out.setflags(write=False)
    return out


def rect_areas(grid: int = 8) -> np.ndarray:
    """Area in blocks of every rectangle of :func:`all_rects`, ``(n,)`` int64."""
    r = all_rects(grid)
    return (r[:, 2] - r[:, 0] + 1) * (r[:, 3] - r[:, 1] + 1)


def _check_scores(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 1:
        raise ValueError(f"block scores must be a square (G, G) array, got shape {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("block scores must be finite and >= 0")
    return s


def rect_masses(scores) -> np.ndarray:
    """Sum of ``scores`` (rows = y blocks, cols = x blocks) inside every rectangle of :func:`all_rects`."""
    s = _check_scores(scores)
    g = s.shape[0]
    prefix = np.zeros((g + 1, g + 1), dtype=np.float64)  # prefix[y, x] = sum of s[:y, :x]
    prefix[1:, 1:] = s.cumsum(0).cumsum(1)
    r = all_rects(g)
    x0, y0, x1, y1 = r[:, 0], r[:, 1], r[:, 2] + 1, r[:, 3] + 1  # ends exclusive
    return prefix[y1, x1] - prefix[y0, x1] - prefix[y1, x0] + prefix[y0, x0]


@lru_cache(maxsize=8)
def _full_index(grid: int) -> int:
    r = all_rects(grid)
    return int(np.flatnonzero((r[:, 0] == 0) & (r[:, 1] == 0) & (r[:, 2] == grid - 1) & (r[:, 3] == grid - 1))[0])


def _pick(keys: list[np.ndarray], ok: np.ndarray) -> int:
    """Index of the first feasible rectangle under lexicographic ``keys`` (smaller first), then canonical order."""
    idx = np.flatnonzero(ok)
    order = np.lexsort([idx] + [k[idx] for k in reversed(keys)])  # last key in lexsort = primary
    return int(idx[order[0]])


def smallest_rect_with_share(scores, share: float = 0.5) -> tuple[Region, float]:
    """The smallest rectangle holding at least ``share`` of the grid's mass, and its mass share.

    ``share`` in (0, 1]. A grid without mass (all zeros) carries no location: the whole grid is
    returned (share 1.0), i.e. no pruning rather than an arbitrary corner.
    """
    if not 0.0 < float(share) <= 1.0:
        raise ValueError(f"mass share must be in (0, 1], got {share}")
    s = _check_scores(scores)
    g = s.shape[0]
    masses = rect_masses(s)
    total = float(masses[_full_index(g)])
    if total <= 0.0:
        return Region(0, 0, g - 1, g - 1), 1.0
    ok = masses >= float(share) * total
    i = _pick([rect_areas(g), -masses], ok)
    return Region(*(int(v) for v in all_rects(g)[i])), float(masses[i] / total)


def best_rect_within_budget(scores, costs, budget: float) -> tuple[Region, float]:
    """The rectangle of largest mass among those with ``costs <= budget``, and its mass share.

    ``costs[i]`` is what rectangle ``all_rects(G)[i]`` costs (the visual tokens it keeps, which
    depend on the processor geometry: the caller computes them). Raises ``ValueError`` when no
    rectangle fits the budget. A massless grid gives share 0.0 (the tie rules then pick the
    cheapest, smallest rectangle).
    """
    s = _check_scores(scores)
    g = s.shape[0]
    costs = np.asarray(costs, dtype=np.float64)
    if costs.shape != (len(all_rects(g)),):
        raise ValueError(f"costs must have one entry per rectangle ({len(all_rects(g))}), got shape {costs.shape}")
    ok = costs <= float(budget)
    if not ok.any():
        raise ValueError(f"no block rectangle fits the budget {budget} (the cheapest costs {costs.min():g})")
    masses = rect_masses(s)
    total = float(masses[_full_index(g)])
    i = _pick([-masses, costs, rect_areas(g)], ok)
    return Region(*(int(v) for v in all_rects(g)[i])), float(masses[i] / total) if total > 0 else 0.0


__all__ = ["all_rects", "best_rect_within_budget", "rect_areas", "rect_masses", "smallest_rect_with_share"]
