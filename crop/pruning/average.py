"""The paper's "retain averaged R tokens": one region scale per benchmark run, mean kept = R.

The paper keeps the (predicted) region itself and averages the pruning rate over the test set
(Sec. 4.2: "pruning rates were averaged to 66.7%, 77.8%, and 88.9% across the test set"; the
retained tokens "consistently form continuous rectangular image regions"). To hit a chosen R the
regions must all grow or shrink by the same factor: every region's normalized box is scaled by
one ``scale`` about its own centre (both sides, so the aspect ratio stays) and clipped to the
image, then kept exactly (:func:`crop.pruning.region_map.view_keep_mask`). Padding is never kept
in this mode, not even by a box grown over the whole image (it would add the padding bands of
that image at once, no content, and coarse steps to the mean): such an image keeps its image
cells. ``scale`` is chosen so the mean kept count over the run's images is as close to R as the
integer counts allow (:func:`calibrate_scale`).

A fractional R (Qwen2-VL's "50%") targets the mean kept *share* ``kept / visual tokens`` instead.

Unlike ``budget_rect`` (every region reshaped to about R tokens: a 1-block region and the
whole-image fallback become the same 8x8-token square), the kept counts vary per image: large
regions keep many tokens, small ones few; the run reports the achieved mean and spread.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from crop.pruning.layout import SampleLayout
from crop.pruning.region_map import BoxNorm, kept_count

MIN_SCALE = 1e-6  # a box this small still keeps the 1-4 cells around its centre
BISECTION_STEPS = 40  # geometric halvings: the scale is resolved to a factor 1 + ~1e-11


def scale_box(box: BoxNorm, scale: float) -> BoxNorm:
    """``box`` grown (``scale > 1``) or shrunk about its centre, clipped to the image [0, 1]."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = (x2 - x1) / 2 * scale, (y2 - y1) / 2 * scale
    return (max(cx - hw, 0.0), max(cy - hh, 0.0), min(cx + hw, 1.0), min(cy + hh, 1.0))


def whole_image_scale(box: BoxNorm) -> float:
    """The smallest scale at which :func:`scale_box` covers the whole image."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return max(max(cx, 1 - cx) / ((x2 - x1) / 2), max(cy, 1 - cy) / ((y2 - y1) / 2))


@dataclass(frozen=True)
class AverageSample:
    """One image of the run: its token layout (one row, one image), region box and geometry."""

    layout: SampleLayout
    box: BoxNorm  # normalized box of the region on the original image
    image_wh: tuple[int, int] | None
    llava_geometry: str = "center_crop"

    def kept(self, scale: float) -> int:
        return kept_count(self.layout, scale_box(self.box, scale), self.image_wh, self.llava_geometry,
                          whole_is_identity=False)

    @property
    def total(self) -> int:
        return self.layout.num_visual


@dataclass(frozen=True)
class ScaleChoice:
    """The chosen scale and what it achieves over the calibration images."""

    scale: float
    target: float  # R (tokens) or a share in (0, 1)
    unit: str  # "tokens" | "share"
    n: int
    kept: tuple[int, ...]  # per image, in sample order
    totals: tuple[int, ...]

    def _values(self) -> list[float]:
        if self.unit == "tokens":
            return [float(k) for k in self.kept]
        return [k / t for k, t in zip(self.kept, self.totals)]

    def summary(self) -> dict:
        """Achieved mean and spread (JSON-ready): what the run reports next to its target."""
        vals = self._values()
        out = {"budget_mode": "average", "target": self.target, "unit": self.unit, "scale": self.scale,
               "n_images": self.n}
        if not vals:
            return out
        mean = statistics.fmean(vals)
        out.update({"achieved_mean": mean, "achieved_std": statistics.pstdev(vals),
                    "achieved_min": min(vals), "achieved_max": max(vals),
                    "relative_error": (mean - self.target) / self.target if self.target else None,
                    "kept_mean": statistics.fmean(self.kept),
                    "kept_quartiles": _quartiles(self.kept), "visual_tokens_mean": statistics.fmean(self.totals)})
        return out


def _quartiles(values: Sequence[int]) -> list[float]:
    if len(values) < 2:
        return [float(values[0])] * 3
    return [float(q) for q in statistics.quantiles(values, n=4, method="inclusive")]


def calibrate_scale(samples: Sequence[AverageSample], target: int | float) -> ScaleChoice:
    """One scale for all samples whose mean kept count (int ``target``) or share (float) is closest
    to ``target``.

    The mean is a non-decreasing step function of the scale (a larger box is a superset), so a
    bisection finds the first scale whose mean reaches the target; of that step and the one below
    it the closer is returned (ties: the smaller). Targets beyond what the images hold give the
    whole images (mean < R, reported); an empty run gives scale 1.
    """
    unit = "share" if isinstance(target, float) and 0 < target < 1 else "tokens"
    if not samples:
        return ScaleChoice(1.0, float(target), unit, 0, (), ())

    def mean_at(scale: float) -> tuple[float, tuple[int, ...]]:
        kept = tuple(s.kept(scale) for s in samples)
        if unit == "tokens":
            return statistics.fmean(kept), kept
        return statistics.fmean(k / s.total for k, s in zip(kept, samples)), kept

    def choice(scale: float, kept: tuple[int, ...]) -> ScaleChoice:
        return ScaleChoice(scale, float(target), unit, len(samples), kept, tuple(s.total for s in samples))

    lo, hi = MIN_SCALE, max(whole_image_scale(s.box) for s in samples) * (1 + 1e-9)
    m_lo, k_lo = mean_at(lo)
    m_hi, k_hi = mean_at(hi)
    if m_lo >= target:
        return choice(lo, k_lo)
    if m_hi <= target:
        return choice(hi, k_hi)
    for _ in range(BISECTION_STEPS):  # invariant: mean(lo) < target <= mean(hi)
        mid = math.sqrt(lo * hi)  # geometric: scales span orders of magnitude
        m_mid, k_mid = mean_at(mid)
        if m_mid >= target:
            hi, m_hi, k_hi = mid, m_mid, k_mid
        else:
            lo, m_lo, k_lo = mid, m_mid, k_mid
    if target - m_lo <= m_hi - target:
        return choice(lo, k_lo)
    return choice(hi, k_hi)
