"""The "prune" baseline (paper Table 5): visual tokens outside the region never enter the LLM.

The merged multimodal embeddings are read at the entrance of the decoder stack (a one-shot
pre-hook that stops the forward there, so no decoder layer runs), then the dropped positions
are removed. The returned inputs go to ``model(**out)`` or ``model.generate(**out)``.

Positions: the language model numbers the shorter sequence contiguously, as if the image had
produced fewer tokens. For Qwen2-VL the original M-RoPE ids of the kept tokens are returned as
``position_ids`` (3, B, N_keep); ``generate`` (transformers 5) extends them by ``last + 1`` on all
three axes per new token, which is how the unpruned model numbers text after the image, so
``model.generate(**prune_inputs(...))`` works for Qwen2-VL too (tested against a hand loop).
All rows must keep the same number of tokens here (``ValueError`` otherwise).
"""

from __future__ import annotations

from typing import Mapping

import torch

from crop.pruning.plugin import decoder_layers, gather_seq, keep_index
from crop.pruning.region_map import KeepPlan


class _Captured(Exception):
    pass


def capture_llm_inputs(model: torch.nn.Module, inputs: Mapping) -> dict:
    """Run the model up to its decoder stack and return that stack's keyword inputs."""
    stack, _ = decoder_layers(model)
    got: dict = {}

    def hook(module, args, kwargs):
        got.update(kwargs)
        raise _Captured

    h = stack.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    except _Captured:
        pass
    finally:
        h.remove()
    if "inputs_embeds" not in got or got["inputs_embeds"] is None:
        raise RuntimeError(f"{type(model).__name__} did not pass inputs_embeds to its decoder stack")
    return got


def prune_inputs(model: torch.nn.Module, inputs: Mapping, plan: KeepPlan) -> dict:
    """Model inputs with the plan's dropped visual tokens removed before the LLM."""
    got = capture_llm_inputs(model, inputs)
    emb = got["inputs_embeds"]  # (B, N, D)
    batch, n = emb.shape[:2]
    idx = keep_index(plan, batch, n, emb.device)  # (B, N_keep)
    out = {"inputs_embeds": gather_seq(emb, idx, dim=1)}  # (B, N_keep, D)
    mask = inputs.get("attention_mask")
    if mask is not None:
        out["attention_mask"] = gather_seq(mask.to(emb.device), idx, dim=1)  # (B, N_keep)
    else:
        out["attention_mask"] = torch.ones(idx.shape, dtype=torch.long, device=emb.device)
    if getattr(model.config, "model_type", None) == "qwen2_vl":
        pid = got.get("position_ids")
        if pid is not None and pid.dim() == 3:
            out["position_ids"] = torch.stack([gather_seq(p, idx, dim=1) for p in pid])  # (3, B, N_keep)
    return out
