"""One region -> token mapping for ILP and PLC, and the padding rule (issue 17, items 4 and padding).

PLC's context mask (``crop.models.llava_plc.context_masks``) must be ILP's exact keep mask
(``crop.pruning.region_keep_plan`` on the layout ``token_layout`` reads from a real
``LlavaConfig``) for every region, image size and LLaVA-1.5 view. Before the fix PLC used
continuous formulas (fractional pad offset, untruncated centre-crop size) and disagreed in ~7% of
random cases; the processors' integer arithmetic itself is checked against real processor pixels
in ``test_real_processors.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crop.geometry import Region, full_region
from crop.models.llava_plc import context_masks
from crop.pruning import region_keep_plan, token_layout

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GEOMETRY = {"pad": "pad_square", "center_crop": "center_crop", "resize": "resize"}


def _llava_config(tile_px: int, patch: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    return LlavaConfig(vision_config=CLIPVisionConfig(image_size=tile_px, patch_size=patch, hidden_size=8,
                                                      intermediate_size=8, num_attention_heads=1),
                       text_config=LlamaConfig(hidden_size=8, num_attention_heads=1, num_key_value_heads=1,
                                               intermediate_size=8, vocab_size=128), image_token_id=99)


CONFIGS = {336: _llava_config(336, 14), 48: _llava_config(48, 2)}  # LLaVA-1.5 (24x24) and the tiny PLC tile


def _ilp_mask(region, wh, view, tile_px):
    cfg = CONFIGS[tile_px]
    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    ids = torch.tensor([[1, 2] + [99] * side * side + [3]])  # (1, N)
    lay = token_layout(cfg, {"input_ids": ids})
    plan = region_keep_plan(lay, [region], image_sizes_wh=[wh], llava_geometry=GEOMETRY[view])
    kept = ~np.isin(lay[0].visual_positions, plan.drop[0])
    return kept.reshape(side, side), plan


@st.composite
def regions(draw):
    x0, x1 = sorted(draw(st.integers(0, 7)) for _ in range(2))
    y0, y1 = sorted(draw(st.integers(0, 7)) for _ in range(2))
    return Region(x0, y0, x1, y1)


@FAST
@given(region=regions(), w=st.integers(1, 2400), h=st.integers(1, 2400),
       view=st.sampled_from(sorted(GEOMETRY)), tile_px=st.sampled_from(sorted(CONFIGS)))
def test_plc_context_mask_is_ilp_keep_mask(region, w, h, view, tile_px):
    ilp, _ = _ilp_mask(region, (w, h), view, tile_px)
    plc = context_masks([region], [(w, h)], view, ilp.shape, tile_px=tile_px)[0].numpy().reshape(ilp.shape)
    np.testing.assert_array_equal(plc, ilp)


@FAST
@given(region=regions(), w=st.integers(1, 2400), h=st.integers(1, 2400))
def test_plc_pad_view_needs_no_tile_size(region, w, h):
    """Pad-to-square maps in original pixels: the mask is ILP's whatever the tile (old code: the
    fractional pad offset and the padding kept at image borders disagreed)."""
    ilp, _ = _ilp_mask(region, (w, h), "pad", 336)
    plc = context_masks([region], [(w, h)], "pad", (24, 24))[0].numpy().reshape(24, 24)
    np.testing.assert_array_equal(plc, ilp)


def test_issue_example_border_region_keeps_no_padding():
    """1000x300 padded to a square: row 0 of blocks is 2 token rows of image; the 8 rows of
    padding above it used to be kept (240 tokens, 192 of them padding)."""
    kept, plan = _ilp_mask(Region(0, 0, 7, 0), (1000, 300), "pad", 336)
    assert plan.visual_kept == (48,) and plan.padding_kept == (0,) and plan.image_kept == (48,)
    assert np.flatnonzero(kept.any(1)).tolist() == [8, 9]
    # 300/1000 * 24 = 7.2 rows of image, centred: rows 8..15 show image, the rest is padding
    assert plan.padding_total == (16 * 24,)


def test_whole_image_keeps_padding_and_is_identity():
    kept, plan = _ilp_mask(full_region(), (1000, 300), "pad", 336)
    assert kept.all() and plan.visual_kept == plan.visual_total == (576,)
    assert plan.padding_kept == plan.padding_total == (384,) and plan.image_kept == (192,)
    plc = context_masks([full_region()], [(1000, 300)], "pad", (24, 24))
    assert plc.all()  # PLC: every token is context, the non-context set is empty (null tokens)


def test_budget_rectangle_spends_no_padding():
    """A budget rectangle on a padded wide image stays in the image rows (the old one reached the
    padding when the region sat at the top border)."""
    cfg = CONFIGS[336]
    ids = torch.tensor([[1] + [99] * 576 + [3]])
    lay = token_layout(cfg, {"input_ids": ids})
    plan = region_keep_plan(lay, [Region(0, 0, 1, 0)], image_sizes_wh=[(1000, 300)], llava_geometry="pad_square",
                            budget=64)
    # 6 x 0.9 cells, aspect 6.7: h = round(sqrt(64 / 6.7)) = 3, w = round(64 / 3) = 21; centred on
    # row 8.45 the old rectangle started at row 7 (padding), now it starts at the first image row 8
    assert plan.visual_kept == (63,) and plan.padding_kept == (0,)
    # more than the image holds: every image cell, no padding
    plan = region_keep_plan(lay, [Region(0, 0, 1, 0)], image_sizes_wh=[(1000, 300)], llava_geometry="pad_square",
                            budget=300)
    assert plan.visual_kept == (192,) and plan.padding_kept == (0,)


def test_box_token_masks_snap_float_noise():
    """PLC's view-box masks use ILP's cell rule: 0.1 + 0.2 = 0.30000000000000004 adds no column."""
    from crop.models.plc import box_token_masks

    m = box_token_masks(torch.tensor([[0.0, 0.0, 0.1 + 0.2, 1.0]], dtype=torch.float64), (10, 10))
    assert m[0].any(0).tolist() == [True] * 3 + [False] * 7


@FAST
@given(region=regions(), scale=st.floats(0.05, 20), family=st.sampled_from(["llava_next", "qwen2_vl", "llava"]),
       hw=st.sampled_from([(10, 19), (19, 10), (12, 12), (7, 30)]), identity=st.booleans())
def test_kept_count_is_the_plans_count(region, scale, family, hw, identity):
    """The averaged budget counts kept tokens without building plans; the count must be the plan's
    (newlines of kept rows included) for every family."""
    from crop.pruning.average import scale_box
    from crop.pruning.region_map import kept_count, to_box_norm

    from pruning_tiny import _NEXT_CFG, build_inputs

    x = build_inputs(family, sizes_hw=[hw] if family == "llava_next" else [hw[::-1]] if family == "qwen2_vl" else None)
    cfg = {"llava_next": _NEXT_CFG, "qwen2_vl": _QWEN_CFG, "llava": _LLAVA_CFG}[family]
    lay = token_layout(cfg, x)
    box = scale_box(to_box_norm(region), scale)
    plan = region_keep_plan(lay, [box], image_sizes_wh=[(hw[1], hw[0])], llava_geometry="pad_square",
                            whole_is_identity=identity)
    assert kept_count(lay[0], box, (hw[1], hw[0]), "pad_square", whole_is_identity=identity) == plan.visual_kept[0]


def _tiny_cfgs():
    from pruning_tiny import build_model

    return build_model("qwen2_vl").config, build_model("llava").config


_QWEN_CFG, _LLAVA_CFG = _tiny_cfgs()
