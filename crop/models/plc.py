"""Pre-LLM Compression (PLC, paper Sec. 3.3, Eqs. 2-5): 576 visual tokens -> 68, region-aware.

Read top to bottom:

1. masks   : region blocks (B, 4) -> context token masks (B, R, C), by broadcasting (no Python loop);
             regions on an original image go through ILP's mapping (``llava_plc.context_masks``).
2. P(.)    : fixed 2-D sine-cosine positional encoding of *continuous* (row, col) token coordinates,
             times one learnable gain ``pos_gain``. Tokens use their grid cell; the 64 context queries
             sit on an 8x8 lattice spread over the region's bounding box (so "query (i, j)" means
             "region-relative place (i, j)" whatever the region's size); the 4 non-context queries sit
             on a 2x2 lattice over the whole image; anchors use their own cells. Fixed sincos was
             chosen over learned row/col tables because query positions are fractional.
3. Eq. 2/3 : X^kv_hat  = softmax(P(Q^k)  P(X^kv)^T  / sqrt(d)) P(X^kv)      (B, 64, d)
             X^nkv_hat = softmax(P(Q^nk) P(X^nkv)^T / sqrt(d)) P(X^nkv)     (B, 4, d)
             done as *masked* attention over all N*N tokens: a query only sees tokens of its set.
             An empty set (whole-image region -> no non-context tokens; a region cropped away ->
             no context tokens) returns learned null tokens (init 0) instead of NaN.
4. X^r     : the 8x8 patch of input tokens centred on the region's midpoint, clamped into the grid.
5. Eq. 4   : X^fused = softmax(P(X^r) P(X^kv_hat)^T / sqrt(d)) P(X^kv_hat) + X^r      (B, 64, d)
6. Eq. 5   : output concat(X^fused, X^nkv_hat) (B, 68, d); ablation ``use_anchors=False`` (Table 6)
             gives concat(X^kv_hat, X^nkv_hat), also 68 tokens.

Several regions (issue 21, beyond the paper): the context mask may be an integer *label map*
``(B, R*C)`` (0 = not context, k = region k; ``llava_plc.context_masks`` builds it). The context
tokens are the union of the regions (``labels > 0``), so Eqs. 2/3 are unchanged. The 64 anchors
are split over the row's n regions (:func:`anchor_split`: ``64 // n`` each, the first ``64 % n``
regions in reading order one more); region k's share is a near-square patch centred on its own
token box (:func:`patch_shape`, :func:`multi_anchor_indices`). One region, or a bool mask, gives
exactly the single 8x8 patch of step 4, so the output stays 68 tokens either way.

Where PLC runs: on the projector outputs (d = d_h, the LLM width, 4096 for LLaVA-1.5-7B), as the
paper defines X^v in R^{N^2 x d_h} and scales by sqrt(d_h). The anchors X^r are therefore the
*uncompressed* projector outputs of the encoder tokens in the patch.

Projections: the equations have none (keys = values = position-encoded tokens). ``qkv_proj=True``
adds per-attention Linear q/k/v maps initialised to the identity (3 x 3 x d^2 extra weights, ~151M at
d=4096), so switching them on does not change the output at initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


from crop.models.plc_config import PLCConfig  # noqa: E402,F401 - re-exported; kept light for CLIs


# ----------------------------------------------------------------------------------------------
# 1. region -> token masks, batched


def region_token_masks(regions: torch.Tensor, grid_hw: tuple[int, int], grid: int = 8) -> torch.Tensor:
    """Block regions ``(B, 4)`` [x_min, y_min, x_max, y_max] -> bool masks ``(B, R, C)``.

    Same rule as ``crop.geometry.tokens.region_token_mask`` (a token belongs when its cell overlaps
    the region with positive area), in exact integer arithmetic: column c spans [c/C, (c+1)/C) and
    the region [x_min/G, (x_max+1)/G), so they overlap iff c*G < (x_max+1)*C and (c+1)*G > x_min*C.
    """
    rows, cols = grid_hw
    regions = regions.long()
    if regions.ndim != 2 or regions.shape[1] != 4:
        raise ValueError(f"regions must be (B, 4), got {tuple(regions.shape)}")
    if (regions < 0).any() or (regions >= grid).any() or (regions[:, 0] > regions[:, 2]).any() \
            or (regions[:, 1] > regions[:, 3]).any():
        raise ValueError(f"invalid region blocks on a {grid}x{grid} grid: {regions.tolist()}")
    c = torch.arange(cols, device=regions.device)  # (C,)
    r = torch.arange(rows, device=regions.device)  # (R,)
    x0, y0, x1, y1 = (regions[:, i, None] for i in range(4))  # each (B, 1)
    col_in = (c * grid < (x1 + 1) * cols) & ((c + 1) * grid > x0 * cols)  # (B, C)
    row_in = (r * grid < (y1 + 1) * rows) & ((r + 1) * grid > y0 * rows)  # (B, R)
    return row_in[:, :, None] & col_in[:, None, :]  # (B, R, C)


def box_token_masks(boxes_norm: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Normalized boxes ``(B, 4)`` xyxy in the view -> bool masks ``(B, R, C)``.

    The cell rule is ILP's (:func:`crop.pruning.region_map.view_box_mask`: positive-area overlap,
    float noise at cell boundaries snapped); parts outside [0, 1] are ignored, a box fully outside
    gives an empty mask. Regions on the original image go through ``llava_plc.context_masks``.
    """
    from crop.pruning.region_map import view_box_mask

    boxes = boxes_norm.detach().cpu().double().tolist()
    masks = [torch.from_numpy(view_box_mask(tuple(b), grid_hw)) for b in boxes]  # each (R, C)
    if not masks:
        return torch.zeros((0, *grid_hw), dtype=torch.bool, device=boxes_norm.device)
    return torch.stack(masks).to(boxes_norm.device)  # (B, R, C)


