"""Where every visual token sits: sequence position -> (view, row, col), read from the data.

Nothing here is hard-coded to one checkpoint: visual positions come from
``input_ids == image_token_id`` and each image's grid from the model config plus the processor
outputs (``image_sizes`` for LLaVA-NeXT, ``image_grid_thw`` for Qwen2-VL). ``generate()`` drops
those keys before the language model runs, so call :func:`token_layout` on the processor outputs
first and hand the result to the plug-in.

Token order per image (one "view" = one raster grid)::

    LLaVA-1.5   [CLS if strategy == "full"] r0c0 r0c1 ... r{n-1}c{n-1}          (n = image/patch)
    LLaVA-NeXT  base: r0c0 ... (n x n, whole image resized)
                high-res: r0c0 .. r0c{W-1} NL r1c0 .. NL ...  (tiles stitched, padding rows/cols
                removed -> H x W, one newline token NL closes every row)
    Qwen2-VL    r0c0 ... on the merged grid (h/m) x (w/m) of image_grid_thw, m = spatial_merge_size
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

FAMILIES = ("llava", "llava_next", "qwen2_vl")


@dataclass(frozen=True)
class ViewGrid:
    """One raster of visual tokens of one image.

    ``positions[r, c]`` is the sequence position of the token in row r, column c.
    ``newline_positions[r]`` (LLaVA-NeXT high-res view only) is the newline closing row r.
    ``geometry`` holds what :mod:`crop.pruning.region_map` needs to map an image box onto this grid.
    """

    kind: str  # "llava" | "next_base" | "next_highres" | "qwen"
    image_index: int
    positions: np.ndarray  # (rows, cols) int64
    newline_positions: np.ndarray | None = None  # (rows,) int64
    geometry: dict = field(default_factory=dict)

    @property
    def grid_hw(self) -> tuple[int, int]:
        return int(self.positions.shape[0]), int(self.positions.shape[1])


@dataclass(frozen=True)
class SampleLayout:
    """All visual tokens of one batch row."""

    family: str
    seq_len: int
    visual_positions: np.ndarray  # (V,) sorted positions where input_ids == image_token_id
    views: tuple[ViewGrid, ...]
    always_kept: np.ndarray  # visual positions on no grid (LLaVA-1.5 CLS with strategy "full")
    image_indices: tuple[int, ...]  # global image indices (order over the batch) in this row

    @property
    def num_visual(self) -> int:
        return int(self.visual_positions.size)


def _config_of(model_or_config: Any):
    return getattr(model_or_config, "config", model_or_config)


def _family(config) -> str:
    mt = getattr(config, "model_type", None)
    if mt not in FAMILIES:
        raise ValueError(f"unsupported model_type {mt!r}; token_layout knows {FAMILIES}")
    return mt


def _as_numpy(x, name: str) -> np.ndarray:
    if x is None:
        raise ValueError(f"processor output {name!r} is required for this model family but is missing")
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _llava_counts(config, n_images: int) -> list[tuple[int, int]]:
    """(grid side, extra tokens) per image for LLaVA-1.5."""
    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise ValueError(f"vision_feature_select_strategy {strategy!r} is not 'default' or 'full'")
    extra = 1 if strategy == "full" else 0  # "full" keeps the CLS token in front of the grid
    return [(side, extra)] * n_images


def _next_image_geometry(config, image_hw: Sequence[int]) -> dict:
    """Grid sizes of one LLaVA-NeXT image (follows the packing rule of the model, re-derived).

    Besides the token grid (``rows`` x ``cols`` after the model's unpadding), this records where
    the image content really lies in the stitched tiles, in pixels, as the image processor puts
    it there: resized to ``content_px`` = (h, w) inside ``best_hw`` (one side fills it, the other
    is ``ceil``-ed) and pasted at ``paste_px`` = ((best - content) // 2 per side). The model's
    unpadding works in tokens with its own rounding, so part of a token row/column of padding
    may survive, or a sliver of content be cut; :mod:`crop.pruning.region_map` maps boxes with
    the pixel numbers, not with the token rounding.
    """
    from transformers.image_processing_utils import select_best_resolution

    if config.vision_feature_select_strategy != "default":
        raise ValueError("LLaVA-NeXT layout supports vision_feature_select_strategy='default' only")
    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    orig_h, orig_w = int(image_hw[0]), int(image_hw[1])
    best_h, best_w = select_best_resolution((orig_h, orig_w), config.image_grid_pinpoints)
    tiles_h, tiles_w = best_h // vc.image_size, best_w // vc.image_size
    padded_h, padded_w = tiles_h * side, tiles_w * side  # stitched tile grid before unpadding
    # The processor letterboxes the resized image into (best_h, best_w); the model removes the
    # padding rows (or columns) in token units with the same rounding as below.
    if orig_w / orig_h > padded_w / padded_h:
        content = orig_h * (padded_w / orig_w)  # image height in token rows
        new = int(round(content, 7))
        pad = (padded_h - new) // 2
        rows, cols = padded_h - 2 * pad, padded_w
        crop_axis = "rows"
    else:
        content = orig_w * (padded_h / orig_h)  # image width in token cols
        new = int(round(content, 7))
        pad = (padded_w - new) // 2
        rows, cols = padded_h, padded_w - 2 * pad
        crop_axis = "cols"
    # Pixel placement by the image processor (get_patch_output_size + centred paste, floor).
    scale_w, scale_h = best_w / orig_w, best_h / orig_h
    if scale_w < scale_h:
        content_px = (min(math.ceil(orig_h * scale_w), best_h), best_w)
    else:
        content_px = (best_h, min(math.ceil(orig_w * scale_h), best_w))
    paste_px = ((best_h - content_px[0]) // 2, (best_w - content_px[1]) // 2)
    return {
        "side": side,
        "padded_hw": (padded_h, padded_w),
        "rows": rows,
        "cols": cols,
        "pad": pad,
        "crop_axis": crop_axis,
        "content": content,
        "orig_hw": (orig_h, orig_w),
        "patch_px": int(vc.patch_size),
        "best_hw": (int(best_h), int(best_w)),
        "content_px": content_px,
        "paste_px": paste_px,
    }


def _image_token_counts(family: str, config, inputs: Mapping, n_images_hint: int | None):
    """Per image: (count, builder) where builder(positions, image_index) -> (views, always_kept)."""
    out = []
    if family == "llava":
        n = n_images_hint or 0
        for side, extra in _llava_counts(config, n):

            def build(pos, idx, side=side, extra=extra):
                grid = pos[extra:].reshape(side, side)  # (n*n,) -> (rows, cols)
                geo = {"side": side, "image_size": config.vision_config.image_size}  # crop side in px
                return [ViewGrid("llava", idx, grid, None, geo)], pos[:extra]

            out.append((side * side + extra, build))
    elif family == "llava_next":
        sizes = _as_numpy(inputs.get("image_sizes"), "image_sizes").reshape(-1, 2)  # (I, 2) as (H, W)
        for hw in sizes:
            g = _next_image_geometry(config, hw)
            side, rows, cols = g["side"], g["rows"], g["cols"]

            def build(pos, idx, g=g, side=side, rows=rows, cols=cols):
                base = pos[: side * side].reshape(side, side)
                hi = pos[side * side :].reshape(rows, cols + 1)  # (rows, cols + newline)
                return [
                    ViewGrid("next_base", idx, base, None, {"side": side}),
                    ViewGrid("next_highres", idx, hi[:, :cols].copy(), hi[:, cols].copy(), g),
                ], pos[:0]

            out.append((side * side + rows * (cols + 1), build))
    else:  # qwen2_vl
        thw = _as_numpy(inputs.get("image_grid_thw"), "image_grid_thw").reshape(-1, 3)
        m = config.vision_config.spatial_merge_size
        for t, h, w in thw:
            if t != 1:
                raise ValueError(f"image_grid_thw {list(map(int, (t, h, w)))}: only single-frame images are supported")
            if h % m or w % m:
                raise ValueError(f"image_grid_thw {(int(t), int(h), int(w))} not divisible by spatial_merge_size {m}")
            rows, cols = int(h) // m, int(w) // m

            def build(pos, idx, rows=rows, cols=cols):
                return [ViewGrid("qwen", idx, pos.reshape(rows, cols), None, {})], pos[:0]

            out.append((rows * cols, build))
    return out


def token_layout(model_or_config: Any, inputs: Mapping) -> list[SampleLayout]:
    """Layout of every batch row, from the processor outputs (call before ``generate``).

    ``inputs`` needs ``input_ids`` (B, N) and, per family, ``image_sizes`` (LLaVA-NeXT, (I, 2) as
    (H, W)) or ``image_grid_thw`` (Qwen2-VL, (I, 3)). Images are assigned to rows in order, each
    row consuming as many images as its image-token count needs. Raises ``ValueError`` when the
    counts disagree with the grids implied by the config.
    """
    config = _config_of(model_or_config)
    family = _family(config)
    ids = _as_numpy(inputs.get("input_ids"), "input_ids")
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {ids.shape}")
    image_token_id = config.image_token_id
    is_img = ids == image_token_id  # (B, N)
    per_row = is_img.sum(1)
    hint = None
    if family == "llava":
        side, extra = _llava_counts(config, 1)[0]
        per_image = side * side + extra
        bad = [int(c) for c in per_row if c % per_image]
        if bad:
            raise ValueError(
                f"row has {bad[0]} image tokens (id {image_token_id}), not a multiple of the "
                f"{per_image} tokens one image gives ({side}x{side} grid + {extra} CLS)"
            )
        hint = int(per_row.sum()) // per_image
    images = _image_token_counts(family, config, inputs, hint)
    layouts, k = [], 0
    for b in range(ids.shape[0]):
        pos = np.flatnonzero(is_img[b]).astype(np.int64)
        used, views, extra_pos, idxs = 0, [], [], []
        while used < pos.size:
            if k >= len(images):
                raise ValueError(
                    f"row {b} has {pos.size} image tokens but the processor outputs describe only "
                    f"{len(images)} images in total; image_sizes / image_grid_thw do not match input_ids"
                )
            count, build = images[k]
            if used + count > pos.size:
                raise ValueError(
                    f"row {b}: image {k} needs {count} image tokens but only {pos.size - used} remain "
                    f"(row has {pos.size}); the token count disagrees with the image grid"
                )
            v, e = build(pos[used : used + count], k)
            views.extend(v)
            extra_pos.append(e)
            idxs.append(k)
            used += count
            k += 1
        always = np.concatenate(extra_pos) if extra_pos else np.zeros(0, np.int64)
        layouts.append(SampleLayout(family, int(ids.shape[1]), pos, tuple(views), always, tuple(idxs)))
    if k != len(images):
        raise ValueError(
            f"processor outputs describe {len(images)} images but input_ids hold image tokens for {k}"
        )
    return layouts
