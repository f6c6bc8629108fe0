"""PLC with several regions (issue 21): context = the union of the regions, the 64 anchors split
over them; a hand-written per-sample reference with hand-listed anchor cells; one region (or a bool
mask) gives the single-region PLC bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crop.geometry import Region
from crop.geometry.tokens import region_token_mask
from crop.models.llava_plc import context_masks
from crop.models.plc import PLC, PLCConfig, anchor_split, lattice_positions, multi_anchor_indices, patch_shape, sincos_2d

torch.set_num_threads(1)
D = 32
A, B = Region(0, 0, 1, 1), Region(6, 6, 7, 7)


def make(**kw) -> PLC:
    torch.manual_seed(0)
    return PLC(PLCConfig(dim=D, **kw)).eval()


def rand_x(b, seed=1):
    return torch.randn(b, 576, D, generator=torch.Generator().manual_seed(seed))


def test_anchor_split_and_patch_shapes():
    assert anchor_split(1) == [64] and anchor_split(2) == [32, 32] and anchor_split(3) == [22, 21, 21]
    assert anchor_split(4) == [16] * 4
    with pytest.raises(ValueError, match="cannot share"):
        anchor_split(65)
    assert patch_shape(64) == (8, 8) and patch_shape(32) == (5, 7) and patch_shape(16) == (4, 4)
    assert patch_shape(21) == (4, 6) and patch_shape(1) == (1, 1)


def _hand_anchor_cells():
    """A = blocks 0..1 -> tokens rows/cols 0..5, midpoint 3; a 5x7 patch from row 3-2=1, col 3-3=0.
    B = blocks 6..7 -> tokens 18..23, midpoint 21; the patch starts at row 21-2=19 (= 24-5, the last
    fitting row) and col 21-3=18, clamped to 24-7=17. Each region takes the first 32 cells row-major."""
    a = [(r, c) for r in range(1, 6) for c in range(0, 7)][:32]
    b = [(r, c) for r in range(19, 24) for c in range(17, 24)][:32]
    return [r * 24 + c for r, c in a + b]


def test_multi_anchor_indices_hand_case():
    labels = context_masks([[A, B]], [(96, 96)], "resize", (24, 24)).view(1, 24, 24)
    assert labels.dtype == torch.int64 and set(labels.unique().tolist()) == {0, 1, 2}
    assert multi_anchor_indices(labels, (24, 24)).tolist() == [_hand_anchor_cells()]


def _reference(m: PLC, x: torch.Tensor, regions) -> torch.Tensor:
    """One sample from the paper's equations with index selection: context = union of the
    regions' tokens; anchors = the hand-listed cells."""
    g, d = m.pos_gain.detach(), x.shape[-1]
    mask = torch.from_numpy(np.logical_or.reduce([region_token_mask(r, (24, 24)) for r in regions])).flatten()
    pe = m.token_pe * g
    rows = torch.nonzero(mask.view(24, 24).any(1)).flatten()
    cols = torch.nonzero(mask.view(24, 24).any(0)).flatten()
    bbox = torch.tensor([[rows.min(), cols.min(), rows.max(), cols.max()]])

    def attn(q, kv):
        return torch.softmax(q @ kv.T / math.sqrt(d), -1) @ kv

    q_pe = sincos_2d(lattice_positions(bbox, 8)[0], d) * g
    x_kv_hat = attn(m.q_context + q_pe, x[mask] + pe[mask])  # Eq. 2 over the union
    x_nkv_hat = attn(m.q_noncontext + m.noncontext_query_pe * g, x[~mask] + pe[~mask])  # Eq. 3
    idx = torch.tensor(_hand_anchor_cells())
    x_r = x[idx]
    fused = attn(x_r + pe[idx], x_kv_hat + q_pe) + x_r  # Eq. 4 with the split anchors
    return torch.cat([fused, x_nkv_hat])


def test_two_regions_equal_the_hand_reference():
    m = make()
    x = rand_x(1)
    labels = context_masks([[A, B]], [(96, 96)], "resize", (24, 24))
    with torch.no_grad():
        out = m(x, labels)[0]
        ref = _reference(m, x[0], [A, B])
    assert out.shape == (68, D)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_context_is_the_union_and_one_region_is_unchanged():
    m, ablated = make(), make(use_anchors=False)
    x = rand_x(2)
    labels = context_masks([[A, B], A], [(96, 96), (96, 96)], "resize", (24, 24))  # (2, 576) int
    union = labels > 0
    single = context_masks([A], [(96, 96)], "resize", (24, 24))  # bool, as before
    assert single.dtype == torch.bool and torch.equal(union[1], single[0])
    expect = torch.from_numpy(region_token_mask(A, (24, 24)) | region_token_mask(B, (24, 24))).flatten()
    assert torch.equal(union[0], expect)
    with torch.no_grad():
        out, out_union = m(x, labels), m(x, union)
        # the 4 non-context tokens and (without anchors) everything depend on the union only
        torch.testing.assert_close(out[:, 64:], out_union[:, 64:], atol=0, rtol=0)
        assert torch.equal(ablated(x, labels), ablated(x, union))
        assert not torch.allclose(out[0, :64], out_union[0, :64])  # the split anchors differ
        assert torch.equal(out[1], m(x[1:], single)[0])  # a one-region row: bit for bit


def test_tiny_llava_plc_generates_with_two_regions():
    from crop.models.llava_plc import LlavaPLC, expand_image_tokens, tiny_llava

    llava = tiny_llava(grid=24)
    plc = LlavaPLC(llava, PLCConfig(dim=64, grid_rows=24, grid_cols=24))
    ids = torch.tensor([expand_image_tokens([256, 259, 65, 66], 259, plc.num_image_tokens)])
    pixels = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    mask = context_masks([[A, B]], [(48, 48)], "resize", plc.grid_hw, tile_px=plc.tile_px)
    out = plc.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, context_mask=mask,
                       max_new_tokens=2, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 2)
