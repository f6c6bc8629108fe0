"""FastV baseline: keep the top-R visual tokens by the last token's attention at layer K-1.

Only one attention row is needed, so it is computed here from layer K-1's own projections:
the query of the last token and the keys of all tokens (read from the KV cache when the
prefill filled it, otherwise re-projected). The model keeps running sdpa/eager and never
returns attention maps. The selection is made at prefill; decode steps reuse it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from crop.compat import cache_of_kwargs
from crop.pruning import guards
from crop.pruning.attention_rows import last_rows, row_attention
from crop.pruning.layout import SampleLayout
from crop.pruning.plugin import PruneHandle, check_supported
from crop.pruning.region_map import KeepPlan


def last_token_attention(layer: torch.nn.Module, h_in: torch.Tensor, pos_emb, mask, keys=None) -> torch.Tensor:
    """Head-averaged attention (B, N) of the last token of ``h_in`` (B, N, D) at ``layer``
    (:func:`crop.pruning.attention_rows.row_attention`; ``keys``: the layer's cache entry when available)."""
    rows = last_rows(h_in.shape[0], h_in.shape[1], 1, h_in.device)  # (B, 1)
    return row_attention(layer, h_in, pos_emb, mask, rows, keys).mean(1)[:, 0]  # (B, N)


def top_r_plan(layouts: Sequence[SampleLayout], scores: torch.Tensor, budget: int) -> KeepPlan:
    """Keep the ``budget`` highest-scoring visual tokens of each row (ties: lower position)."""
    masks = []
    rep = scores.shape[0] // len(layouts)
    for b in range(scores.shape[0]):
        lay = layouts[b // rep]
        s = scores[b, torch.as_tensor(lay.visual_positions, device=scores.device)].cpu().numpy()
        r = min(budget, s.size)
        order = np.argsort(-s, kind="stable")[:r]
        m = np.zeros(s.size, bool)
        m[order] = True
        masks.append(m)
    rows = [layouts[b // rep] for b in range(scores.shape[0])]
    return KeepPlan.from_keep_masks(rows, masks)


class FastVHandle(PruneHandle):
    """ILP machinery whose plan is chosen at layer K-1 of every prefill.

    With ``freeze=True`` the first prefill's selection is kept for later prefills too (this is
    how an uncached ``generate`` reproduces the cached run). The prefill guard checks the prompt
    against ``layouts`` (length and image-token positions), as ILP checks its plan.
    """

    kind = "FastV"

    def __init__(self, model, layouts: Sequence[SampleLayout], budget: int, layer: int = 2, freeze: bool = False):
        check_supported(model, layer)
        if budget < 0:
            raise ValueError(f"FastV budget R must be >= 0, got {budget}")
        self.layouts, self.budget, self.freeze = list(layouts), budget, freeze
        self._ref = guards.ref_of_layouts(self.layouts)
        super().__init__(model, None, layer)
        self._captured = None
        prev = self._layers[layer - 1]
        self._hooks.append(prev.register_forward_pre_hook(self._pre_select, with_kwargs=True))
        self._hooks.append(prev.register_forward_hook(self._post_select, with_kwargs=True))

    def __repr__(self) -> str:
        return f"a FastV handle (layer K={self.layer}, R={self.budget})"

    def _prompt_ref(self):
        return self._ref, self.layouts

    def reset(self) -> None:
        """Forget a frozen selection."""
        self.plan = None

    def _plan_for_prefill(self) -> KeepPlan:
        if self.plan is None:
            raise RuntimeError("FastV selection missing: layer K-1 did not run a prefill")
        return self.plan

    def _pre_select(self, module, args, kwargs):
        cache = cache_of_kwargs(kwargs)
        prefill = cache is None or cache.get_seq_length(self.layer - 1) == 0
        self._captured = None
        if prefill and not (self.freeze and self.plan is not None):
            h = args[0] if args else kwargs["hidden_states"]
            self._captured = (h, kwargs.get("position_embeddings"), kwargs.get("attention_mask"), cache)

    def _post_select(self, module, args, kwargs, output):
        if self._captured is None:
            return None
        h, pe, mask, cache = self._captured
        self._captured = None
        keys = None
        if cache is not None and len(getattr(cache, "layers", ())) > self.layer - 1:
            k = getattr(cache.layers[self.layer - 1], "keys", None)
            if k is not None and k.shape[-2] == h.shape[1]:
                keys = k  # (B, Hkv, N, Dh) written by this prefill
        with torch.no_grad():
            scores = last_token_attention(module, h, pe, mask, keys)  # (B, N)
        self.plan = top_r_plan(self.layouts, scores, self.budget)
        return None


def attach_fastv(model, layouts: Sequence[SampleLayout], budget: int, layer: int = 2, freeze: bool = False) -> FastVHandle:
    """FastV at layer K (selection from layer K-1's attention), keeping ``budget`` visual tokens."""
    return FastVHandle(model, layouts, budget, layer, freeze)
