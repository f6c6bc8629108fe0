"""``self``: the region read from the model's own layer-S attention, then ILP from layer K (issue 25).

References not written by the code under test:

* eager attention maps of the real transformers model classes (``output_attentions=True``);
* planted attention: layer S's q / k projections are set by hand so that the last prompt token
  attends (almost only) to the grid tokens that ILP keeps for a chosen block rectangle R
  (``region_keep_plan``, the one region -> token rule); ``self`` must return R and its logits
  must equal ILP given R (``attach_ilp_method``, the registry's ILP);
* hand-computed block scores for a plain resize (a 4x4 token cell covers 2x2 blocks of 8x8);
* batch-1 runs for the rows of a ragged (left-padded) batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crop.geometry import Region, all_rects
from crop.pruning import region_keep_plan, token_layout, view_keep_mask
from crop.pruning.methods.builtin import attach_ilp_method
from crop.pruning.methods.self_region import (
    attach_self_region,
    image_block_scores,
    rect_cell_costs,
)
from crop.pruning.plugin import decoder_layers
from crop.pruning.region_map import to_box_norm
from crop.pruning.registry import PruneRequest, get_method

from pruning_tiny import FAMILIES, IMG, build_inputs, build_model

torch.set_num_threads(1)
K, S = 2, 1
LLAVA_WH = (16, 12)  # original image (W, H) of the tiny LLaVA-1.5 inputs
NEXT_HW = [(10, 19), (19, 10), (12, 12)]
HEAD_DIM = 8  # tiny text config: hidden 32 / 4 heads


# ----------------------------------------------------------------------------- helpers
def _grid_positions(lay) -> np.ndarray:
    return np.sort(np.concatenate([v.positions.ravel() for v in lay.views]))


def _ragged(family: str):
    """Two one-image rows of different lengths, left-padded (pad id 0, attention_mask 0)."""
    sizes = NEXT_HW[:2] if family == "llava_next" else [None, None]
    parts = [build_inputs(family, 1, seed=3 + i, sizes_hw=None if s is None else [s], prefix=2 + 3 * i)
             for i, s in enumerate(sizes)]
    n = max(p["input_ids"].shape[1] for p in parts)
    ids = torch.zeros(2, n, dtype=torch.long)
    att = torch.zeros(2, n, dtype=torch.long)
    for b, p in enumerate(parts):
        m = p["input_ids"].shape[1]
        ids[b, n - m:] = p["input_ids"][0]
        att[b, n - m:] = 1
    out = {"input_ids": ids, "attention_mask": att}
    if family == "llava":
        out["pixel_values"] = torch.cat([p["pixel_values"] for p in parts])
    elif family == "llava_next":
        npatch = max(p["pixel_values"].shape[1] for p in parts)
        pv = torch.zeros(2, npatch, 3, 8, 8)
        for b, p in enumerate(parts):
            pv[b, : p["pixel_values"].shape[1]] = p["pixel_values"][0]
        out["pixel_values"] = pv
        out["image_sizes"] = torch.cat([p["image_sizes"] for p in parts])
    else:
        out["pixel_values"] = torch.cat([p["pixel_values"] for p in parts])
        out["image_grid_thw"] = torch.cat([p["image_grid_thw"] for p in parts])
        out["mm_token_type_ids"] = (ids == IMG).int()
    return out, parts


# ----------------------------------------------------------------------------- attention capture
@pytest.mark.parametrize("family", FAMILIES)
def test_captured_rows_equal_eager_attention_per_head(family):
    """Per head and for 3 query rows, on a ragged batch (padding masked), at layer S."""
    model = build_model(family, "eager")
    x, _ = _ragged(family)
    lay = token_layout(model, x)
    with torch.no_grad():
        eager = model(**x, output_attentions=True).attentions[S]  # (B, H, N, N)
    wh = [LLAVA_WH] * 2
    with torch.no_grad(), attach_self_region(model, lay, layer=K, self_layer=S, query_rows=3,
                                             image_sizes_wh=wh) as h:
        model(**x)
    assert h.attention.shape == (2, eager.shape[1], 3, x["input_ids"].shape[1])
    torch.testing.assert_close(h.attention, eager[:, :, -3:, :].float(), atol=1e-6, rtol=1e-5)
    assert torch.all(h.attention[1, :, :, x["attention_mask"][1] == 0] == 0)  # left padding gets nothing


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_rows_under_sdpa_equal_eager_attention(family):
    """Unpadded sdpa may hand the layer no mask at all (implicit causal): the 3 query rows must
    still be causal. Reference: the eager map of the same weights."""
    x = build_inputs(family, 1)
    with torch.no_grad():
        eager = build_model(family, "eager")(**x, output_attentions=True).attentions[S]  # (1, H, N, N)
    model = build_model(family, "sdpa")
    with torch.no_grad(), attach_self_region(model, token_layout(model, x), layer=K, self_layer=S, query_rows=3,
                                             image_sizes_wh=[LLAVA_WH]) as h:
        model(**x)
    torch.testing.assert_close(h.attention, eager[:, :, -3:, :].float(), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- block scores
def test_block_scores_of_a_plain_resize_by_hand():
    """LLaVA-1.5 'resize': the 4x4 token grid covers the image evenly, each cell = 2x2 blocks."""
    model = build_model("llava")
    lay = token_layout(model, build_inputs("llava", 1))[0]
    view = lay.views[0]
    att = np.zeros(lay.num_visual)
    where = {int(p): i for i, p in enumerate(lay.visual_positions)}
    att[where[int(view.positions[1, 2])]] = 0.6
    att[where[int(view.positions[3, 0])]] = 0.2
    got = image_block_scores(lay, 0, att, LLAVA_WH, "resize")
    want = np.zeros((8, 8))
    want[2:4, 4:6] = 0.6 / 4
    want[6:8, 0:2] = 0.2 / 4
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_block_scores_center_crop_split_by_shown_area():
    """16x12 image, centre crop: the crop shows x in [0.1, 0.9]; cell column 0 covers x 0.1..0.3,
    i.e. 0.025 of block 0 (0.0..0.125), all of block 1 (0.125..0.25) and 0.05 of block 2."""
    model = build_model("llava")
    lay = token_layout(model, build_inputs("llava", 1))[0]
    view = lay.views[0]
    att = np.zeros(lay.num_visual)
    att[list(lay.visual_positions).index(int(view.positions[0, 0]))] = 1.0
    got = image_block_scores(lay, 0, att, LLAVA_WH, "center_crop")
    np.testing.assert_allclose(got[:2, :3].sum(0), [0.025 / 0.2, 0.125 / 0.2, 0.05 / 0.2], atol=1e-9)
    np.testing.assert_allclose(got[:2].sum(1), [0.5, 0.5], atol=1e-9)  # rows: 12 px -> 8, no crop in y
    assert got.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("family,geometry", [("llava", "center_crop"), ("llava", "pad_square"), ("llava", "resize"),
                                             ("llava_next", None), ("qwen2_vl", None)])
def test_rect_costs_equal_the_plans_grid_cells(family, geometry):
    """The budget search's cost of a rectangle = grid cells region_keep_plan keeps for it."""
    model = build_model(family)
    x = build_inputs(family, 1, sizes_hw=[NEXT_HW[0]] if family == "llava_next" else None)
    lay = token_layout(model, x)[0]
    geo = geometry or "center_crop"
    costs = rect_cell_costs(lay, 0, LLAVA_WH, geo)
    grid = _grid_positions(lay)
    rng = np.random.default_rng(0)
    full = [i for i, r in enumerate(all_rects().tolist()) if r == [0, 0, 7, 7]]
    for i in list(rng.choice(1296, 60, replace=False)) + full:
        plan = region_keep_plan([lay], [Region(*all_rects()[i])], image_sizes_wh=[LLAVA_WH], llava_geometry=geo)
        kept = np.setdiff1d(lay.visual_positions, plan.drop[0])
        assert costs[i] == np.isin(kept, grid).sum(), tuple(all_rects()[i])


