"""Image region -> which visual tokens survive, through each processor's geometry.

A region is either a ``Region`` of 8x8 blocks or a normalized box ``(x1, y1, x2, y2)`` on the
*original* image. It is first mapped onto each view's token grid (the view may show a centre crop,
a padded square, a plain resize, or letterboxed tiles), then turned into a keep-mask with the
cell-overlap rule of :func:`crop.geometry.tokens.box_norm_token_mask`.

Two retention modes:

* exact (``budget=None``): every token whose cell overlaps the mapped box.
* budget ``R`` tokens per image: see :func:`budget_rect`; the rectangle keeps the mapped box's
  centre and aspect ratio and is grown or shrunk to about ``R`` cells, split over the image's
  views in proportion to their cell counts.

LLaVA-NeXT newline tokens are kept iff their row keeps at least one token; they are not counted
against the budget (they are counted in ``visual_kept``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence, Union

import numpy as np

from crop.geometry.regions import Region, region_to_box_norm
from crop.geometry.tokens import box_norm_token_mask
from crop.pruning.layout import SampleLayout, ViewGrid

BoxNorm = tuple[float, float, float, float]
RegionLike = Union[Region, Sequence[float]]
LLAVA_GEOMETRIES = ("center_crop", "pad_square", "resize")


@dataclass(frozen=True)
class KeepPlan:
    """Which sequence positions each batch row drops from layer K on.

    ``drop[b]`` are sorted positions; everything else (text, kept visual tokens and any token
    generated later) stays. ``prompt_len`` is the prompt length the plan was computed for and
    ``visual[b]`` the positions of row b's image tokens then (``None`` for a hand-built plan); the
    hooks check both against the prompt they prune (:mod:`crop.pruning.guards`).
    """

    prompt_len: int
    drop: tuple[np.ndarray, ...]
    visual_total: tuple[int, ...]
    visual_kept: tuple[int, ...]
    visual: tuple[np.ndarray, ...] | None = None

    @property
    def batch_size(self) -> int:
        return len(self.drop)

    @classmethod
    def from_keep_masks(cls, layouts: Sequence[SampleLayout], keep_visual: Sequence[np.ndarray]) -> "KeepPlan":
        """``keep_visual[b]`` is a bool mask over ``layouts[b].visual_positions``."""
        drop, kept = [], []
        for lay, m in zip(layouts, keep_visual):
            m = np.asarray(m, dtype=bool)
            if m.shape != lay.visual_positions.shape:
                raise ValueError(f"keep mask shape {m.shape} != visual positions {lay.visual_positions.shape}")
            drop.append(np.sort(lay.visual_positions[~m]))
            kept.append(int(m.sum()))
        seq = {lay.seq_len for lay in layouts}
        if len(seq) != 1:
            raise ValueError(f"layouts disagree on the sequence length: {sorted(seq)}")
        total = tuple(lay.num_visual for lay in layouts)
        return cls(seq.pop(), tuple(drop), total, tuple(kept), tuple(lay.visual_positions for lay in layouts))


def to_box_norm(region: RegionLike, grid: int = 8) -> BoxNorm:
    """A ``Region`` (blocks) or a 4-number normalized box -> normalized box."""
    if isinstance(region, Region):
        return tuple(float(v) for v in region_to_box_norm(region, grid))
    box = tuple(float(v) for v in region)
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(f"region {region!r} is not a Region or a normalized box x1<x2, y1<y2")
    return box


def _center_crop_px(w: float, h: float, crop: int) -> tuple[float, float, float, float]:
    """(resized W, resized H, crop left, crop top) in pixels, as the HF image processors do it.

    Shortest side -> ``crop``, the other ``int(crop * long / short)`` (truncated), then the
    central ``crop`` square with a floored offset (PIL and torchvision backends alike).
    """
    if w <= h:
        rw, rh = crop, int(crop * h / w)
    else:
        rw, rh = int(crop * w / h), crop
    return float(rw), float(rh), float((rw - crop) // 2), float((rh - crop) // 2)


def _size_field(size, key: str):
    """``size[key]`` of a ``SizeDict`` / dict image-processor size, None when absent."""
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def llava_geometry_of(image_processor) -> str:
    """The ``llava_geometry`` a LLaVA-1.5 image processor applies, read from its options.

    ``CLIPImageProcessor`` as shipped with the llava-hf checkpoints (shortest side -> S, centre
    crop S) is ``"center_crop"``; ``LlavaImageProcessor(do_pad=True)`` (the original LLaVA's
    pad-to-square with the mean colour) is ``"pad_square"``; a plain resize to a square
    (``do_center_crop=False``, ``size={"height": S, "width": S}``) is ``"resize"``. Options the
    region mapping does not model (a crop smaller than the resized short side, no resize) raise
    ``ValueError`` naming them. The crop side must also equal the model's
    ``vision_config.image_size`` (otherwise the processor emits a different number of image
    tokens, which :func:`token_layout` checks against the config).
    """
    ip = getattr(image_processor, "image_processor", image_processor)  # a full processor is fine
    if not getattr(ip, "do_resize", True):
        raise ValueError("image processor has do_resize=False: region mapping needs the resize to the tile size")
    short = _size_field(ip.size, "shortest_edge")
    sq_h, sq_w = _size_field(ip.size, "height"), _size_field(ip.size, "width")
    crop = (_size_field(ip.crop_size, "height"), _size_field(ip.crop_size, "width"))
    crops = bool(getattr(ip, "do_center_crop", False))
    side = short if short is not None else (sq_h if sq_h == sq_w else None)
    if crops and (side is None or crop != (side, side)):
        raise ValueError(
            f"image processor resizes to size={dict(ip.size) if isinstance(ip.size, dict) else ip.size} and "
            f"centre-crops to {crop}: only a crop equal to the resized short side is supported"
        )
    if getattr(ip, "do_pad", False):
        return "pad_square"
    if crops:
        return "center_crop"
    if sq_h is not None and sq_h == sq_w:
        return "resize"
    raise ValueError(f"image processor size {ip.size} without a centre crop does not give a square tile")


def map_box_to_view(
    box: BoxNorm, view: ViewGrid, image_wh: tuple[int, int] | None, llava_geometry: str = "center_crop"
) -> BoxNorm:
    """Normalized box on the original image -> normalized box on this view's token grid.

    The result may extend beyond [0, 1] (e.g. outside a centre crop); the mask rule ignores
    those parts. Views from :func:`crop.pruning.layout.token_layout` carry pixel sizes, and the
    mapping then follows the processors' integer arithmetic exactly (checked against the real
    processor classes in ``tests/pruning/test_real_processors.py``); hand-built views without
    them fall back to the continuous formulas.
    """
    x1, y1, x2, y2 = box
    if view.kind in ("next_base", "qwen"):
        return box  # plain resize of the whole image: proportional
    if view.kind == "llava":
        if llava_geometry == "resize":
            return box
        if image_wh is None:
            raise ValueError(f"llava_geometry={llava_geometry!r} needs the original image size (W, H)")
        w, h = (float(v) for v in image_wh)
        if llava_geometry == "pad_square":
            s = max(w, h)  # image pasted centred on an s x s canvas (offset rounds down, as the
            ox, oy = (s - w) // 2, (s - h) // 2  # original LLaVA expand2square does)
            return ((x1 * w + ox) / s, (y1 * h + oy) / s, (x2 * w + ox) / s, (y2 * h + oy) / s)
        if llava_geometry == "center_crop":
            crop = view.geometry.get("image_size")
            if crop is not None:  # exact pixels: resized size, then a floored crop offset
                rw, rh, left, top = _center_crop_px(w, h, int(crop))
                sx, sy = rw / crop, rh / crop  # resized size in crop sides
                ox, oy = left / crop, top / crop  # crop offset in crop sides
                return (x1 * sx - ox, y1 * sy - oy, x2 * sx - ox, y2 * sy - oy)
            # shortest side -> S, then the central S x S square; in units of the crop side:
            short = min(w, h)
            rw, rh = w / short, h / short  # resized size / S
            ox, oy = (rw - 1) / 2, (rh - 1) / 2
            return (x1 * rw - ox, y1 * rh - oy, x2 * rw - ox, y2 * rh - oy)
        raise ValueError(f"llava_geometry {llava_geometry!r} not in {LLAVA_GEOMETRIES}")
    if view.kind == "next_highres":
        g = view.geometry
        if "content_px" in g:  # exact: pixels of the letterboxed tiles -> tokens -> unpadded grid
            p = g["patch_px"]
            (ch, cw), (py, px) = g["content_px"], g["paste_px"]
            cut_r = g["pad"] if g["crop_axis"] == "rows" else 0  # token rows / cols the model cut
            cut_c = g["pad"] if g["crop_axis"] == "cols" else 0

            def fx(x: float) -> float:
                return ((px + x * cw) / p - cut_c) / g["cols"]

            def fy(y: float) -> float:
                return ((py + y * ch) / p - cut_r) / g["rows"]

            return (fx(x1), fy(y1), fx(x2), fy(y2))
        ph, pw = g["padded_hw"]
        if g["crop_axis"] == "rows":  # content letterboxed vertically, centred, `pad` rows cut
            off = (ph - g["content"]) / 2 - g["pad"]
            return (x1, (off + y1 * g["content"]) / g["rows"], x2, (off + y2 * g["content"]) / g["rows"])
        off = (pw - g["content"]) / 2 - g["pad"]
        return ((off + x1 * g["content"]) / g["cols"], y1, (off + x2 * g["content"]) / g["cols"], y2)
    raise ValueError(f"unknown view kind {view.kind!r}")


def extend_through_padding(box: BoxNorm, mapped: BoxNorm) -> BoxNorm:
    """Box edges lying on the image border are pushed to the view's border.

    Padding that a processor adds next to the image (pad-to-square bands, the letterbox rows
    LLaVA-NeXT's unpadding leaves) shows nothing, but it is part of the view; a box touching an
    image edge keeps the padding on that side, so the whole-image region keeps every token and
    ILP is then the identity. An edge inside the image is untouched, and so is an edge that
    lies outside the view already (centre crop): ``min``/``max`` only ever enlarge the box.
    """
    x1, y1, x2, y2 = box
    m1, n1, m2, n2 = mapped
    return (
        min(m1, 0.0) if x1 <= 0.0 else m1,
        min(n1, 0.0) if y1 <= 0.0 else n1,
        max(m2, 1.0) if x2 >= 1.0 else m2,
        max(n2, 1.0) if y2 >= 1.0 else n2,
    )


def budget_rect(box: BoxNorm, grid_hw: tuple[int, int], budget: int) -> np.ndarray:
    """Keep-mask of a contiguous rectangle of about ``budget`` cells centred on ``box``.

    Rule: with the box's size in cells ``bw x bh`` (aspect ``a = bw / bh``, 1 if degenerate) and
    centre ``(cx, cy)`` clamped into the grid, ``h = clamp(round(sqrt(budget / a)), 1, rows)``,
    ``w = clamp(round(budget / h), 1, cols)``, then ``h = clamp(round(budget / w), 1, rows)``.
    The rectangle's top-left is ``round(cy - h / 2)`` / ``round(cx - w / 2)`` shifted to lie
    inside the grid. Kept = ``h * w`` (exactly ``budget`` when it factors, otherwise close).
    """
    rows, cols = grid_hw
    mask = np.zeros((rows, cols), dtype=bool)
    if budget <= 0:
        return mask
    if budget >= rows * cols:
        mask[:] = True
        return mask
    x1, y1, x2, y2 = box
    bw, bh = (x2 - x1) * cols, (y2 - y1) * rows
    a = bw / bh if bw > 0 and bh > 0 else 1.0
    cx = min(max((x1 + x2) / 2, 0.0), 1.0) * cols
    cy = min(max((y1 + y2) / 2, 0.0), 1.0) * rows
    h = min(max(round(math.sqrt(budget / a)), 1), rows)
    w = min(max(round(budget / h), 1), cols)
    h = min(max(round(budget / w), 1), rows)
    r0 = min(max(int(round(cy - h / 2)), 0), rows - h)
    c0 = min(max(int(round(cx - w / 2)), 0), cols - w)
    mask[r0 : r0 + h, c0 : c0 + w] = True
    return mask


def _snap(v: float, n: int) -> float | Fraction:
    """A coordinate within 1e-9 token of a cell boundary -> that boundary, exactly.

    Float noise of the mapping (``0.4 * 5 = 2.0000000000000004``) must not add a row or column
    under the positive-overlap rule, so the boundary is returned as a ``Fraction`` (``2/5`` has
    no exact float).
    """
    t = v * n
    return Fraction(round(t), n) if abs(t - round(t)) < 1e-9 else v


def _view_mask(box_v: BoxNorm, view: ViewGrid, budget: int | None) -> np.ndarray:
    if budget is None:
        rows, cols = view.grid_hw
        x1, y1, x2, y2 = box_v
        snapped = (_snap(x1, cols), _snap(y1, rows), _snap(x2, cols), _snap(y2, rows))
        return box_norm_token_mask(snapped, view.grid_hw)
    return budget_rect(box_v, view.grid_hw, budget)


def _split_budget(budget: int, views: Sequence[ViewGrid]) -> list[int]:
    """Split a per-image budget over views in proportion to cell counts (largest remainder)."""
    cells = [v.grid_hw[0] * v.grid_hw[1] for v in views]
    total = sum(cells)
    raw = [budget * c / total for c in cells]
    out = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: out[i] - raw[i])[: budget - sum(out)]:
        out[i] += 1
    return out


def region_keep_plan(
    layouts: Sequence[SampleLayout],
    regions: Sequence[RegionLike],
    *,
    image_sizes_wh: Sequence[tuple[int, int]] | None = None,
    llava_geometry: str = "center_crop",
    budget: int | None = None,
    grid: int = 8,
) -> KeepPlan:
    """Keep plan from one region per image (images in batch order, one per row in the usual case).

    ``image_sizes_wh`` (original width, height per image) is needed for LLaVA-1.5 with
    ``center_crop`` / ``pad_square``; LLaVA-NeXT reads the size from the layout.
    """
    n_images = sum(len(lay.image_indices) for lay in layouts)
    if len(regions) != n_images:
        raise ValueError(f"got {len(regions)} regions for {n_images} images (one region per image)")
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    keep_visual = []
    for lay in layouts:
        pos_to_idx = {int(p): i for i, p in enumerate(lay.visual_positions)}
        keep = np.zeros(lay.num_visual, dtype=bool)
        for p in lay.always_kept:
            keep[pos_to_idx[int(p)]] = True
        for img in lay.image_indices:
            box = to_box_norm(regions[img], grid)
            views = [v for v in lay.views if v.image_index == img]
            wh = image_sizes_wh[img] if image_sizes_wh is not None else None
            budgets = _split_budget(budget, views) if budget is not None else [None] * len(views)
            for view, bud in zip(views, budgets):
                mapped = map_box_to_view(box, view, wh, llava_geometry)
                if bud is None:  # exact region: a box on the image border keeps the padding beyond
                    mapped = extend_through_padding(box, mapped)
                m = _view_mask(mapped, view, bud)  # (rows, cols)
                for p in view.positions[m]:
                    keep[pos_to_idx[int(p)]] = True
                if view.newline_positions is not None:
                    for p in view.newline_positions[m.any(axis=1)]:
                        keep[pos_to_idx[int(p)]] = True
        keep_visual.append(keep)
    return KeepPlan.from_keep_masks(layouts, keep_visual)


def keep_all_plan(layouts: Sequence[SampleLayout]) -> KeepPlan:
    """The no-pruning plan (useful for parity checks)."""
    return KeepPlan.from_keep_masks(layouts, [np.ones(lay.num_visual, bool) for lay in layouts])
