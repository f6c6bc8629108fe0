"""Image region -> which visual tokens survive, through each processor's geometry.

A region is either a ``Region`` of 8x8 blocks or a normalized box ``(x1, y1, x2, y2)`` on the
*original* image. It is first mapped onto each view's token grid (the view may show a centre crop,
a padded square, a plain resize, or letterboxed tiles), then turned into a keep-mask with the
cell-overlap rule of :func:`crop.geometry.tokens.box_norm_token_mask`.

This module is the one owner of "region on the original image -> visual token mask":
:func:`view_keep_mask` is used by ILP, prune, the centre / random baselines, the averaged budget
and (through :func:`llava_region_mask`) PLC's context masks.

Two retention modes:

* exact (``budget=None``): every token whose cell overlaps the mapped box; pure padding is
  dropped unless the region is the whole image (then every token is kept: no pruning).
* budget ``R`` tokens per image: see :func:`budget_rect`; the rectangle keeps the mapped box's
  centre and aspect ratio and is grown or shrunk to about ``R`` cells of image (never padding),
  split over the image's views in proportion to their cell counts.

LLaVA-NeXT newline tokens are kept iff their row keeps at least one token; they are not counted
against the budget (they are counted in ``visual_kept``).

Several regions per image (issue 21): :func:`region_keep_plan` also takes a *list* of regions for
an image (:func:`region_list`). The kept set is the union of the regions' masks, view by view (a
mask, not one rectangle). Exact mode: the union of each region's exact mask. Budget mode: ``R`` is
spread over the regions by area (:func:`split_budget_by_area`: each region gets
``floor(R * area_i / sum(area))`` tokens and the remaining tokens go one each to the largest
fractional parts, ties to the earlier region), each share becomes its own :func:`budget_rect`
around its region, and the union is kept; where two rectangles overlap a token counts once, so a
row may keep fewer than ``R``. A one-element list keeps exactly what the region alone keeps.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Sequence, Union

import numpy as np

from crop.geometry.regions import Region, region_to_box_norm
from crop.geometry.tokens import box_norm_token_mask
from crop.pruning.layout import SampleLayout, ViewGrid
from crop.pruning.plan import KeepPlan  # noqa: F401  (re-exported: plans are built here)

BoxNorm = tuple[float, float, float, float]
RegionLike = Union[Region, Sequence[float]]
LLAVA_GEOMETRIES = ("center_crop", "pad_square", "resize")


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


def is_whole_image(box: BoxNorm) -> bool:
    """The box covers the whole original image (the region that means "no pruning")."""
    x1, y1, x2, y2 = box
    return x1 <= 0.0 and y1 <= 0.0 and x2 >= 1.0 and y2 >= 1.0


def content_mask(view: ViewGrid, image_wh: tuple[int, int] | None, llava_geometry: str = "center_crop") -> np.ndarray:
    """Cells ``(rows, cols)`` of the view that show some of the image (the rest is pure padding).

    Padding is what a processor adds around the image: LLaVA-1.5's pad-to-square bands and the
    letterbox rows / columns LLaVA-NeXT's unpadding leaves. A cell partly on the image counts as
    image. Centre crops, plain resizes and Qwen2-VL grids have no padding (all True).
    """
    return view_box_mask(map_box_to_view((0.0, 0.0, 1.0, 1.0), view, image_wh, llava_geometry), view.grid_hw)


def budget_rect(box: BoxNorm, grid_hw: tuple[int, int], budget: int,
                bounds: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Keep-mask of a contiguous rectangle of about ``budget`` cells centred on ``box``.

    Rule: with the box's size in cells ``bw x bh`` (aspect ``a = bw / bh``, 1 if degenerate) and
    centre ``(cx, cy)`` clamped into the allowed cells, ``h = clamp(round(sqrt(budget / a)), 1, rows)``,
    ``w = clamp(round(budget / h), 1, cols)``, then ``h = clamp(round(budget / w), 1, rows)``.
    The rectangle's top-left is ``round(cy - h / 2)`` / ``round(cx - w / 2)`` shifted to lie
    inside the allowed cells. Kept = ``h * w`` (exactly ``budget`` when it factors, otherwise close).

    ``bounds`` = ``(row0, col0, row1, col1)`` (ends exclusive) limits the rectangle to the cells
    that show the image (:func:`content_mask`), so padding is never spent from the budget;
    ``rows`` / ``cols`` above are then the bounds' sizes. Default: the whole grid.
    """
    rows, cols = grid_hw
    mask = np.zeros((rows, cols), dtype=bool)
    r_lo, c_lo, r_hi, c_hi = bounds if bounds is not None else (0, 0, rows, cols)
    n_r, n_c = r_hi - r_lo, c_hi - c_lo
    if budget <= 0 or n_r <= 0 or n_c <= 0:
        return mask
    if budget >= n_r * n_c:
        mask[r_lo:r_hi, c_lo:c_hi] = True
        return mask
    x1, y1, x2, y2 = box
    bw, bh = (x2 - x1) * cols, (y2 - y1) * rows
    a = bw / bh if bw > 0 and bh > 0 else 1.0
    cx = min(max((x1 + x2) / 2 * cols, c_lo), c_hi)
    cy = min(max((y1 + y2) / 2 * rows, r_lo), r_hi)
    h = min(max(round(math.sqrt(budget / a)), 1), n_r)
    w = min(max(round(budget / h), 1), n_c)
    h = min(max(round(budget / w), 1), n_r)
    r0 = min(max(int(round(cy - h / 2)), r_lo), r_hi - h)
    c0 = min(max(int(round(cx - w / 2)), c_lo), c_hi - w)
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