# ----------------------------------------------------------------------------- planted attention
def _blocks_in(r: Region):
    return {(x, y) for x in range(r.x_min, r.x_max + 1) for y in range(r.y_min, r.y_max + 1)}


def _aligned_rects(lay, wh, geometry) -> list[Region]:
    """Rectangles R whose kept grid cells show no block outside R and each of whose blocks is
    shown by some cell: attention on exactly those cells can only mean R (token resolution)."""
    views = lay.views

    def cells(box):
        return [view_keep_mask(box, v, wh, geometry, whole_is_identity=False) for v in views]

    block_cells = {(x, y): cells(to_box_norm(Region(x, y, x, y))) for x in range(8) for y in range(8)}
    out = []
    for r in all_rects().tolist():
        reg = Region(*r)
        if reg == Region(0, 0, 7, 7):
            continue
        inside = cells(to_box_norm(reg))
        if not all(any(m.any() for m in block_cells[b]) for b in _blocks_in(reg)):
            continue  # a block of R shows on no token: attention cannot point at it
        outside = [b for b in block_cells if b not in _blocks_in(reg)]
        if all(not (inside[i] & block_cells[b][i]).any() for b in outside for i in range(len(views))):
            out.append(reg)
    return out


class Planted:
    """Layer S's q / k set so the last token attends to ``positions`` only.

    A pre-hook on layer S writes a marker ``M`` into hidden dim 0 of the planted tokens and dim 1
    of the last token; a forward hook removes it from the layer's output (the residual stream is
    unchanged after layer S). q_proj / k_proj of layer S read only those dims into the last RoPE
    pair of each head, whose frequency is set to 0, so q.k is the same for every planted token
    whatever its position, ~C^2 * hidden / sqrt(head_dim) above the rest.
    """

    M, C = 1e5, 2.5

    def __init__(self, model, positions_per_row, prompt_len):
        self.pos, self.n = positions_per_row, prompt_len
        stack, layers = decoder_layers(model)
        rotary = getattr(stack, "rotary_emb")
        rotary.inv_freq[-1] = 0.0
        layer = layers[S]
        att = layer.self_attn
        j = HEAD_DIM // 2 - 1
        with torch.no_grad():
            for proj, dim in ((att.q_proj, 1), (att.k_proj, 0)):
                proj.weight.zero_()
                if proj.bias is not None:
                    proj.bias.zero_()
                for head in range(proj.weight.shape[0] // HEAD_DIM):
                    proj.weight[head * HEAD_DIM + j, dim] = self.C
        self.hooks = [layer.register_forward_pre_hook(self._add, with_kwargs=True),
                      layer.register_forward_hook(self._remove, with_kwargs=True)]

    def _delta(self, h):
        d = torch.zeros_like(h)
        for b, pos in enumerate(self.pos):
            d[b, torch.as_tensor(pos), 0] = self.M
            d[b, -1, 1] = self.M
        return d

    def _add(self, module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        if h.shape[1] != self.n:
            return None  # decode step
        h = h + self._delta(h)
        if args:
            return (h,) + tuple(args[1:]), kwargs
        kwargs["hidden_states"] = h
        return args, kwargs

    def _remove(self, module, args, kwargs, output):
        h = output[0] if isinstance(output, tuple) else output
        if h.shape[1] != self.n:
            return None
        h = h - self._delta(h)
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    def remove(self):
        for hk in self.hooks:
            hk.remove()


def _planted_cases():
    cases = [("llava", g, None) for g in ("center_crop", "pad_square", "resize")]
    cases += [("llava_next", "center_crop", hw) for hw in NEXT_HW]
    cases += [("qwen2_vl", "center_crop", (12, 16)), ("qwen2_vl", "center_crop", (16, 24))]
    return cases


@pytest.mark.parametrize("family,geometry,hw", _planted_cases())
def test_planted_attention_gives_that_rectangle_and_ilps_logits(family, geometry, hw):
    model = build_model(family, "sdpa")
    x = build_inputs(family, 1, sizes_hw=None if hw is None else [hw])
    lay = token_layout(model, x)
    wh = [LLAVA_WH]
    rects = _aligned_rects(lay[0], wh[0], geometry)
    assert rects, "no token-aligned rectangle for this geometry"
    # a few rectangles of different sizes: largest, smallest, and one in between (deterministic)
    by_area = sorted(rects, key=lambda r: (r.width * r.height, r))
    chosen = {by_area[0], by_area[len(by_area) // 2], by_area[-1]}
    grid = _grid_positions(lay[0])
    kw = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    for region in sorted(chosen):
        plan = region_keep_plan(lay, [region], image_sizes_wh=wh, llava_geometry=geometry)
        kept = np.setdiff1d(lay[0].visual_positions, plan.drop[0])
        planted = kept[np.isin(kept, grid)]  # grid cells only (no newline / CLS)
        model = build_model(family, "sdpa")
        plant = Planted(model, [planted], x["input_ids"].shape[1])
        try:
            with torch.no_grad():
                with attach_self_region(model, lay, layer=K, self_layer=S, image_sizes_wh=wh,
                                        llava_geometry=geometry, mode="mass", mass=0.999) as h:
                    got = model.generate(**x, **kw)
                assert h.choices[0]["region"] == region, (region, h.choices[0]["region"])
                assert h.choices[0]["share"] > 0.999
                # budget mode with R = the rectangle's grid cells finds the same rectangle
                with attach_self_region(model, lay, layer=K, self_layer=S, image_sizes_wh=wh,
                                        llava_geometry=geometry, mode="budget", budget=int(planted.size)) as hb:
                    model(**x)
                assert hb.choices[0]["region"] == region
                req = PruneRequest(layer=K, regions=[region], image_sizes_wh=wh, llava_geometry=geometry)
                with attach_ilp_method(model, x, req):
                    want = model.generate(**x, **kw)
                other = next(c for c in (Region(0, 0, 0, 0), Region(7, 7, 7, 7), Region(0, 7, 0, 7)) if not np.array_equal(
                    region_keep_plan(lay, [c], image_sizes_wh=wh, llava_geometry=geometry).drop[0], plan.drop[0]))
                req_other = PruneRequest(layer=K, regions=[other], image_sizes_wh=wh, llava_geometry=geometry)
                with attach_ilp_method(model, x, req_other):
                    elsewhere = model(**x).logits[0, -1]
        finally:
            plant.remove()
        assert torch.equal(got.sequences, want.sequences)
        for a, b in zip(got.logits, want.logits):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        assert not torch.allclose(got.logits[0][0], elsewhere, atol=1e-4)  # the region matters


# ----------------------------------------------------------------------------- batches, removal, registry
@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_batch_equals_batch_one_per_row(family):
    model = build_model(family, "sdpa")
    x, parts = _ragged(family)
    lay = token_layout(model, x)
    kw = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    opts = dict(layer=K, self_layer=S, mode="mass", mass=0.6, query_rows=2)
    with torch.no_grad(), attach_self_region(model, lay, image_sizes_wh=[LLAVA_WH] * 2, **opts) as h:
        batch = model.generate(**x, **kw)
    regions = [c["region"] for c in h.choices]
    assert regions[0] != regions[1] or family != "llava"  # rows really keep their own regions here
    for b, p in enumerate(parts):
        lay1 = token_layout(model, p)
        with torch.no_grad(), attach_self_region(model, lay1, image_sizes_wh=[LLAVA_WH], **opts) as h1:
            one = model.generate(**p, **kw)
        assert h1.choices[0]["region"] == regions[b]
        assert h1.plan.visual_kept[0] == h.plan.visual_kept[b]
        assert torch.equal(one.sequences[0, p["input_ids"].shape[1]:], batch.sequences[b, x["input_ids"].shape[1]:])
        for a, c in zip(one.logits, batch.logits):
            torch.testing.assert_close(a[0], c[b], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_remove_restores_the_model(family):
    model = build_model(family, "sdpa")
    x = build_inputs(family, 1)
    with torch.no_grad():
        before = model(**x).logits
        with attach_self_region(model, token_layout(model, x), layer=K, image_sizes_wh=[LLAVA_WH],
                                mode="budget", budget=4):
            pruned = model(**x).logits
        after = model(**x).logits
    assert pruned.shape[1] < before.shape[1]
    assert torch.equal(before, after)
    _, layers = decoder_layers(model)
    assert all(not lyr._forward_pre_hooks and not lyr._forward_hooks for lyr in layers)
    assert not model._forward_pre_hooks


@pytest.mark.parametrize("family", FAMILIES)
def test_registry_entry_reports_region_and_share(family):
    model = build_model(family, "sdpa")
    x = build_inputs(family, 1)
    spec = get_method("self")
    assert not spec.needs_region
    req = PruneRequest(layer=K, budget=6, image_sizes_wh=[LLAVA_WH], llava_geometry="pad_square",
                       options={"self_layer": 0, "query_rows": 2, "heads": [0, 3]})
    with torch.no_grad(), spec.load()(model, x, req) as run:
        out = model.generate(**run.inputs, max_new_tokens=2, do_sample=False)
    row = run.rows()[0]
    assert out.shape[1] == x["input_ids"].shape[1] + 2
    region = Region(*row["region_used"]).check(8)
    plan = region_keep_plan(token_layout(model, x), [region], image_sizes_wh=[LLAVA_WH], llava_geometry="pad_square")
    assert row["visual_tokens_kept"] == plan.visual_kept[0]
    assert row["stages"] == [[K, plan.visual_kept[0]]] and row["self_layer"] == 0
    scores = np.array(row["block_scores"])
    assert scores.shape == (8, 8) and scores.sum() == pytest.approx(1.0, abs=1e-3)
    inside = scores[region.y_min:region.y_max + 1, region.x_min:region.x_max + 1].sum()
    assert row["attention_share"] == pytest.approx(inside, abs=1e-3)


@pytest.mark.parametrize("bad,match", [({"self_layer": 2}, "0 <= S < K"), ({"mode": "top"}, "mode"),
                                       ({"mass": 0.0}, "share"), ({"colour": 1}, "unknown option"),
                                       ({"mode": "budget"}, "budget")])
def test_bad_options_are_refused(bad, match):
    model = build_model("llava")
    x = build_inputs("llava", 1)
    with pytest.raises(ValueError, match=match):
        with get_method("self").load()(model, x, PruneRequest(layer=K, options=bad, image_sizes_wh=[LLAVA_WH])):
            pass
    _, layers = decoder_layers(model)
    assert all(not lyr._forward_pre_hooks for lyr in layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generate_equals_frozen_uncached(family):
    """Decode steps reuse the prefill's regions; an uncached generate with ``freeze`` reproduces it."""
    model = build_model(family, "sdpa")
    x = build_inputs(family, 1)
    lay = token_layout(model, x)
    kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    opts = dict(layer=K, image_sizes_wh=[LLAVA_WH], mode="budget", budget=5)
    with torch.no_grad():
        with attach_self_region(model, lay, **opts) as h:
            cached = model.generate(**x, **kw)
        with attach_self_region(model, lay, freeze=True, **opts) as h2:
            uncached = model.generate(**x, use_cache=False, **kw)
    assert h2.choices[0]["region"] == h.choices[0]["region"]
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_two_images_in_one_row_get_one_region_each():
    """LLaVA-1.5 row with two images: one choice per image, the plan is the two regions' plan."""
    model = build_model("llava", "sdpa")
    one = build_inputs("llava", 2, seed=5)
    ids = torch.cat([one["input_ids"][0], one["input_ids"][1]])[None]  # (1, 2 N): two image blocks
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": one["pixel_values"]}
    lay = token_layout(model, x)
    assert lay[0].image_indices == (0, 1)
    wh = [LLAVA_WH, (12, 16)]
    req = PruneRequest(layer=K, budget=4, image_sizes_wh=wh, llava_geometry="center_crop")
    with torch.no_grad(), get_method("self").load()(model, x, req) as run:
        model(**x)
    row = run.rows()[0]
    regions = [Region(*r) for r in row["region_used"]]
    assert len(regions) == 2 and len(row["attention_share"]) == 2 and np.array(row["block_scores"]).shape == (2, 8, 8)
    plan = region_keep_plan(lay, regions, image_sizes_wh=wh, llava_geometry="center_crop")
    assert row["visual_tokens_kept"] == plan.visual_kept[0] <= 8
