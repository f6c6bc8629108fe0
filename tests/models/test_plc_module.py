"""PLC module: masks, Eqs. 2-5 against an explicit per-sample reference, edge cases, ablation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from crop.geometry.tokens import box_norm_token_mask, region_token_mask
from crop.models.plc import (
    PLC,
    PLCConfig,
    anchor_indices,
    box_token_masks,
    lattice_positions,
    mask_bbox,
    region_token_masks,
    sincos_2d,
)

D = 32
ALL_REGIONS = [r for r in itertools.product(range(8), repeat=4) if r[0] <= r[2] and r[1] <= r[3]]


def make(seed=0, **kw) -> PLC:
    torch.manual_seed(seed)
    return PLC(PLCConfig(dim=D, **kw)).eval()


def rand_x(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 576, D, generator=g)


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("grid_hw", [(24, 24), (14, 10)])
def test_region_masks_match_geometry_for_every_region(grid_hw):
    masks = region_token_masks(torch.tensor(ALL_REGIONS), grid_hw).numpy()
    expected = np.stack([region_token_mask(r, grid_hw) for r in ALL_REGIONS])
    assert masks.shape == (len(ALL_REGIONS), *grid_hw)
    np.testing.assert_array_equal(masks, expected)


def test_box_masks_match_geometry():
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(300):
        x = np.sort(rng.uniform(-0.2, 1.2, 2))
        y = np.sort(rng.uniform(-0.2, 1.2, 2))
        boxes.append([x[0], y[0], x[1], y[1]])
    boxes += [[0, 0, 1, 1], [0.125, 0.25, 0.375, 1.0], [1.1, 0, 1.3, 1]]  # aligned and off-image
    got = box_token_masks(torch.tensor(boxes), (24, 24)).numpy()
    expected = np.stack([box_norm_token_mask(b, (24, 24)) for b in boxes])
    np.testing.assert_array_equal(got, expected)
    assert not got[-1].any()


@pytest.mark.parametrize("bad, msg", [
    ([[0, 0, 8, 7]], "invalid region"),
    ([[3, 0, 2, 7]], "invalid region"),
    ([[-1, 0, 2, 7]], "invalid region"),
    ([0, 0, 7, 7], r"\(B, 4\)"),
])
def test_region_masks_reject_bad_regions(bad, msg):
    with pytest.raises(ValueError, match=msg):
        region_token_masks(torch.tensor(bad), (24, 24))


def test_mask_bbox_and_empty_mask_gets_whole_grid():
    m = region_token_masks(torch.tensor([[2, 3, 4, 5], [0, 0, 7, 7]]), (24, 24))
    empty = torch.zeros(1, 24, 24, dtype=torch.bool)
    got = mask_bbox(torch.cat([m, empty]))
    assert got.tolist() == [[9, 6, 17, 14], [0, 0, 23, 23], [0, 0, 23, 23]]


# ---------------------------------------------------------------- anchors


@pytest.mark.parametrize("region, top_left", [
    ((0, 0, 7, 7), (8, 8)),  # whole image: centre patch rows/cols 8..15
    ((0, 0, 0, 0), (0, 0)),  # 3x3-token corner block: clamped to the corner
    ((7, 7, 7, 7), (16, 16)),  # opposite corner: clamped
    ((7, 0, 7, 7), (8, 16)),  # right border column of blocks, full height
    ((3, 3, 4, 4), (8, 8)),  # 6x6 tokens rows 9..14 -> midpoint 12 -> rows 8..15
    ((2, 3, 4, 5), (9, 6)),  # rows 9..17, cols 6..14
])
def test_anchor_patch_position(region, top_left):
    bbox = mask_bbox(region_token_masks(torch.tensor([region]), (24, 24)))
    idx = anchor_indices(bbox, (24, 24), 8)[0]
    rows, cols = (idx // 24).tolist(), (idx % 24).tolist()
    assert (min(rows), min(cols)) == top_left
    assert max(rows) - min(rows) == 7 and max(cols) - min(cols) == 7
    assert len(set(idx.tolist())) == 64


def test_anchor_patch_always_inside_grid_and_covers_region_centre():
    regions = torch.tensor(ALL_REGIONS)
    bbox = mask_bbox(region_token_masks(regions, (24, 24)))
    idx = anchor_indices(bbox, (24, 24), 8)
    assert idx.min() >= 0 and idx.max() < 576
    centre = ((bbox[:, 0] + bbox[:, 2]) // 2) * 24 + (bbox[:, 1] + bbox[:, 3]) // 2
    assert (idx == centre[:, None]).any(1).all()


def test_lattice_spreads_over_box():
    pos = lattice_positions(torch.tensor([[0, 0, 23, 23], [9, 6, 9, 6]]), 2)
    assert pos[0].tolist() == [[5.5, 5.5], [5.5, 17.5], [17.5, 5.5], [17.5, 17.5]]
    assert torch.allclose(pos[1], torch.tensor([[8.75, 5.75], [8.75, 6.25], [9.25, 5.75], [9.25, 6.25]]))


def test_sincos_distinguishes_rows_from_columns():
    pe = sincos_2d(torch.tensor([[1.0, 2.0], [2.0, 1.0]]), 16)
    assert pe.shape == (2, 16) and not torch.allclose(pe[0], pe[1])


# ---------------------------------------------------------------- Eqs. 2-5 vs reference


def reference_plc(m: PLC, x: torch.Tensor, region) -> torch.Tensor:
    """One sample, written straight from the paper: select X^kv / X^nkv by index, no masking."""
    g, d = m.pos_gain.detach(), x.shape[-1]
    mask = torch.from_numpy(region_token_mask(region, (24, 24))).flatten()
    pe = m.token_pe * g
    rows = torch.nonzero(mask.view(24, 24).any(1)).flatten()
    cols = torch.nonzero(mask.view(24, 24).any(0)).flatten()
    bbox = torch.tensor([[rows.min(), cols.min(), rows.max(), cols.max()]])

    def attn(q, kv):
        return torch.softmax(q @ kv.T / math.sqrt(d), -1) @ kv

    kv = x[mask] + pe[mask]  # P(X^kv)
    q_pe = sincos_2d(lattice_positions(bbox, 8)[0], d) * g
    x_kv_hat = attn(m.q_context + q_pe, kv)  # Eq. 2
    if (~mask).any():
        nkv = x[~mask] + pe[~mask]
        x_nkv_hat = attn(m.q_noncontext + m.noncontext_query_pe * g, nkv)  # Eq. 3
    else:
        x_nkv_hat = m.null_noncontext
    if not m.config.use_anchors:
        return torch.cat([x_kv_hat, x_nkv_hat])
    mid_r, mid_c = (bbox[0, 0] + bbox[0, 2] + 1) // 2, (bbox[0, 1] + bbox[0, 3] + 1) // 2
    top, left = int((mid_r - 4).clamp(0, 16)), int((mid_c - 4).clamp(0, 16))
    x_r = x.view(24, 24, d)[top:top + 8, left:left + 8].reshape(64, d)
    p_r = pe.view(24, 24, d)[top:top + 8, left:left + 8].reshape(64, d)
    fused = attn(x_r + p_r, x_kv_hat + q_pe) + x_r  # Eq. 4
    return torch.cat([fused, x_nkv_hat])  # Eq. 5


REGIONS = [(0, 0, 7, 7), (0, 0, 0, 0), (7, 7, 7, 7), (7, 0, 7, 7), (2, 3, 4, 5), (1, 1, 6, 2)]


@pytest.mark.parametrize("use_anchors", [True, False])
def test_batched_equals_reference_per_sample(use_anchors):
    m = make(use_anchors=use_anchors)
    with torch.no_grad():
        m.null_noncontext.normal_()  # make the whole-image case visible
        x = rand_x(len(REGIONS))
        out = m(x, m.masks_from_regions(torch.tensor(REGIONS)))
        assert out.shape == (len(REGIONS), 68, D) and torch.isfinite(out).all()
        for i, region in enumerate(REGIONS):
            ref = reference_plc(m, x[i], region)
            torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-5)
            alone = m(x[i:i + 1], m.masks_from_regions(torch.tensor([region])))
            torch.testing.assert_close(out[i:i + 1], alone, rtol=1e-5, atol=1e-5)


def test_whole_image_region_gives_null_noncontext_tokens():
    m = make()
    with torch.no_grad():
        m.null_noncontext.normal_()
        out = m(rand_x(1), m.masks_from_regions(torch.tensor([[0, 0, 7, 7]])))
    torch.testing.assert_close(out[0, 64:], m.null_noncontext.detach())


def test_empty_context_mask_gives_null_context_tokens():
    m = make(use_anchors=False)
    with torch.no_grad():
        m.null_context.normal_()
        out = m(rand_x(2), torch.zeros(2, 576, dtype=torch.bool))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :64], m.null_context.detach().expand(2, -1, -1))


def test_tokens_only_reach_their_own_set():
    """Ablated output: a context token moves only the first 64, a non-context token only the last 4."""
    m = make(use_anchors=False)
    region = torch.tensor([[2, 3, 4, 5]])
    mask = m.masks_from_regions(region)[0]
    x = rand_x(1)
    inside, outside = int(torch.nonzero(mask)[0]), int(torch.nonzero(~mask)[0])
    with torch.no_grad():
        base = m(x, m.masks_from_regions(region))
        for tok, changed, same in [(inside, slice(0, 64), slice(64, 68)),
                                   (outside, slice(64, 68), slice(0, 64))]:
            x2 = x.clone()
            x2[0, tok] += 5.0
            out = m(x2, m.masks_from_regions(region))
            assert not torch.allclose(out[0, changed], base[0, changed])
            torch.testing.assert_close(out[0, same], base[0, same])


def test_ablation_switch_changes_only_the_fusion():
    full, ablated = make(use_anchors=True), make(use_anchors=False)
    ablated.load_state_dict(full.state_dict())  # no Attend parameters without projections
    x, regions = rand_x(3), torch.tensor(REGIONS[:3])
    with torch.no_grad():
        a = full(x, full.masks_from_regions(regions))
        b = ablated(x, ablated.masks_from_regions(regions))
    assert a.shape == b.shape == (3, 68, D)
    torch.testing.assert_close(a[:, 64:], b[:, 64:])  # X^nkv_hat untouched
    assert not torch.allclose(a[:, :64], b[:, :64])  # X^fused replaces X^kv_hat
    # and X^fused is exactly Eq. 4 applied to the ablated model's X^kv_hat
    for i, region in enumerate(REGIONS[:3]):
        torch.testing.assert_close(a[i], reference_plc(full, x[i], region), rtol=1e-5, atol=1e-5)


def test_identity_projections_do_not_change_output_at_init():
    plain, proj = make(seed=3), make(seed=3, qkv_proj=True)
    x, regions = rand_x(2), torch.tensor(REGIONS[:2])
    with torch.no_grad():
        torch.testing.assert_close(proj(x, proj.masks_from_regions(regions)),
                                   plain(x, plain.masks_from_regions(regions)), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in proj.parameters()) > sum(p.numel() for p in plain.parameters())


def test_queries_receive_gradients_and_no_nan_with_empty_sets():
    m = make().train()
    x = rand_x(3).requires_grad_()
    out = m(x, m.masks_from_regions(torch.tensor([[0, 0, 7, 7], [2, 3, 4, 5], [0, 0, 0, 0]])))
    (out * torch.randn_like(out)).sum().backward()  # linear: the zero-initialised nulls get grads
    for name in ("q_context", "q_noncontext", "pos_gain", "null_noncontext"):
        grad = getattr(m, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert m.null_context.grad is None or m.null_context.grad.abs().sum() == 0  # never empty here
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kw, msg", [
    (dict(dim=30), "divisible by 4"),
    (dict(num_context_queries=60), "square"),
    (dict(num_noncontext_queries=0), "square"),
    (dict(anchor_size=30), "fit"),
])
def test_config_errors_name_the_field(kw, msg):
    with pytest.raises(ValueError, match=msg):
        PLCConfig(**{"dim": 32, **kw})


def test_wrong_input_shape_is_reported():
    m = make()
    with pytest.raises(ValueError, match="576"):
        m(torch.randn(1, 500, D), torch.zeros(1, 500, dtype=torch.bool))


def test_output_count_property():
    assert PLCConfig().num_output_tokens == 68
    assert PLCConfig(use_anchors=False).num_output_tokens == 68
