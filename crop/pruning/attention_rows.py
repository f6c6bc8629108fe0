"""Attention rows from a decoder layer's own projections: the one owner of "what do these query
tokens attend to at layer L" for FastV, the multi-stage baselines and the ``self`` region.

Only a few query rows are needed, so they are computed from the layer's q/k (its input
layernorm, projections and rotary embedding) instead of asking the model for eager attention
maps: the model keeps running sdpa, and the cost is Q x N, not N x N.
"""

from __future__ import annotations

import torch

from crop.pruning.gather import gather_seq


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, H, N, Dh) with cos/sin (B, N, Dh) (the models' rotate-half form)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, N, Dh)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _expand(pos_emb, batch: int):
    cos, sin = pos_emb
    if cos.shape[0] != batch:
        cos, sin = cos.expand(batch, -1, -1), sin.expand(batch, -1, -1)
    return cos, sin


def layer_keys(layer: torch.nn.Module, h_in: torch.Tensor, pos_emb) -> torch.Tensor:
    """Rotated keys (B, Hkv, N, Dh) that ``layer`` computes from its input ``h_in`` (B, N, D)."""
    attn = layer.self_attn
    x = layer.input_layernorm(h_in)
    b, n = x.shape[:2]
    cos, sin = _expand(pos_emb, b)
    k = attn.k_proj(x).view(b, n, -1, attn.head_dim).transpose(1, 2)  # (B, Hkv, N, Dh)
    return rotate(k, cos, sin)


def row_attention(layer: torch.nn.Module, h_in: torch.Tensor, pos_emb, mask, rows: torch.Tensor,
                  keys: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head attention probabilities (B, H, Q, N) of the query slots ``rows`` (B, Q) at ``layer``.

    ``h_in`` (B, N, D) is the layer's input; ``keys`` (B, Hkv, N, Dh), already rotated, is the
    layer's cache entry when the prefill wrote one (else re-projected). The softmax is over every
    key the query may see: causal by slot, and ``mask`` (the layer's 4-D mask over the slots, bool
    or additive; None under sdpa's implicit causal mask), as the eager attention map of that layer.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(h_in)  # (B, N, D)
    b, n = x.shape[:2]
    hd = attn.head_dim
    cos, sin = _expand(pos_emb, b)
    xq = gather_seq(x, rows, dim=1)  # (B, Q, D)
    q = attn.q_proj(xq).view(b, rows.shape[1], -1, hd).transpose(1, 2)  # (B, H, Q, Dh)
    q = rotate(q, gather_seq(cos, rows, 1), gather_seq(sin, rows, 1))
    if keys is None:
        k = attn.k_proj(x).view(b, n, -1, hd).transpose(1, 2)  # (B, Hkv, N, Dh)
        keys = rotate(k, cos, sin)
    keys = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)  # (B, H, N, Dh)
    s = (q @ keys.transpose(-1, -2)).float() * attn.scaling  # (B, H, Q, N)
    allowed = rows[:, :, None] >= torch.arange(n, device=rows.device)[None, None, :]  # causal (B, Q, N)
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    if mask is not None:
        m = gather_seq(mask[:, :, :, :n], rows, dim=2)  # (B, 1, Q, N)
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.float()
    return s.softmax(-1)


def last_rows(batch: int, n: int, count: int, device) -> torch.Tensor:
    """Slot indices (B, count) of the last ``count`` tokens of every row."""
    return torch.arange(n - count, n, device=device).expand(batch, count)
