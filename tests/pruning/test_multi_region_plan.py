"""Several regions per image in THE region -> token mapping (issue 21): union masks, the budget
spread by area, ragged batches, the builtin ilp / prune entries, and ILP on a tiny LLaVA against a
hand-computed token set and a hand-written masked forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crop.geometry import Region
from crop.pruning import attach_ilp, region_keep_plan, token_layout
from crop.pruning.plan import KeepPlan
from crop.pruning.plugin import decoder_layers
from crop.pruning.region_map import region_list, split_budget_by_area

from pruning_tiny import IMG, build_inputs, build_model

torch.set_num_threads(1)
K = 2
A, B = Region(0, 0, 3, 1), Region(6, 4, 7, 7)  # far apart: their union rectangle is the whole image


def _layout24(rows: int = 1):
    """LLaVA-1.5 layouts of a 24x24 grid (48-px tile, 2-px patches): each block is 3x3 tokens."""
    import transformers as tf

    vc = tf.CLIPVisionConfig(image_size=48, patch_size=2)
    cfg = tf.LlavaConfig(vision_config=vc, text_config=tf.LlamaConfig(vocab_size=100), image_token_id=IMG)
    ids = torch.tensor([[5, 6] + [IMG] * 576 + [7]] * rows)
    return token_layout(cfg, {"input_ids": ids})


def _grid_keep(plan, lay, b=0):
    """Kept cells ``(24, 24)`` of row b's single view."""
    kept = np.ones(lay[b].seq_len, bool)
    kept[plan.drop[b]] = False
    return kept[lay[b].views[0].positions]


def test_region_list_tells_one_region_from_several():
    assert region_list(Region(0, 0, 1, 1)) is None
    assert region_list((0.1, 0.2, 0.5, 0.6)) is None  # a normalized box
    assert region_list([A, B]) == [A, B]
    assert region_list([A]) == [A]
    with pytest.raises(ValueError, match="empty"):
        region_list([])


def test_split_budget_by_area_largest_remainder():
    # areas 1 : 3 -> 16 / 48 exactly; 1 : 1 : 1 of 10 -> 4 3 3 (remainder to the earlier box)
    assert split_budget_by_area(64, [(0, 0, 0.25, 0.25), (0.5, 0, 1, 0.375)]) == [16, 48]
    third = [(0, 0, 0.25, 0.25), (0.5, 0, 0.75, 0.25), (0, 0.5, 0.25, 0.75)]
    assert split_budget_by_area(10, third) == [4, 3, 3]
    # 7 over areas 2 : 1 -> raw 4.67 / 2.33 -> 4 + 2, the larger fraction (.67) gets the last token
    assert split_budget_by_area(7, [(0, 0, 0.5, 0.25), (0.5, 0, 0.75, 0.25)]) == [5, 2]


def test_exact_mode_keeps_the_union_of_the_regions_tokens():
    lay = _layout24()
    plan = region_keep_plan(lay, [[A, B]], llava_geometry="resize")
    want = np.zeros((24, 24), bool)
    want[0:6, 0:12] = True   # A: blocks y 0..1, x 0..3 -> token rows 0..5, cols 0..11
    want[12:24, 18:24] = True  # B: blocks y 4..7, x 6..7 -> rows 12..23, cols 18..23
    np.testing.assert_array_equal(_grid_keep(plan, lay), want)
    assert plan.visual_kept == (72 + 72,)
    union = region_keep_plan(lay, [Region(0, 0, 7, 7)], llava_geometry="resize")
    assert union.visual_kept == (576,)  # what the one-rectangle policy keeps for the same boxes


@pytest.mark.parametrize("budget", [None, 40])
def test_one_element_list_equals_the_region(budget):
    lay = _layout24()
    for geo, wh in (("resize", None), ("center_crop", (300, 200)), ("pad_square", (200, 300))):
        sizes = None if wh is None else [wh]
        one = region_keep_plan(lay, [A], llava_geometry=geo, image_sizes_wh=sizes, budget=budget)
        lst = region_keep_plan(lay, [[A]], llava_geometry=geo, image_sizes_wh=sizes, budget=budget)
        assert all(np.array_equal(x, y) for x, y in zip(one.drop, lst.drop))
        assert one.visual_kept == lst.visual_kept and one.padding_kept == lst.padding_kept


def test_budget_mode_spreads_r_over_the_regions_by_area():
    lay = _layout24()
    # A covers 8 blocks, B 8 blocks -> 32 + 32 of R = 64; each a budget rectangle on its own region
    plan = region_keep_plan(lay, [[A, B]], llava_geometry="resize", budget=64)
    keep = _grid_keep(plan, lay)
    assert plan.visual_kept == (64,)
    assert keep[:12, :12].sum() == 32 and keep[12:, 12:].sum() == 32  # one rectangle near each region
    a_alone = region_keep_plan(lay, [A], llava_geometry="resize", budget=32)
    np.testing.assert_array_equal(keep[:12, :12], _grid_keep(a_alone, lay)[:12, :12])


