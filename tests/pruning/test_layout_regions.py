"""Token layouts from the data, region -> token mapping per processor geometry, budgets, baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crop.geometry import Region, full_region
from crop.pruning import budget_rect, center_region, random_region, region_keep_plan, token_layout
from crop.pruning.layout import ViewGrid
from crop.pruning.region_map import map_box_to_view

from pruning_tiny import IMG, build_inputs, build_model, decoder_kwargs

torch.set_num_threads(1)


def test_llava_layout_is_raster_after_prefix():
    model = build_model("llava")
    x = build_inputs("llava", batch=2, prefix=3)
    lay = token_layout(model, x)
    assert len(lay) == 2 and lay[0].views[0].grid_hw == (4, 4)
    np.testing.assert_array_equal(lay[1].views[0].positions, np.arange(3, 19).reshape(4, 4))


def test_llava_full_strategy_keeps_cls_off_grid():
    model = build_model("llava")
    model.config.vision_feature_select_strategy = "full"
    ids = torch.tensor([[5] + [IMG] * 17 + [6]])
    lay = token_layout(model.config, {"input_ids": ids})
    assert lay[0].always_kept.tolist() == [1] and lay[0].views[0].positions[0, 0] == 2


@pytest.mark.parametrize("hw", [(10, 19), (19, 10), (12, 12), (7, 30)])
def test_next_newlines_are_where_the_model_puts_image_newline(hw):
    """Order check against the model itself: newline embeddings sit at our newline positions."""
    model = build_model("llava_next")
    x = build_inputs("llava_next", batch=1, sizes_hw=[hw])
    lay = token_layout(model, x)[0]
    got = decoder_kwargs(model, x)
    emb = got["inputs_embeds"][0]  # (N, D)
    is_nl = (emb == model.model.image_newline).all(-1).numpy()
    hi = lay.views[1]
    np.testing.assert_array_equal(np.flatnonzero(is_nl), hi.newline_positions)
    assert hi.positions[0, 0] == lay.views[0].positions[-1, -1] + 1  # high-res follows the base view


def test_count_mismatch_raises():
    model = build_model("llava")
    with pytest.raises(ValueError, match="not a multiple"):
        token_layout(model, {"input_ids": torch.tensor([[1] + [IMG] * 15])})
    qwen = build_model("qwen2_vl")
    x = build_inputs("qwen2_vl")
    x["image_grid_thw"] = torch.tensor([[1, 8, 8]])
    with pytest.raises(ValueError, match="image"):
        token_layout(qwen, x)
    with pytest.raises(ValueError, match="image_grid_thw"):
        token_layout(qwen, {"input_ids": x["input_ids"]})


def _view(kind, n_rows, n_cols, **geo):
    return ViewGrid(kind, 0, np.arange(n_rows * n_cols).reshape(n_rows, n_cols), None, geo)


@pytest.mark.parametrize(
    "geometry,wh,box,expected",
    [
        # wide 2:1 image, centre crop shows x in [0.25, 0.75]: the left quarter falls outside
        ("center_crop", (200, 100), (0.0, 0.0, 0.25, 1.0), None),
        ("center_crop", (200, 100), (0.25, 0.0, 0.5, 0.5), (0.0, 0.0, 0.5, 0.5)),
        # tall 1:2 image padded to a square: x maps into [0.25, 0.75]
        ("pad_square", (100, 200), (0.0, 0.0, 1.0, 0.5), (0.25, 0.0, 0.75, 0.5)),
        ("resize", (100, 200), (0.1, 0.2, 0.3, 0.4), (0.1, 0.2, 0.3, 0.4)),
    ],
)
def test_llava_geometries(geometry, wh, box, expected):
    v = _view("llava", 24, 24)
    got = map_box_to_view(box, v, wh, geometry)
    if expected is None:
        assert got[2] <= 0.0  # entirely left of the crop
    else:
        np.testing.assert_allclose(got, expected)


def test_next_highres_letterbox_mapping():
    # padded 8x8 grid, content 4.21 rows centred, 2 rows cut each side -> 4 rows kept
    g = {"padded_hw": (8, 8), "rows": 4, "cols": 8, "pad": 2, "crop_axis": "rows", "content": 10 * 8 / 19}
    v = _view("next_highres", 4, 8, **g)
    y = map_box_to_view((0.0, 0.0, 1.0, 1.0), v, None)
    off = (8 - 10 * 8 / 19) / 2 - 2
    np.testing.assert_allclose(y, (0.0, off / 4, 1.0, (off + 10 * 8 / 19) / 4))


@pytest.mark.parametrize(
    "box,grid,budget,expected_hw",
    [
        ((0.25, 0.25, 0.75, 0.75), (24, 24), 192, (14, 14)),
        ((0.25, 0.25, 0.75, 0.75), (24, 24), 64, (8, 8)),
        ((0.0, 0.0, 1.0, 0.25), (24, 24), 64, (4, 16)),
        ((0.9, 0.9, 1.0, 1.0), (24, 24), 576, (24, 24)),
    ],
)
def test_budget_rect(box, grid, budget, expected_hw):
    m = budget_rect(box, grid, budget)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    assert (rows.size, cols.size) == expected_hw and m.sum() == rows.size * cols.size
    cy, cx = (box[1] + box[3]) / 2 * grid[0], (box[0] + box[2]) / 2 * grid[1]
    if m.sum() < m.size:
        assert abs((rows[0] + rows[-1] + 1) / 2 - cy) <= 1 and abs((cols[0] + cols[-1] + 1) / 2 - cx) <= 1


def test_region_plans_all_families():
    for fam, kept_full in (("llava", 16), ("llava_next", 52), ("qwen2_vl", 12)):
        model = build_model(fam)
        x = build_inputs(fam, batch=1)
        lay = token_layout(model, x)
        full = region_keep_plan(lay, [full_region()], image_sizes_wh=[(16, 12)], llava_geometry="resize")
        assert full.visual_kept == (kept_full,) and full.drop[0].size == 0
        half = region_keep_plan(lay, [Region(0, 0, 3, 7)], image_sizes_wh=[(16, 12)], llava_geometry="resize")
        assert 0 < half.visual_kept[0] < kept_full
        bud = region_keep_plan(lay, [Region(0, 0, 3, 7)], llava_geometry="resize", budget=6)
        assert bud.visual_kept[0] >= 5


def test_next_newline_kept_iff_row_kept():
    model = build_model("llava_next")
    x = build_inputs("llava_next", batch=1, sizes_hw=[(10, 19)])
    lay = token_layout(model, x)
    plan = region_keep_plan(lay, [(0.0, 0.0, 1.0, 0.3)])
    hi = lay[0].views[1]
    kept = ~np.isin(hi.positions, plan.drop[0])
    nl_kept = ~np.isin(hi.newline_positions, plan.drop[0])
    np.testing.assert_array_equal(nl_kept, kept.any(1))
    assert 0 < nl_kept.sum() < nl_kept.size


def test_center_and_random_regions():
    r = Region(1, 2, 3, 6)  # 3 wide, 5 high
    c = center_region(r)
    assert (c.width, c.height) == (3, 5) and c == Region(2, 1, 4, 5)
    seen = {random_region(r, s) for s in range(40)}
    assert all((q.width, q.height) == (3, 5) and q.x_max <= 7 and q.y_max <= 7 for q in seen)
    assert len(seen) > 3
    assert random_region(r, "key-1") == random_region(r, "key-1")
    with pytest.raises(ValueError):
        random_region(r, 1.5)