def view_box_mask(box_v: BoxNorm, grid_hw: tuple[int, int]) -> np.ndarray:
    """Cells ``(rows, cols)`` a view box overlaps with positive area (float noise snapped)."""
    rows, cols = grid_hw
    x1, y1, x2, y2 = box_v
    return box_norm_token_mask((_snap(x1, cols), _snap(y1, rows), _snap(x2, cols), _snap(y2, rows)), grid_hw)


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(row0, col0, row1, col1)`` (ends exclusive) of a mask's true cells; empty -> zero size."""
    r, c = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if r.size == 0:
        return 0, 0, 0, 0
    return int(r[0]), int(c[0]), int(r[-1]) + 1, int(c[-1]) + 1


def view_keep_mask(box: BoxNorm, view: ViewGrid, image_wh: tuple[int, int] | None,
                   llava_geometry: str = "center_crop", budget: int | None = None,
                   whole_is_identity: bool = True) -> np.ndarray:
    """THE region -> token rule: cells ``(rows, cols)`` of ``view`` kept for a box on the original image.

    Every user goes through here: ILP / prune / centre / random (:func:`region_keep_plan`) and
    PLC's context masks (:func:`llava_region_mask`), so one region gives one token set.

    * exact (``budget=None``): the cells the mapped box overlaps with positive area. Padding is
      dropped: a box inside the image never overlaps a pure-padding cell, also when it touches
      the image border. The whole-image box keeps every cell, padding included, so the
      whole-image region is the identity (no pruning) for every geometry.
    * ``budget`` cells: :func:`budget_rect` limited to the cells that show the image.

    ``whole_is_identity=False`` drops padding for the whole-image box too (the averaged budget's
    scaled boxes, :mod:`crop.pruning.average`: a box grown over the whole image keeps its image
    cells, not the padding).
    """
    if budget is None and whole_is_identity and is_whole_image(box):
        return np.ones(view.grid_hw, dtype=bool)
    mapped = map_box_to_view(box, view, image_wh, llava_geometry)
    if budget is None:
        return view_box_mask(mapped, view.grid_hw)
    return budget_rect(mapped, view.grid_hw, budget, _bounds(content_mask(view, image_wh, llava_geometry)))


