"""Pure index / mask arithmetic of the pruning hooks (no model access).

Rows of a batch may keep different numbers of tokens. They are then **left-padded** to the
longest row's count ``M``: a padding slot repeats the row's first kept position (so rotary
tables and position ids stay valid numbers) and is masked out as a key for every query except
itself (a padding query attends only to its own slot, so no softmax row is empty)::

    row 0 keeps 5:  [p0 p1 p2 p3 p4]
    row 1 keeps 3:  [q0 q0 q0 q1 q2]    pad = [T T F F F]

Real tokens therefore see exactly the keys of their own row's run; the outputs at padding
slots are finite garbage that nothing reads (the last slot of every row is a real token).
"""

from __future__ import annotations

import numpy as np
import torch

from crop.pruning.region_map import KeepPlan


def _kept_rows(plan: KeepPlan, batch: int, seq_len: int) -> list[np.ndarray]:
    if seq_len < plan.prompt_len:
        raise ValueError(f"sequence of {seq_len} tokens is shorter than the plan's prompt ({plan.prompt_len})")
    if batch % plan.batch_size:
        raise ValueError(f"batch of {batch} rows does not match a keep plan for {plan.batch_size} rows")
    rep = batch // plan.batch_size  # generate expands beams / num_return_sequences row-wise
    rows = []
    for b in range(batch):
        keep = np.ones(seq_len, dtype=bool)
        keep[plan.drop[b // rep]] = False
        rows.append(np.flatnonzero(keep))
    return rows


def keep_index(plan: KeepPlan, batch: int, seq_len: int, device) -> torch.Tensor:
    """(B, N_keep) sorted kept positions; every row must keep the same number of tokens.

    A plan with fewer rows than the batch is repeated row-wise (``generate`` expands beams and
    ``num_return_sequences`` with ``repeat_interleave``).
    """
    rows = _kept_rows(plan, batch, seq_len)
    counts = sorted({r.size for r in rows})
    if len(counts) > 1:
        raise ValueError(
            f"batch rows keep different numbers of tokens {counts}; this path needs equal counts per row "
            "(use the same region size / a token budget, or run those rows separately)"
        )
    return torch.as_tensor(np.stack(rows), dtype=torch.long, device=device)  # (B, N_keep)


def keep_slots(plan: KeepPlan, batch: int, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-padded kept positions ``(B, M)`` and the padding slots ``(B, M)`` bool.

    ``pad`` is ``None`` when every row keeps ``M`` tokens (then nothing needs masking).
    """
    return left_pad_rows(_kept_rows(plan, batch, seq_len), device)


def left_pad_rows(rows: list[np.ndarray], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sorted kept positions per row -> left-padded ``(B, M)`` slots and padding ``(B, M)`` | None."""
    m = max(r.size for r in rows)
    if all(r.size == m for r in rows):
        return torch.as_tensor(np.stack(rows), dtype=torch.long, device=device), None  # (B, M)
    idx = np.stack([np.concatenate([np.full(m - r.size, r[0]), r]) for r in rows])  # (B, M)
    pad = np.arange(m)[None, :] < np.array([m - r.size for r in rows])[:, None]  # (B, M)
    return torch.as_tensor(idx, dtype=torch.long, device=device), torch.as_tensor(pad, device=device)


def gather_seq(x: torch.Tensor | None, idx: torch.Tensor, dim: int = 1) -> torch.Tensor | None:
    """Gather positions ``idx`` (B, M) along ``dim`` of x (Bx, ..., N, ...); Bx may be 1."""
    if x is None:
        return None
    batch = idx.shape[0]
    if x.shape[0] != batch:
        x = x.expand(batch, *x.shape[1:])
    shape = [1] * x.dim()
    shape[0], shape[dim] = batch, idx.shape[1]
    index = idx.view(shape).expand(*[s if i != dim else idx.shape[1] for i, s in enumerate(x.shape)])
    return x.gather(dim, index)


def gather_mask(mask: torch.Tensor | None, rows: torch.Tensor | None, cols: torch.Tensor) -> torch.Tensor | None:
    """4-D mask (B, 1, Q, KV) -> rows ``rows`` (B, Q') (None = all) and columns ``cols`` (B, KV')."""
    if mask is None:
        return None
    if mask.dim() != 4:
        raise RuntimeError(f"expected a 4-D attention mask, got shape {tuple(mask.shape)}")
    if rows is not None:
        mask = gather_seq(mask, rows, dim=2)  # (B, 1, Q', KV)
    return gather_seq(mask, cols, dim=3)  # (B, 1, Q', KV')


def _block(mask: torch.Tensor | None, blocked: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Apply ``blocked`` (B, 1, Q, KV) bool to a bool or additive float mask; ``allowed`` if None."""
    if mask is None:
        return allowed & ~blocked
    if mask.dtype == torch.bool:
        return mask & ~blocked
    return mask.masked_fill(blocked, torch.finfo(mask.dtype).min)


def prefill_mask(mask: torch.Tensor | None, idx: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor | None:
    """The (B, 1, M, M) mask of the kept slots; padding slots blocked as keys (except their own).

    ``mask`` is the model's 4-D mask over the full sequence (bool for sdpa, additive float for
    eager) or ``None`` (sdpa causal); without padding ``None`` stays ``None``.
    """
    mask = gather_mask(mask, idx, idx)  # (B, 1, M, M) or None
    if pad is None:
        return mask
    m = idx.shape[1]
    eye = torch.eye(m, dtype=torch.bool, device=idx.device)
    blocked = pad[:, None, None, :] & ~eye  # (B, 1, M, M)
    causal = torch.ones(m, m, dtype=torch.bool, device=idx.device).tril()[None, None]  # (1, 1, M, M)
    return _block(mask, blocked, causal)


def decode_mask(
    mask: torch.Tensor | None, idx: torch.Tensor, pad: torch.Tensor | None, prefill_len: int, kv_kept: int, q_len: int
) -> torch.Tensor | None:
    """Decode-step mask for layers >= K: (B, 1, Q, kv_kept) over [kept prefill slots, new tokens].

    ``mask`` is sized against layer 0's full-length cache (B, 1, Q, KV_full) or ``None``;
    ``kv_kept`` is the length of the pruned layers' cache after this step.
    """
    batch, m = idx.shape
    if mask is not None:
        tail = torch.arange(prefill_len, mask.shape[-1], device=idx.device).expand(batch, -1)
        mask = gather_mask(mask, None, torch.cat([idx, tail], dim=1))  # (B, 1, Q, KV_kept)
    if pad is None:
        return mask
    padk = torch.cat([pad, pad.new_zeros(batch, kv_kept - m)], dim=1)  # (B, KV_kept)
    blocked = padk[:, None, None, :].expand(batch, 1, q_len, kv_kept)  # (B, 1, Q, KV_kept)
    return _block(mask, blocked, torch.ones_like(blocked))
