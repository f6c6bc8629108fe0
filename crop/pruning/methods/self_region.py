"""``self``: CROP without a second model -- the region read from the VLM's own attention (issue 25).

During the prefill, at decoder layer ``S < K`` (option ``self_layer``), the attention of the last
prompt token (option ``query_rows``: the last Q prompt tokens, averaged) over the image tokens
is computed from that layer's own q / k projections, as FastV does (:mod:`crop.pruning.fastv`):
one (B, H, Q, N) block of scores, no eager attention for the model, the keys read from the
KV cache the prefill just wrote. Per image, the visual-token attention is spread over the 8x8
blocks of the ORIGINAL image through the one region mapping (:func:`region_map.map_box_to_view`;
a token cell gives its mass to the blocks it shows, in proportion to the shown area; padding
shows no block), summed over the image's views (LLaVA-NeXT: base + high-res). ONE rectangle is
then chosen by the exact search over all 1,296 block rectangles (:mod:`crop.geometry.rect_search`):

* ``mode="mass"`` (default without a budget): the smallest rectangle holding ``mass`` (default
  0.5) of the image's attention mass;
* ``mode="budget"`` (default when the request has a budget R): the rectangle of largest mass
  whose exact keep set has at most R grid cells per image (newlines and a CLS token are not
  counted, as in ILP's budget rectangle).

ILP then prunes from layer K with that region, in the same forward pass: the plan is the exact
keep plan of the chosen region (:func:`region_map.region_keep_plan`, the one region -> token
rule), so ``self`` keeps exactly what ILP keeps when given that rectangle as its region. Rows of
a (ragged) batch get their own regions. Decode steps of a cached ``generate`` reuse the
prefill's plan.

Why S < K: layers before K see every token, so reading the attention there costs one attention
row per layer-S head (plus the block mapping and 1,296 rectangle sums), and pruning still
starts at K. Default S = K - 1, FastV's layer: the cheapest choice that needs no extra layer.
Which S localizes best is a question for real weights (ViCrop reads middle layers; with the
paper's K = 2 only S in {0, 1} are possible); tiny random models can only show that the plumbing
is exact. Option ``relative`` divides by the attention under a generic instruction about the same
image (ViCrop's rel-att; one extra pass per image stopped at S, cached:
:mod:`crop.pruning.methods.self_relative`).

Options (``PruneRequest.options``): ``self_layer`` (int, default K - 1), ``query_rows`` (int,
default 1), ``heads`` ("mean" or a list of head indices, averaged), ``mode`` ("mass" | "budget"),
``mass`` (share in (0, 1], default 0.5), ``freeze`` (bool: keep the first prefill's regions for
later prefills, for an uncached ``generate``), ``relative`` (False; True = ViCrop's generic
instruction, or the instruction text; needs ``request.processor``, the model's frontend).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from crop.compat import cache_of_kwargs
from crop.geometry import all_rects, best_rect_within_budget, smallest_rect_with_share
from crop.pruning import guards
from crop.pruning.attention_rows import last_rows, row_attention
from crop.pruning.layout import SampleLayout, ViewGrid
from crop.pruning.plugin import PruneHandle, check_supported
from crop.pruning.region_map import (
    KeepPlan,
    map_box_to_view,
    region_keep_plan,
    view_keep_mask,
)
from crop.pruning.registry import PruneRequest

GRID = 8
OPTIONS = ("self_layer", "query_rows", "heads", "mode", "mass", "freeze", "relative")


# ----------------------------------------------------------------------------- attention rows
def query_attention(layer: torch.nn.Module, h_in: torch.Tensor, pos_emb, mask, keys=None,
                    query_rows: int = 1) -> torch.Tensor:
    """Per-head attention ``(B, H, Q, N)`` of the last ``Q`` tokens of ``h_in`` (B, N, D) at ``layer``.

    Computed from the layer's own projections (as :func:`crop.pruning.fastv.last_token_attention`,
    kept per head and for several query rows). ``keys`` (B, Hkv, N, Dh), already rotated, is the
    layer's cache entry when the prefill wrote one. ``mask`` is the 4-D mask the layer receives
    (bool or additive) or None (sdpa's implicit causal mask); causality among the Q query rows is
    applied here in either case.
    """
    rows = last_rows(h_in.shape[0], h_in.shape[1], int(query_rows), h_in.device)  # (B, Q)
    return row_attention(layer, h_in, pos_emb, mask, rows, keys)


def reduce_heads(att: torch.Tensor, heads: Any = "mean") -> torch.Tensor:
    """(B, H, Q, N) -> (B, N): mean over the query rows and over all heads or the listed ones."""
    if heads != "mean":
        idx = [int(h) for h in heads]
        if not idx or min(idx) < 0 or max(idx) >= att.shape[1]:
            raise ValueError(f"heads {heads!r} must be 'mean' or indices in 0..{att.shape[1] - 1}")
        att = att[:, idx]
    return att.mean(dim=(1, 2))


# ----------------------------------------------------------------------------- tokens -> blocks
def _axis_share(lo: float, hi: float, n: int) -> np.ndarray:
    """Length of [lo, hi] inside each of ``n`` equal cells of [0, 1], in cell widths ``(n,)``."""
    edges = np.arange(n + 1) / n
    return np.clip(np.minimum(hi, edges[1:]) - np.maximum(lo, edges[:-1]), 0.0, None) * n


def view_block_weights(view: ViewGrid, image_wh: tuple[int, int] | None, llava_geometry: str,
                       grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """``(P_y (grid, rows), P_x (grid, cols))``: the share of each token row / column given to each
    block row / column of the original image.

    Block ``i`` of the image is mapped onto the view with the one region mapping
    (:func:`crop.pruning.region_map.map_box_to_view`; the mapping is separable, so the diagonal
    block ``(i, i)`` gives both axes). A token cell's mass is split over the blocks in proportion
    to the part of the cell each block covers; the part showing padding gets nothing, so a cell
    that shows some image gives all its mass to image blocks and a pure padding cell gives none.
    """
    rows, cols = view.grid_hw
    w_y, w_x = np.zeros((grid, rows)), np.zeros((grid, cols))
    for i in range(grid):
        x1, y1, x2, y2 = map_box_to_view((i / grid, i / grid, (i + 1) / grid, (i + 1) / grid),
                                         view, image_wh, llava_geometry)
        w_x[i], w_y[i] = _axis_share(x1, x2, cols), _axis_share(y1, y2, rows)

    def normalize(w: np.ndarray) -> np.ndarray:
        shown = w.sum(0, keepdims=True)  # (1, cells): image part of each cell
        return np.divide(w, shown, out=np.zeros_like(w), where=shown > 1e-12)

    return normalize(w_y), normalize(w_x)


def image_block_scores(lay: SampleLayout, image_index: int, visual_att: np.ndarray,
                       image_wh: tuple[int, int] | None, llava_geometry: str, grid: int = GRID) -> np.ndarray:
    """Attention mass of one image on its ``(grid, grid)`` blocks (rows = y), summed over its views.

    ``visual_att`` (V,) is the attention on ``lay.visual_positions``. Tokens on no grid (a CLS,
    LLaVA-NeXT newlines) show no block and are left out.
    """
    where = {int(p): i for i, p in enumerate(lay.visual_positions)}
    out = np.zeros((grid, grid))
    for view in lay.views:
        if view.image_index != image_index:
            continue
        cells = visual_att[np.vectorize(where.__getitem__, otypes=[np.int64])(view.positions)]  # (rows, cols)
        p_y, p_x = view_block_weights(view, image_wh, llava_geometry, grid)
        out += p_y @ cells @ p_x.T  # (grid, rows) @ (rows, cols) @ (cols, grid)
    return out


def rect_cell_costs(lay: SampleLayout, image_index: int, image_wh: tuple[int, int] | None,
                    llava_geometry: str, grid: int = GRID) -> np.ndarray:
    """Grid cells the exact keep set of every rectangle of ``all_rects(grid)`` holds, ``(1296,)``.

    Uses :func:`crop.pruning.region_map.view_keep_mask` per axis span: an exact keep mask is the
    product of the token rows a y-span overlaps and the token columns an x-span overlaps. The
    whole image keeps every cell (the identity, padding included), as in ILP. Cached per view
    geometry and image size (a benchmark's images mostly share a few sizes).
    """
    costs = np.zeros(len(all_rects(grid)))
    for view in (v for v in lay.views if v.image_index == image_index):
        costs += _view_rect_costs(_ViewKey(view), None if image_wh is None else tuple(image_wh), llava_geometry, grid)
    return costs


class _ViewKey:
    """A view reduced to what the region mapping reads (kind, grid, geometry), hashable for caching."""

    def __init__(self, view: ViewGrid):
        self.view = view
        self.key = (view.kind, view.grid_hw, tuple(sorted(view.geometry.items())))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _ViewKey) and self.key == other.key


@lru_cache(maxsize=512)
def _view_rect_costs(vk: _ViewKey, image_wh, llava_geometry: str, grid: int) -> np.ndarray:
    view = vk.view
    spans = [(a, b) for a in range(grid) for b in range(a, grid)]
    rows_of, cols_of = {}, {}
    for a, b in spans:
        mx = view_keep_mask((a / grid, 0.0, (b + 1) / grid, 1.0), view, image_wh, llava_geometry,
                            whole_is_identity=False)
        my = view_keep_mask((0.0, a / grid, 1.0, (b + 1) / grid), view, image_wh, llava_geometry,
                            whole_is_identity=False)
        cols_of[a, b], rows_of[a, b] = int(mx.any(0).sum()), int(my.any(1).sum())
    rects = all_rects(grid).tolist()
    out = np.array([rows_of[y0, y1] * cols_of[x0, x1] for x0, y0, x1, y1 in rects], dtype=np.float64)
    out[rects.index([0, 0, grid - 1, grid - 1])] = view.grid_hw[0] * view.grid_hw[1]  # whole image: identity
    out.setflags(write=False)
    return out


# ----------------------------------------------------------------------------- the selection
def choose_regions(layouts: Sequence[SampleLayout], visual_att: Sequence[np.ndarray], *,
                   image_sizes_wh: Sequence[tuple[int, int]] | None, llava_geometry: str,
                   mode: str, mass: float, budget: int | None) -> list[dict]:
    """One choice per image (batch order): ``{"region", "share", "block_scores"}``."""
    out = []
    for lay, att in zip(layouts, visual_att):
        for img in lay.image_indices:
            wh = image_sizes_wh[img] if image_sizes_wh is not None else None
            scores = image_block_scores(lay, img, att, wh, llava_geometry)
            if mode == "mass":
                region, share = smallest_rect_with_share(scores, mass)
            else:
                region, share = best_rect_within_budget(scores, rect_cell_costs(lay, img, wh, llava_geometry), budget)
            out.append({"region": region, "share": share, "block_scores": scores})
    return out


def _repeat_plan(plan: KeepPlan, rep: int) -> KeepPlan:
    """The plan of B rows for a batch of B * rep rows (generate's expansion, each row repeated)."""
    if rep == 1:
        return plan

    def r(t):
        return None if t is None else tuple(v for v in t for _ in range(rep))

    return KeepPlan(plan.prompt_len, r(plan.drop), r(plan.visual_total), r(plan.visual_kept), r(plan.visual),
                    r(plan.padding_total), r(plan.padding_kept))


class SelfRegionHandle(PruneHandle):
    """ILP from layer K whose regions are chosen at layer S of every prefill from the model's attention.

    After a prefill: ``attention`` (B, H, Q, N) per-head rows captured at S, ``choices`` (one
    dict per image: region, share, block_scores), ``plan`` (the exact keep plan of the regions).
    """

    kind = "self-region ILP"

    def __init__(self, model, layouts: Sequence[SampleLayout], *, layer: int = 2, self_layer: int | None = None,
                 image_sizes_wh=None, llava_geometry: str = "center_crop", mode: str = "mass", mass: float = 0.5,
                 budget: int | None = None, query_rows: int = 1, heads: Any = "mean", freeze: bool = False,
                 baseline: Sequence[np.ndarray] | None = None):
        check_supported(model, layer)
        s = layer - 1 if self_layer is None else self_layer
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < layer:
            raise ValueError(f"self_layer S={s!r} must be an int with 0 <= S < K={layer} (the region is read "
                             "before pruning starts)")
        if mode not in ("mass", "budget"):
            raise ValueError(f"mode {mode!r} must be 'mass' or 'budget'")
        if mode == "budget" and (budget is None or budget < 0):
            raise ValueError("mode 'budget' needs a budget R >= 0 (visual tokens per image)")
        if not 0.0 < float(mass) <= 1.0:
            raise ValueError(f"mass share must be in (0, 1], got {mass}")
        if isinstance(query_rows, bool) or not isinstance(query_rows, int) or query_rows < 1:
            raise ValueError(f"query_rows must be an int >= 1, got {query_rows!r}")
        self.layouts = list(layouts)
        self.self_layer, self.mode, self.mass, self.budget = s, mode, float(mass), budget
        self.query_rows, self.heads, self.freeze = query_rows, heads, bool(freeze)
        self.image_sizes_wh, self.llava_geometry = image_sizes_wh, llava_geometry
        self.baseline = None if baseline is None else [np.asarray(v, dtype=np.float64) for v in baseline]
        self.visual_scores: list[np.ndarray] | None = None  # per row, what the block mapping received
        self._ref = guards.ref_of_layouts(self.layouts)
        super().__init__(model, None, layer)
        self.attention: torch.Tensor | None = None
        self.choices: list[dict] | None = None
        self._captured = None
        read = self._layers[s]
        self._hooks.append(read.register_forward_pre_hook(self._pre_read, with_kwargs=True))
        self._hooks.append(read.register_forward_hook(self._post_read, with_kwargs=True))

    def __repr__(self) -> str:
        return f"a self-region handle (S={self.self_layer}, K={self.layer}, mode={self.mode})"

    def _prompt_ref(self):
        return self._ref, self.layouts

    def _plan_for_prefill(self) -> KeepPlan:
        if self.plan is None:
            raise RuntimeError("self-region selection missing: layer S did not run a prefill")
        return self.plan

    def _pre_read(self, module, args, kwargs):
        cache = cache_of_kwargs(kwargs)
        prefill = cache is None or cache.get_seq_length(self.self_layer) == 0
        self._captured = None
        if prefill and not (self.freeze and self.plan is not None):
            h = args[0] if args else kwargs["hidden_states"]
            self._captured = (h, kwargs.get("position_embeddings"), kwargs.get("attention_mask"), cache)

    def _post_read(self, module, args, kwargs, output):
        if self._captured is None:
            return None
        h, pe, mask, cache = self._captured
        self._captured = None
        keys = None
        if cache is not None and len(getattr(cache, "layers", ())) > self.self_layer:
            k = getattr(cache.layers[self.self_layer], "keys", None)
            if k is not None and k.shape[-2] == h.shape[1]:
                keys = k  # (B, Hkv, N, Dh) written by this prefill
        with torch.no_grad():
            att = query_attention(module, h, pe, mask, keys, self.query_rows)  # (B, H, Q, N)
        self.attention = att
        row = reduce_heads(att, self.heads).cpu().numpy()  # (B, N)
        rep = row.shape[0] // len(self.layouts)
        vis = [row[b * rep][lay.visual_positions] for b, lay in enumerate(self.layouts)]  # (V_b,) each
        if self.baseline is not None:  # ViCrop's relative attention (crop.pruning.methods.self_relative)
            vis = [v / np.maximum(g, 1e-8) for v, g in zip(vis, self.baseline)]
        self.visual_scores = vis
        self.choices = choose_regions(self.layouts, vis, image_sizes_wh=self.image_sizes_wh,
                                      llava_geometry=self.llava_geometry, mode=self.mode, mass=self.mass,
                                      budget=self.budget)
        plan = region_keep_plan(self.layouts, [c["region"] for c in self.choices],
                                image_sizes_wh=self.image_sizes_wh, llava_geometry=self.llava_geometry)
        self.plan = _repeat_plan(plan, rep)
        return None

    def row_choices(self) -> list[list[dict]]:
        """The choices grouped per batch row (one entry per image of the row)."""
        if self.choices is None:
            return [[] for _ in self.layouts]
        out, k = [], 0
        for lay in self.layouts:
            out.append(self.choices[k : k + len(lay.image_indices)])
            k += len(lay.image_indices)
        return out


def attach_self_region(model, layouts: Sequence[SampleLayout], **kwargs) -> SelfRegionHandle:
    """CROP-ILP from layer K with regions read from the model's own layer-S attention (see module doc)."""
    return SelfRegionHandle(model, layouts, **kwargs)


def _report_fields(choices: list[dict]) -> dict:
    """Per-row report fields: the region(s), the attention share inside, 8x8 block scores (share of mass)."""
    def one(c: dict) -> tuple[list[int], float, list[list[float]]]:
        s = c["block_scores"]
        total = float(s.sum())
        norm = s / total if total > 0 else s
        return list(c["region"]), round(float(c["share"]), 6), np.round(norm, 5).tolist()

    parts = [one(c) for c in choices]
    if len(parts) == 1:
        region, share, scores = parts[0]
        return {"region_used": region, "attention_share": share, "block_scores": scores}
    return {"region_used": [p[0] for p in parts], "attention_share": [p[1] for p in parts],
            "block_scores": [p[2] for p in parts]}


@contextmanager
def attach(model: Any, inputs: dict, req: PruneRequest) -> Iterator[Any]:
    """Registry entry point (:mod:`crop.pruning.registry`): ``self`` needs no regions, R is optional."""
    from crop.pruning import token_layout
    from crop.pruning.methods.builtin import Run, num_decoder_layers, stage_rows

    opts = dict(req.options)
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method 'self'; known: {list(OPTIONS)}")
    mode = opts.get("mode", "budget" if req.budget is not None else "mass")
    layouts = token_layout(model, inputs)
    layers = num_decoder_layers(model)
    self_layer = opts.get("self_layer")
    query_rows, heads = opts.get("query_rows", 1), opts.get("heads", "mean")
    baseline = None
    relative = opts.get("relative", False)
    if relative:
        from crop.pruning.methods.self_relative import GENERIC_PROMPT, generic_visual_attention

        text = relative if isinstance(relative, str) else GENERIC_PROMPT
        s = req.layer - 1 if self_layer is None else self_layer
        check_supported(model, req.layer)
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < req.layer:
            raise ValueError(f"self_layer S={s!r} must be an int with 0 <= S < K={req.layer}")
        baseline = generic_visual_attention(model, inputs, layouts, req.processor, text, self_layer=s,
                                            query_rows=query_rows, heads=heads)
    handle = attach_self_region(
        model, layouts, layer=req.layer, self_layer=self_layer, image_sizes_wh=req.image_sizes_wh,
        llava_geometry=req.llava_geometry or "center_crop", mode=mode, mass=opts.get("mass", 0.5),
        budget=req.budget, query_rows=query_rows, heads=heads, freeze=opts.get("freeze", False), baseline=baseline)
    with handle:
        def rows() -> list[dict]:
            if handle.plan is None:
                raise RuntimeError("method 'self': rows() read before a prefill chose the regions")
            kept = _kept_per_row(handle.plan, len(layouts))
            base = stage_rows([lay.num_visual for lay in layouts], kept, req.layer, layers)
            return [{**r, **_report_fields(c), "self_layer": handle.self_layer}
                    for r, c in zip(base, handle.row_choices())]
        yield Run(inputs, rows)


def _kept_per_row(plan: KeepPlan, n_rows: int) -> list[int]:
    rep = plan.batch_size // n_rows
    return [int(plan.visual_kept[b * rep]) for b in range(n_rows)]


__all__ = ["SelfRegionHandle", "attach", "attach_self_region", "choose_regions", "image_block_scores",
           "query_attention", "rect_cell_costs", "reduce_heads", "view_block_weights"]
