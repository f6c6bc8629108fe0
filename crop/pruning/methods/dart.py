"""DART (Wen et al., 2025, "Stop Looking for Important Tokens in Multimodal Language Models:
Duplication Matters More"): after layer K keep a few pivot tokens and the visual tokens least
duplicating them.

Paper Sec. 3: pivots are chosen by the norm of their keys; every other visual token is scored by
its cosine similarity to the pivots and the least similar (least duplicated) are kept. The
official code (github.com/ZichenWen1/DART; the same rule ported as ``DART`` in ModelTC/llmc,
``llmc/compression/token_reduction/dart.py``, ``get_retained_image_token``), defaults for
LLaVA-1.5: K = 2, 4 image pivots and 4 text pivots:

* pivots: the L1 norm of layer K-1's rotated keys (all heads concatenated); the top 4 image
  tokens, and the top 4 of the tokens after the image (the question);
* states compared: the hidden states entering layer K passed through the decoder's final norm;
* greedy over the pivots: each takes the ``TOPK = R // 8`` not-yet-chosen, non-pivot image tokens
  with the lowest cosine similarity to it; the text pivots themselves are not kept.

So DART keeps ``4 + 8 * (R // 8)`` visual tokens: its "64" keeps 68 (R = 64 -> 4 image pivots +
8 x 8), "128" keeps 132, "192" keeps 196 (docs/baselines.md; the rows report the real count).
``options``: ``pivot_image`` (4), ``pivot_text`` (4), ``freeze``.

Differences from the code: pivots are visited in ascending position order (the code iterates a
Python ``set``, whose order follows the integers' hashes); ties go to the lower position; kept
tokens keep their original positions (as the code, which gathers ``position_embeddings``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from crop.pruning.registry import PruneRequest

OPTIONS = ("pivot_image", "pivot_text", "freeze")


def dart_kept(budget: int, n: int, pivot_image: int = 4, pivot_text: int = 4) -> int:
    """Visual tokens DART keeps for budget R of ``n`` (before capping at what exists)."""
    return min(n, min(pivot_image, n) + (pivot_image + pivot_text) * (budget // (pivot_image + pivot_text)))


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values; ties to the lower index."""
    return np.argsort(-values, kind="stable")[:k]


def dart_select(key_l1: np.ndarray, states: np.ndarray, image: np.ndarray, text: np.ndarray, budget: int,
                pivot_image: int = 4, pivot_text: int = 4) -> np.ndarray:
    """The DART rule on one row, in slot coordinates; returns the kept image slots (sorted).

    ``key_l1`` (M,): L1 norm of layer K-1's keys per slot; ``states`` (M, D): normed hidden states
    entering layer K; ``image`` / ``text``: slots of the image tokens / of the tokens after them.
    """
    img_piv = image[_top(key_l1[image], min(pivot_image, image.size))]
    txt_piv = text[_top(key_l1[text], min(pivot_text, text.size))]
    topk = budget // (pivot_image + pivot_text)
    unit = states / np.maximum(np.linalg.norm(states, axis=-1, keepdims=True), 1e-8)  # cosine via unit rows
    kept = set(img_piv.tolist())
    valid = np.setdiff1d(image, img_piv)  # ascending
    for p in sorted(set(img_piv.tolist()) | set(txt_piv.tolist())):
        if valid.size == 0 or topk == 0:
            break
        sim = unit[valid] @ unit[p]  # (V,)
        pick = valid[_top(-sim, min(topk, valid.size))]
        kept.update(pick.tolist())
        valid = np.setdiff1d(valid, pick)
    return np.array(sorted(kept), dtype=np.int64)


class DARTSelector:
    def __init__(self, layer: int, budget: int, pivot_image: int, pivot_text: int):
        self.capture_layers = (layer - 1,)
        self.budget, self.pivot_image, self.pivot_text = budget, pivot_image, pivot_text

    def select(self, ctx):
        from crop.pruning.staged import Selection, layer_keys

        k = ctx.layer
        h_prev, kw_prev = ctx.captured[k - 1]  # layer K-1 ran on the full sequence
        keys = layer_keys(ctx.handle._layers[k - 1], h_prev, kw_prev["position_embeddings"])  # (B, Hkv, N, Dh)
        key_l1 = keys.transpose(1, 2).flatten(2).float().abs().sum(-1).cpu().numpy()  # (B, N); fp32: no fp16 overflow
        states = ctx.handle._stack.norm(ctx.hidden).float().cpu().numpy()  # (B, N, D)
        out = []
        for b in range(states.shape[0]):
            real = ctx.real(b)
            offset = ctx.slots.shape[1] - real.size
            image = offset + np.searchsorted(real, ctx.candidates[b])
            text = offset + np.flatnonzero(real > ctx.candidates[b].max()) if ctx.candidates[b].size else image[:0]
            kept = dart_select(key_l1[b], states[b], image, text, self.budget, self.pivot_image, self.pivot_text)
            slots = ctx.slots[b].cpu().numpy()
            out.append(Selection(np.sort(slots[kept])))
        return out


@contextmanager
def attach(model: Any, inputs: dict, req: PruneRequest) -> Iterator[Any]:
    from crop.pruning import token_layout
    from crop.pruning.methods.builtin import Run, num_decoder_layers
    from crop.pruning.staged import StagedHandle, check_options, staged_rows

    opts = dict(req.options)
    check_options(opts, OPTIONS, "dart")
    if req.budget is None:
        raise ValueError("dart needs a budget R")
    layers_n = num_decoder_layers(model)
    layouts = token_layout(model, inputs)
    sel = DARTSelector(req.layer, int(req.budget), int(opts.get("pivot_image", 4)), int(opts.get("pivot_text", 4)))
    handle = StagedHandle(model, layouts, [req.layer], sel, freeze=bool(opts.get("freeze", False)), name="DART")
    with handle:
        yield Run(inputs, lambda: staged_rows(handle, layouts, layers_n))