def llava_region_mask(region: RegionLike, image_wh: tuple[int, int], llava_geometry: str,
                      grid_hw: tuple[int, int], tile_px: int | None = None, grid: int = 8) -> np.ndarray:
    """Exact keep mask ``(rows, cols)`` of a region on one LLaVA-1.5 view, without a layout.

    The same rule as :func:`region_keep_plan` (a one-view layout is built here), for PLC, which
    knows its grid but has no processor outputs. ``tile_px`` (``vision_config.image_size``)
    selects the processors' integer centre-crop arithmetic; without it ``center_crop`` uses the
    continuous formula (pad and resize need no pixel size).
    """
    rows, cols = grid_hw
    if rows != cols:
        raise ValueError(f"a LLaVA-1.5 grid is square, got {rows}x{cols}")
    geometry = {"side": rows} if tile_px is None else {"side": rows, "image_size": int(tile_px)}
    view = ViewGrid("llava", 0, np.arange(rows * cols, dtype=np.int64).reshape(rows, cols), None, geometry)
    return view_keep_mask(to_box_norm(region, grid), view, image_wh, llava_geometry)


def _split_budget(budget: int, views: Sequence[ViewGrid]) -> list[int]:
    """Split a per-image budget over views in proportion to cell counts (largest remainder)."""
    cells = [v.grid_hw[0] * v.grid_hw[1] for v in views]
    total = sum(cells)
    raw = [budget * c / total for c in cells]
    out = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: out[i] - raw[i])[: budget - sum(out)]:
        out[i] += 1
    return out


def image_keep_masks(lay: SampleLayout, image_index: int, box: BoxNorm, image_wh: tuple[int, int] | None,
                     llava_geometry: str = "center_crop", budget: int | None = None,
                     whole_is_identity: bool = True) -> list[tuple[ViewGrid, np.ndarray]]:
    """``(view, keep mask (rows, cols))`` for every view of one image of ``lay`` (budget split over views)."""
    views = [v for v in lay.views if v.image_index == image_index]
    budgets = _split_budget(budget, views) if budget is not None else [None] * len(views)
    return [(v, view_keep_mask(box, v, image_wh, llava_geometry, b, whole_is_identity)) for v, b in zip(views, budgets)]


def kept_count(lay: SampleLayout, box: BoxNorm, image_wh: tuple[int, int] | None,
               llava_geometry: str = "center_crop", whole_is_identity: bool = True) -> int:
    """Visual tokens :func:`region_keep_plan` keeps (exact mode) for a one-image row, without the plan.

    Grid cells kept + LLaVA-NeXT newlines of kept rows + tokens on no grid (a CLS); used where
    many candidate boxes are counted (:mod:`crop.pruning.average`).
    """
    if len(lay.image_indices) != 1:
        raise ValueError(f"kept_count takes a one-image row, got {len(lay.image_indices)} images")
    n = int(lay.always_kept.size)
    for view, m in image_keep_masks(lay, lay.image_indices[0], box, image_wh, llava_geometry, None, whole_is_identity):
        n += int(m.sum())
        if view.newline_positions is not None:
            n += int(m.any(axis=1).sum())
    return n


def region_list(value) -> list | None:
    """``None`` for one region (a ``Region`` or four numbers: a normalized box), else the list of
    regions an image keeps together (each a ``Region`` or a normalized box)."""
    if isinstance(value, Region):
        return None
    if isinstance(value, (str, bytes)):
        raise ValueError(f"region {value!r} is a string; parse it first (crop.formatting)")
    items = list(value)
    if len(items) == 4 and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items):
        return None
    if not items:
        raise ValueError("an empty list of regions keeps nothing; give at least one region")
    return items


def split_budget_by_area(budget: int, boxes: Sequence[BoxNorm]) -> list[int]:
    """Spread ``budget`` tokens over boxes in proportion to their areas (largest remainder).

    ``floor(budget * area_i / total)`` each, then one more token to the largest fractional parts,
    ties to the earlier box. Areas are exact rationals of the normalized boxes; boxes of zero total
    area share equally.
    """
    areas = [max(Fraction(0), (Fraction(b[2]) - Fraction(b[0])) * (Fraction(b[3]) - Fraction(b[1]))) for b in boxes]
    total = sum(areas)
    if total == 0:
        areas, total = [Fraction(1)] * len(boxes), Fraction(len(boxes))
    raw = [budget * a / total for a in areas]
    out = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[: budget - sum(out)]:
        out[i] += 1
    return out