def test_ragged_batch_mixes_one_region_and_several():
    lay = _layout24(rows=2)
    plan = region_keep_plan(lay, [A, [A, B]], llava_geometry="resize")
    assert plan.visual_kept == (72, 144)
    one = region_keep_plan(_layout24(), [A], llava_geometry="resize")
    np.testing.assert_array_equal(plan.drop[0], one.drop[0])


# ------------------------------------------------------------------ ILP on a tiny LLaVA (4x4 grid)


def _hand_plan(lay):
    """Hand-computed keep set of regions A and B on the tiny LLaVA's 4x4 grid (plain resize).

    A = blocks x 0..3, y 0..1 = [0, 0.5) x [0, 0.25) of the image; token column c covers
    [c/4, (c+1)/4): columns 0, 1 on row 0. B = blocks x 6..7, y 4..7 = [0.75, 1) x [0.5, 1):
    column 3 on rows 2, 3. Flat indices (row * 4 + col): 0, 1, 11, 15.
    """
    keep = []
    for lay_b in lay:
        m = np.zeros(lay_b.num_visual, bool)
        m[[0, 1, 11, 15]] = True  # visual tokens of a one-view LLaVA row are in raster order
        keep.append(m)
    return KeepPlan.from_keep_masks(lay, keep)


def _masked_forward(model, x, keep_positions, k):
    """Reference: layers 0..k-1 on the whole prompt, then only the kept positions (their rotary
    angles and causal order unchanged), the hand rule of ILP (paper Sec. 3.3)."""
    stack, layers = decoder_layers(model)
    got = {}
    h = stack.register_forward_pre_hook(lambda m, a, kw: got.update(kw), with_kwargs=True)
    with torch.no_grad():
        model(**x, use_cache=False)
    h.remove()
    hs = got["inputs_embeds"]  # (1, N, D)
    n = hs.shape[1]
    pos = torch.arange(n)[None]  # (1, N)
    cos, sin = stack.rotary_emb(hs, pos)
    mask = torch.full((n, n), torch.finfo(hs.dtype).min).triu(1)[None, None]  # (1, 1, N, N)
    keep = torch.as_tensor(keep_positions)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            if i == k:
                hs, cos, sin = hs[:, keep], cos[:, keep], sin[:, keep]
                mask = mask[:, :, keep][:, :, :, keep]
            hs = layer(hs, attention_mask=mask, position_embeddings=(cos, sin))
        return model.lm_head(stack.norm(hs))


def test_ilp_with_multi_region_equals_the_hand_computed_masked_reference():
    model = build_model("llava", "eager")
    x = build_inputs("llava", batch=1)
    lay = token_layout(model, x)
    plan = region_keep_plan(lay, [[A, B]], llava_geometry="resize")
    hand = _hand_plan(lay)
    np.testing.assert_array_equal(plan.drop[0], hand.drop[0])
    n = x["input_ids"].shape[1]
    visual = lay[0].visual_positions
    keep_positions = [p for p in range(n) if p not in set(visual.tolist()) or p in set(visual[[0, 1, 11, 15]].tolist())]
    ref = _masked_forward(model, x, keep_positions, K)
    with torch.no_grad(), attach_ilp(model, hand, layer=K):
        out_hand = model(**x).logits
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        out = model(**x).logits
    assert out.shape == ref.shape == (1, len(keep_positions), 100)
    torch.testing.assert_close(out_hand, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    with torch.no_grad(), attach_ilp(model, region_keep_plan(lay, [Region(0, 0, 7, 7)], llava_geometry="resize"),
                                     layer=K):
        union = model(**x).logits
    assert union.shape[1] > out.shape[1]  # the union rectangle keeps every token


@pytest.mark.parametrize("method", ["ilp", "prune"])
def test_builtin_entries_accept_a_list_of_regions_per_row(method):
    from crop.pruning.registry import PruneRequest, get_method

    model = build_model("llava", "sdpa")
    x = build_inputs("llava", batch=2)
    # row 0: one region of 2x2 tokens; row 1: A and B, 2 + 2 tokens (prune needs equal counts per row)
    req = PruneRequest(regions=[Region(0, 0, 3, 3), [A, B]], llava_geometry="resize", layer=K)
    with get_method(method).load()(model, x, req) as run:
        with torch.no_grad():
            model.generate(**run.inputs, max_new_tokens=2, do_sample=False)
    rows = run.rows()
    assert [r["visual_tokens_kept"] for r in rows] == [4, 4] and rows[1]["visual_tokens_in"] == 16


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl"])
def test_union_of_single_region_plans_in_every_family(family):
    """Exact mode: the kept positions of [A, B] are those A keeps plus those B keeps (LLaVA-NeXT:
    base view + high-res view with newlines; Qwen2-VL: merged grid)."""
    model = build_model(family)
    x = build_inputs(family, batch=1)
    lay = token_layout(model, x)
    geo = dict(image_sizes_wh=[(16, 12)], llava_geometry="resize")
    kept = lambda plan: set(range(lay[0].seq_len)) - set(plan.drop[0].tolist())  # noqa: E731
    both = kept(region_keep_plan(lay, [[A, B]], **geo))
    assert both == kept(region_keep_plan(lay, [A], **geo)) | kept(region_keep_plan(lay, [B], **geo))
    assert kept(region_keep_plan(lay, [A], **geo)) < both