def mask_bbox(masks: torch.Tensor) -> torch.Tensor:
    """Token bounding box ``(B, 4)`` long [r0, c0, r1, c1] (inclusive) of masks ``(B, R, C)``.

    An empty mask gets the whole grid, so queries and anchors still have a defined place.
    """
    B, R, C = masks.shape
    rows_any, cols_any = masks.any(2), masks.any(1)  # (B, R), (B, C)
    r = torch.arange(R, device=masks.device)
    c = torch.arange(C, device=masks.device)
    r0 = torch.where(rows_any, r, R).amin(1)  # (B,)
    r1 = torch.where(rows_any, r, -1).amax(1)
    c0 = torch.where(cols_any, c, C).amin(1)
    c1 = torch.where(cols_any, c, -1).amax(1)
    empty = ~rows_any.any(1)
    full = torch.tensor([0, 0, R - 1, C - 1], device=masks.device)
    box = torch.stack([r0, c0, r1, c1], 1)  # (B, 4)
    return torch.where(empty[:, None], full, box)


def anchor_indices(bbox: torch.Tensor, grid_hw: tuple[int, int], size: int = 8) -> torch.Tensor:
    """Flat token indices ``(B, size*size)`` of the size x size patch centred on each bbox.

    The patch starts at midpoint - size/2 with midpoint = (r0 + r1 + 1) // 2 (for an even-height
    region the patch centre is exactly the region's centre; for odd heights half a token off),
    then is clamped so it lies inside the grid (regions on the border, regions < 8x8 tokens).
    """
    rows, cols = grid_hw
    r0, c0, r1, c1 = bbox.unbind(1)  # each (B,)
    top = ((r0 + r1 + 1) // 2 - size // 2).clamp(0, rows - size)  # (B,)
    left = ((c0 + c1 + 1) // 2 - size // 2).clamp(0, cols - size)
    i = torch.arange(size, device=bbox.device)
    rr = top[:, None, None] + i[None, :, None]  # (B, size, 1)
    cc = left[:, None, None] + i[None, None, :]  # (B, 1, size)
    return (rr * cols + cc).reshape(len(bbox), size * size)  # (B, size*size), row-major


def anchor_split(n_regions: int, total: int = 64) -> list[int]:
    """Anchors per region: ``total // n`` each, one more for the first ``total % n`` (reading order)."""
    if not 1 <= n_regions <= total:
        raise ValueError(f"{n_regions} regions cannot share {total} anchors (1..{total} regions)")
    base, extra = divmod(total, n_regions)
    return [base + (i < extra) for i in range(n_regions)]


def patch_shape(n: int) -> tuple[int, int]:
    """``(h, w)`` of the near-square patch holding ``n`` anchors: ``h = floor(sqrt(n))``,
    ``w = ceil(n / h)``; the anchors are its first ``n`` cells in row-major order (64 -> 8 x 8)."""
    h = max(1, math.isqrt(n))
    return h, -(-n // h)


def multi_anchor_indices(labels: torch.Tensor, grid_hw: tuple[int, int], total: int = 64) -> torch.Tensor:
    """Flat anchor indices ``(B, total)`` from region label maps ``(B, R, C)`` (0 = no region).

    A row with n >= 2 regions (labels 1..n) gives region k :func:`anchor_split`'s share as the first
    cells of a :func:`patch_shape` patch centred on region k's token box (the midpoint rule of
    :func:`anchor_indices`), clamped into the grid. A row with at most one region gets
    :func:`anchor_indices` of its context tokens' box: the single-region anchors, bit for bit.
    """
    rows, cols = grid_hw
    B = labels.shape[0]
    side = math.isqrt(total)
    out = anchor_indices(mask_bbox(labels > 0), grid_hw, side)  # (B, total): the one-region rule
    for b in range(B):
        n = int(labels[b].max())
        if n < 2:
            continue
        parts = []
        boxes = mask_bbox(torch.stack([labels[b] == k for k in range(1, n + 1)]))  # (n, 4)
        for (r0, c0, r1, c1), count in zip(boxes.tolist(), anchor_split(n, total)):
            h, w = patch_shape(count)
            h, w = min(h, rows), min(w, cols)
            top = min(max((r0 + r1 + 1) // 2 - h // 2, 0), rows - h)
            left = min(max((c0 + c1 + 1) // 2 - w // 2, 0), cols - w)
            cells = [(top + i) * cols + left + j for i in range(h) for j in range(w)]
            parts.extend(cells[:count])
        out[b] = torch.tensor(parts, device=labels.device, dtype=out.dtype)
    return out


# ----------------------------------------------------------------------------------------------
# 2. positional encodings


def sincos_2d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """2-D sine-cosine encoding of continuous (row, col) positions ``(..., 2)`` -> ``(..., dim)``.

    First half of the channels encodes the row, second half the column (MAE-style frequencies).
    """
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, device=pos.device, dtype=torch.float32) / quarter))
    parts = []
    for axis in (0, 1):
        angle = pos[..., axis, None].float() * freqs  # (..., dim/4)
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, -1)  # (..., dim)


def lattice_positions(bbox: torch.Tensor, n: int) -> torch.Tensor:
    """Centres of an n x n lattice spread over inclusive token boxes ``(B, 4)`` -> ``(B, n*n, 2)``.

    Token k covers [k - 0.5, k + 0.5]; lattice point i of n along an axis of h tokens starting at
    t0 sits at t0 - 0.5 + (i + 0.5) * h / n.
    """
    b = bbox.float()
    i = (torch.arange(n, device=bbox.device, dtype=torch.float32) + 0.5) / n  # (n,)
    ys = b[:, 0, None] - 0.5 + i * (b[:, 2, None] - b[:, 0, None] + 1)  # (B, n)
    xs = b[:, 1, None] - 0.5 + i * (b[:, 3, None] - b[:, 1, None] + 1)  # (B, n)
    grid = torch.stack(torch.broadcast_tensors(ys[:, :, None], xs[:, None, :]), -1)  # (B, n, n, 2)
    return grid.reshape(len(bbox), n * n, 2)


# ----------------------------------------------------------------------------------------------
# 3-5. attention blocks


class Attend(nn.Module):
    """softmax(q k^T / sqrt(d)) v with keys = values = the given tokens, optionally masked.

    With ``proj=True`` q/k/v pass through Linear maps initialised to the identity.
    """

    def __init__(self, dim: int, proj: bool = False):
        super().__init__()
        self.scale = 1.0 / math.sqrt(dim)
        self.proj = proj
        if proj:
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
            for lin in (self.q_proj, self.k_proj, self.v_proj):
                nn.init.eye_(lin.weight)
                nn.init.zeros_(lin.bias)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None,
                null: torch.Tensor | None = None) -> torch.Tensor:
        # q (B, Q, D), kv (B, L, D), mask (B, L) bool: True = this token is in the set
        k = v = kv
        if self.proj:
            q, k, v = self.q_proj(q), self.k_proj(kv), self.v_proj(kv)
        logits = (q @ k.transpose(1, 2)) * self.scale  # (B, Q, L)
        if mask is None:
            return logits.softmax(-1) @ v  # (B, Q, D)
        empty = ~mask.any(1)  # (B,)
        keep = mask[:, None, :] | empty[:, None, None]  # (B, 1, L): empty rows attend to all, then replaced
        logits = logits.masked_fill(~keep, float("-inf"))
        out = logits.softmax(-1) @ v  # (B, Q, D)
        return torch.where(empty[:, None, None], null.to(out.dtype).expand_as(out), out)


class PLC(nn.Module):
    """Region-aware compression of projector outputs ``(B, R*C, d)`` to ``(B, 68, d)``."""

    def __init__(self, config: PLCConfig):
        super().__init__()
        self.config = cfg = config
        D = cfg.dim
        self.q_context = nn.Parameter(torch.randn(cfg.num_context_queries, D) * cfg.query_init_std)
        self.q_noncontext = nn.Parameter(torch.randn(cfg.num_noncontext_queries, D) * cfg.query_init_std)
        self.null_context = nn.Parameter(torch.zeros(cfg.num_context_queries, D))
        self.null_noncontext = nn.Parameter(torch.zeros(cfg.num_noncontext_queries, D))
        # shape (1,), not a 0-d scalar: FSDP2's fully_shard refuses scalar parameters
        self.pos_gain = nn.Parameter(torch.full((1,), float(cfg.pos_gain_init)))
        self.attn_context = Attend(D, cfg.qkv_proj)  # Eq. 2
        self.attn_noncontext = Attend(D, cfg.qkv_proj)  # Eq. 3
        self.attn_fuse = Attend(D, cfg.qkv_proj) if cfg.use_anchors else None  # Eq. 4
        R, C = cfg.grid_rows, cfg.grid_cols
        token_pos = torch.stack(torch.meshgrid(torch.arange(R), torch.arange(C), indexing="ij"), -1)
        self.register_buffer("token_pe", sincos_2d(token_pos.reshape(R * C, 2), D), persistent=False)
        whole = torch.tensor([[0, 0, R - 1, C - 1]])
        nk_pos = lattice_positions(whole, math.isqrt(cfg.num_noncontext_queries))[0]  # (4, 2)
        self.register_buffer("noncontext_query_pe", sincos_2d(nk_pos, D), persistent=False)

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.config.grid_rows, self.config.grid_cols

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "pos_gain"
        if key in state_dict and state_dict[key].dim() == 0:  # PLC weights saved before pos_gain had shape (1,)
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def masks_from_regions(self, regions: torch.Tensor) -> torch.Tensor:
        """Regions ``(B, 4)`` in blocks -> flat context masks ``(B, R*C)``."""
        return region_token_masks(regions, self.grid_hw, self.config.region_grid).flatten(1)

    def forward(self, x: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """x: projector outputs ``(B, R*C, D)``; context_mask: ``(B, R*C)`` or ``(B, R, C)`` bool, or
        an integer label map of several regions (module docstring, "Several regions")."""
        cfg, (R, C) = self.config, self.grid_hw
        B, L, D = x.shape
        if L != R * C or D != cfg.dim:
            raise ValueError(f"PLC expects (B, {R * C}, {cfg.dim}) visual tokens, got {tuple(x.shape)}")
        mask = context_mask.reshape(B, L).bool()  # (B, L)
        g = self.pos_gain.to(x.dtype)

        # P(X^v): every token plus the encoding of its grid cell
        x_pe = x + g * self.token_pe.to(x.dtype)  # (B, L, D)

        # Eq. 2: context queries on an 8x8 lattice over the region's token box
        bbox = mask_bbox(mask.view(B, R, C))  # (B, 4) [r0, c0, r1, c1]
        qk_pe = g * sincos_2d(lattice_positions(bbox, math.isqrt(cfg.num_context_queries)), D).to(x.dtype)
        qk = self.q_context.to(x.dtype) + qk_pe  # (B, 64, D)
        x_kv_hat = self.attn_context(qk, x_pe, mask, self.null_context)  # (B, 64, D)

        # Eq. 3: non-context queries on a 2x2 lattice over the whole image
        qnk = (self.q_noncontext.to(x.dtype) + g * self.noncontext_query_pe.to(x.dtype)).expand(B, -1, -1)
        x_nkv_hat = self.attn_noncontext(qnk, x_pe, ~mask, self.null_noncontext)  # (B, 4, D)

        if not cfg.use_anchors:  # Table 6 ablation: concat(X^kv_hat, X^nkv_hat)
            return torch.cat([x_kv_hat, x_nkv_hat], 1)  # (B, 68, D)

        # X^r: 8x8 patch of the uncompressed tokens around the region's midpoint
        labels = context_mask.reshape(B, R, C)
        if labels.dtype != torch.bool and bool((labels > 1).any()):  # several regions: anchors split
            idx = multi_anchor_indices(labels.long(), (R, C), cfg.anchor_size ** 2)  # (B, 64)
        else:
            idx = anchor_indices(bbox, (R, C), cfg.anchor_size)  # (B, 64)
        x_r = x.gather(1, idx[:, :, None].expand(-1, -1, D))  # (B, 64, D)
        x_r_pe = x_r + g * self.token_pe.to(x.dtype)[idx]  # (B, 64, D): P(X^r) by each anchor's cell

        # Eq. 4: anchors query the compressed context tokens, residual onto X^r
        x_kv_hat_pe = x_kv_hat + qk_pe  # (B, 64, D)
        x_fused = self.attn_fuse(x_r_pe, x_kv_hat_pe) + x_r  # (B, 64, D)

        # Eq. 5
        return torch.cat([x_fused, x_nkv_hat], 1)  # (B, 68, D)