def multi_image_keep_masks(lay: SampleLayout, image_index: int, boxes: Sequence[BoxNorm],
                           image_wh: tuple[int, int] | None, llava_geometry: str = "center_crop",
                           budget: int | None = None,
                           whole_is_identity: bool = True) -> list[tuple[ViewGrid, np.ndarray]]:
    """Like :func:`image_keep_masks` for several boxes on one image: the union of their masks,
    view by view; a budget is spread over the boxes by :func:`split_budget_by_area` first."""
    shares = split_budget_by_area(budget, boxes) if budget is not None else [None] * len(boxes)
    union: list[tuple[ViewGrid, np.ndarray]] | None = None
    for box, share in zip(boxes, shares):
        masks = image_keep_masks(lay, image_index, box, image_wh, llava_geometry, share, whole_is_identity)
        union = masks if union is None else [(v, m | m_new) for (v, m), (_, m_new) in zip(union, masks)]
    return union or []


def region_keep_plan(
    layouts: Sequence[SampleLayout],
    regions: Sequence[RegionLike],
    *,
    image_sizes_wh: Sequence[tuple[int, int]] | None = None,
    llava_geometry: str = "center_crop",
    budget: int | None = None,
    grid: int = 8,
    whole_is_identity: bool = True,
) -> KeepPlan:
    """Keep plan from one region per image (images in batch order, one per row in the usual case).

    ``regions[i]`` may also be a list of regions (issue 21): image ``i`` keeps the union of their
    tokens; with ``budget`` it is spread over them by area (module docstring). Rows of a ragged
    batch may mix one region and several.

    ``image_sizes_wh`` (original width, height per image) is needed for LLaVA-1.5 with
    ``center_crop`` / ``pad_square``; LLaVA-NeXT reads the size from the layout. The plan records
    how many kept tokens are pure padding (``padding_kept``; see :func:`view_keep_mask`, also for
    ``whole_is_identity``).
    """
    n_images = sum(len(lay.image_indices) for lay in layouts)
    if len(regions) != n_images:
        raise ValueError(f"got {len(regions)} regions for {n_images} images (one region per image)")
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    keep_visual, pad_visual = [], []
    for lay in layouts:
        pos_to_idx = {int(p): i for i, p in enumerate(lay.visual_positions)}
        keep = np.zeros(lay.num_visual, dtype=bool)
        pad = np.zeros(lay.num_visual, dtype=bool)
        for p in lay.always_kept:
            keep[pos_to_idx[int(p)]] = True
        for img in lay.image_indices:
            wh = image_sizes_wh[img] if image_sizes_wh is not None else None
            several = region_list(regions[img])
            if several is None:
                masks = image_keep_masks(lay, img, to_box_norm(regions[img], grid), wh, llava_geometry, budget,
                                         whole_is_identity)
            else:
                masks = multi_image_keep_masks(lay, img, [to_box_norm(r, grid) for r in several], wh,
                                               llava_geometry, budget, whole_is_identity)
            for view, m in masks:
                padding = ~content_mask(view, wh, llava_geometry)  # (rows, cols)
                for p in view.positions[m]:
                    keep[pos_to_idx[int(p)]] = True
                for p in view.positions[padding]:
                    pad[pos_to_idx[int(p)]] = True
                if view.newline_positions is not None:
                    for p in view.newline_positions[m.any(axis=1)]:
                        keep[pos_to_idx[int(p)]] = True
        keep_visual.append(keep)
        pad_visual.append(pad)
    return KeepPlan.from_keep_masks(layouts, keep_visual, pad_visual)


def keep_all_plan(layouts: Sequence[SampleLayout]) -> KeepPlan:
    """The no-pruning plan (useful for parity checks)."""
    return KeepPlan.from_keep_masks(layouts, [np.ones(lay.num_visual, bool) for lay in layouts])
