"""ViCrop's relative attention for the ``self`` region source (option ``relative``).

A VLM's attention over image tokens is partly the same whatever the question (attention sinks,
salient but irrelevant objects). ViCrop ("MLLMs know where to look", ICLR 2025) divides the
question's attention map by the map under a generic instruction about the same image; the
quotient is high where *this question* looks. Here:

* the generic prompt is the row's own prompt up to and including its image tokens (template
  prefix, image), followed by the tokens the frontend's template puts after the image for the
  generic instruction (``processor.prompt(text, True)`` tokenized by ``processor.tokenizer``,
  everything after its last image placeholder): the same template, the same image, another
  instruction;
* one extra forward pass per image, stopped at layer S (the layers after S never run), batch 1,
  on the row's own pixel inputs; its head-averaged last-token attention over the image tokens
  is cached per (model, S, query rows, heads, generic ids, pixel bytes), so a benchmark that
  asks several questions about one image pays once;
* :class:`crop.pruning.methods.self_region.SelfRegionHandle` divides the question's visual
  attention by it (``max(generic, 1e-8)``) before the block mapping.

One image per row (a multi-image row raises). Whether the quotient localizes better than the
plain attention is for real weights to show.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch

from crop.pruning.layout import SampleLayout

GENERIC_PROMPT = "Write a general description of the image."  # ViCrop's generic instruction
CACHE_SIZE = 256
_CACHE: "OrderedDict[tuple, np.ndarray]" = OrderedDict()


class _StopAtLayer(Exception):
    """Raised by the capture hook after layer S: the generic pass needs no later layer."""


def generic_ids(real_ids: Sequence[int], processor: Any, text: str, image_token_id: int) -> list[int]:
    """The row's prompt up to its last image token, then the template's tokens after the image
    for the instruction ``text``."""
    if not (hasattr(processor, "prompt") and hasattr(processor, "tokenizer")):
        raise ValueError("option 'relative' needs the model's frontend (request.processor with .prompt and "
                         ".tokenizer) to write the generic prompt")
    tok = processor.tokenizer(processor.prompt(text, True), add_special_tokens=False)["input_ids"]
    at = [i for i, t in enumerate(tok) if t == image_token_id]
    if not at:
        raise ValueError(f"the frontend's prompt for {text!r} holds no image placeholder (id {image_token_id})")
    real = [int(t) for t in real_ids]
    last = max(i for i, t in enumerate(real) if t == image_token_id)
    return real[: last + 1] + [int(t) for t in tok[at[-1] + 1:]]


def row_pixel_inputs(model: Any, inputs: dict, image_index: int) -> dict:
    """The pixel inputs of one image of the batch (shapes as for a batch of one)."""
    family = model.config.model_type
    if family == "llava":
        return {"pixel_values": inputs["pixel_values"][image_index: image_index + 1]}
    if family == "llava_next":
        return {"pixel_values": inputs["pixel_values"][image_index: image_index + 1],
                "image_sizes": inputs["image_sizes"][image_index: image_index + 1]}
    thw = inputs["image_grid_thw"]  # (I, 3): patches per image = t * h * w rows of pixel_values
    ends = torch.cumsum(thw.prod(dim=1), 0)
    start = 0 if image_index == 0 else int(ends[image_index - 1])
    return {"pixel_values": inputs["pixel_values"][start: int(ends[image_index])],
            "image_grid_thw": thw[image_index: image_index + 1]}


def _layer_s_attention(model: Any, g: dict, self_layer: int, query_rows: int, heads: Any) -> np.ndarray:
    """Head-reduced attention (N,) of the last token(s) at layer S for the batch-1 inputs ``g``."""
    from crop.pruning.methods.self_region import query_attention, reduce_heads
    from crop.pruning.plugin import decoder_layers

    layer = decoder_layers(model)[1][self_layer]
    got: dict = {}

    def pre(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        got["in"] = (h, kwargs.get("position_embeddings"), kwargs.get("attention_mask"))

    def post(module, args, kwargs, output):
        h, pe, mask = got["in"]
        got["row"] = reduce_heads(query_attention(module, h, pe, mask, None, query_rows), heads)[0]
        raise _StopAtLayer

    hooks = [layer.register_forward_pre_hook(pre, with_kwargs=True),
             layer.register_forward_hook(post, with_kwargs=True)]
    try:
        with torch.no_grad():
            model(**g, use_cache=False)
    except _StopAtLayer:
        pass
    finally:
        for hk in hooks:
            hk.remove()
    if "row" not in got:
        raise RuntimeError(f"the generic pass did not reach layer S={self_layer}")
    return got["row"].float().cpu().numpy()


def generic_visual_attention(model: Any, inputs: dict, layouts: Sequence[SampleLayout], processor: Any, text: str,
                             *, self_layer: int, query_rows: int, heads: Any) -> list[np.ndarray]:
    """Per row: the attention ``(V,)`` on its image tokens under the generic prompt (cached)."""
    from crop.pruning.guards import image_token_id_of

    img_id = image_token_id_of(model)
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    out = []
    for b, lay in enumerate(layouts):
        if len(lay.image_indices) != 1:
            raise ValueError(f"option 'relative' takes one image per row; row {b} has {len(lay.image_indices)}")
        real = ids[b] if mask is None else ids[b][mask[b].bool()]  # (N_b,) without left padding
        gen = generic_ids(real.tolist(), processor, text, img_id)
        pix = row_pixel_inputs(model, inputs, lay.image_indices[0])
        digest = hashlib.sha1(np.asarray(gen, np.int64).tobytes())
        for v in pix.values():
            digest.update(v.detach().float().cpu().numpy().tobytes())
        key = (id(model), self_layer, query_rows, str(heads), digest.hexdigest())
        if key not in _CACHE:
            gid = torch.tensor([gen], device=ids.device)  # (1, N_g)
            g = {"input_ids": gid, "attention_mask": torch.ones_like(gid), **pix}
            if "mm_token_type_ids" in inputs:
                g["mm_token_type_ids"] = (gid == img_id).to(inputs["mm_token_type_ids"].dtype)
            row = _layer_s_attention(model, g, self_layer, query_rows, heads)  # (N_g,)
            _CACHE[key] = row[np.flatnonzero(np.asarray(gen) == img_id)]
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        vis = _CACHE[key]
        if vis.shape != lay.visual_positions.shape:
            raise ValueError(f"row {b}: the generic prompt has {vis.size} image tokens, the row {lay.num_visual}")
        out.append(vis)
    return out
