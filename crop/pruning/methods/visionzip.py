"""VisionZip (Yang et al., CVPR 2025): dominant tokens by the encoder's [CLS] attention plus
contextual tokens merged by key similarity, before the LLM.

Where: in the vision tower's output, before the projector (so before the LLM), per image.
What it scores (paper Sec. 3.2; official code github.com/dvlab-research/VisionZip,
``visionzip/clip_encoder.py`` and ``visionzip/utils.py``), at the encoder layer whose output
LLaVA feeds the projector (``vision_feature_layer``, -2):

- dominant: the [CLS] token plus the ``dominant - 1`` patches with the most [CLS] attention
  (attention of that layer, the [CLS] query row, summed over heads);
- contextual: the remaining tokens in index order; ``contextual`` targets are taken every
  ``max(1, n_rest // contextual)``-th of them, every other remaining token joins the target whose
  key (that layer's keys, averaged over heads, L2-normalised) is most similar, and each target
  becomes the mean of itself and its members.

The ``dominant + contextual`` vectors (dominant in index order, [CLS] first, then contextual)
go through the model's projector and replace the image's tokens. **The count includes [CLS]**:
the official ``visionzip(model, dominant=54, contextual=10)`` keeps [CLS] + 53 patches + 10
merged = 64 vectors (its ``apply_info`` stores ``dominant - 1`` for the top-k). Defaults follow
the official splits 54/10, 108/20, 162/30 for R = 64/128/192, i.e. ``dominant = round(R * 27 /
32)``, ``contextual = R - dominant``; ``options: {dominant: D, contextual: C}`` overrides
(D + C = R). ``options: {projector: PATH}`` loads a projector fine-tuned on the pruned tokens
(VisionZip‡, ``crop train-projector``'s ``projector.safetensors``, or a ``torch.save``'d
state dict read with ``weights_only=True``). Families: LLaVA-1.5 only (LLaVA-NeXT's per-tile selection and Qwen2-VL,
whose encoder has no [CLS], are not implemented: docs/baselines.md).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from crop.pruning.methods.before_llm import (
    ImageTokens, check_family, check_options, need_budget, run_before_llm,
)
from crop.pruning.registry import PruneRequest

FAMILIES = ("llava",)


def split_budget(budget: int) -> tuple[int, int]:
    """(dominant incl. [CLS], contextual) of the official 54/10-108/20-162/30 splits."""
    dominant = min(max(int(round(budget * 27 / 32)), 1), budget)
    return dominant, budget - dominant


def encoder_layer_index(num_layers: int, feature_layer: int) -> int:
    """The encoder layer whose output is ``hidden_states[feature_layer]`` (entry 0 = embeddings)."""
    k = feature_layer % (num_layers + 1)
    if k == 0:
        raise ValueError("vision_feature_layer 0 is the patch embeddings: VisionZip needs an attention layer")
    return k - 1


@torch.no_grad()
def vision_signals(model: Any, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: hidden states of the feature layer (I, S, Dv), [CLS] attention summed over heads
    (I, S), keys averaged over heads (I, S, hd); S = 1 + patches."""
    cfg = model.config
    layer_cfg = cfg.vision_feature_layer
    if not isinstance(layer_cfg, int):
        raise ValueError(f"visionzip needs one vision_feature_layer, got {layer_cfg!r}")
    tower = model.model.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers  # 5.x: encoder on the model itself
    attn = layers[encoder_layer_index(len(layers), layer_cfg)].self_attn
    got: dict = {}
    hooks = [attn.q_proj.register_forward_hook(lambda m, a, o: got.__setitem__("q", o)),
             attn.k_proj.register_forward_hook(lambda m, a, o: got.__setitem__("k", o))]
    try:
        out = tower(pixel_values.to(tower.dtype), output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    hidden = out.hidden_states[layer_cfg]  # (I, S, Dv)
    heads = getattr(attn, "num_heads", None) or cfg.vision_config.num_attention_heads
    i, s, e = got["k"].shape
    k = got["k"].float().view(i, s, heads, e // heads)  # (I, S, H, hd)
    q = got["q"].float().view(i, s, heads, e // heads)
    logits = torch.einsum("ihd,ishd->ihs", q[:, 0], k) * (e // heads) ** -0.5  # [CLS] query row
    cls_attn = logits.softmax(dim=-1).sum(dim=1)  # (I, S) summed over heads
    return hidden, cls_attn, k.mean(dim=2)


def visionzip_tokens(hidden: torch.Tensor, cls_attn: torch.Tensor, keys: torch.Tensor,
                     dominant: int, contextual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: (dominant + contextual, Dv) vectors and the dominant indices (sorted, 0 = [CLS])."""
    s = hidden.shape[0]
    dominant = min(dominant, s)
    top = torch.topk(cls_attn[1:], dominant - 1).indices + 1 if dominant > 1 else cls_attn.new_zeros(0).long()
    dom = torch.sort(torch.cat([torch.zeros(1, dtype=torch.long, device=hidden.device), top])).values
    rest_mask = torch.ones(s, dtype=torch.bool, device=hidden.device)
    rest_mask[dom] = False
    rest = torch.nonzero(rest_mask).flatten()  # remaining token indices, in order
    out = [hidden[dom]]
    contextual = min(contextual, rest.numel())
    if contextual > 0:
        metric = keys[rest].float()
        metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (n_rest, hd)
        step = max(1, rest.numel() // contextual)
        tgt = torch.arange(0, rest.numel(), step, device=hidden.device)[:contextual]
        is_tgt = torch.zeros(rest.numel(), dtype=torch.bool, device=hidden.device)
        is_tgt[tgt] = True
        others = torch.nonzero(~is_tgt).flatten()
        assign = (metric[others] @ metric[tgt].T).argmax(dim=-1)  # (n_other,) target of each
        feats = hidden[rest].float()
        sums = feats[tgt].clone().index_add_(0, assign, feats[others])
        counts = 1 + torch.bincount(assign, minlength=contextual).to(sums.dtype)
        out.append((sums / counts[:, None]).to(hidden.dtype))
    return torch.cat(out), dom


def load_projector(model: Any, path: str) -> torch.nn.Module:
    """A copy of the model's projector with the fine-tuned weights at ``path`` (VisionZip‡)."""
    proj = copy.deepcopy(model.model.multi_modal_projector)
    if str(path).endswith(".safetensors"):  # what crop train-projector exports
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    proj.load_state_dict(state)  # strict: a projector of another shape is refused
    return proj.to(next(model.model.multi_modal_projector.parameters()).device)


@contextmanager
def attach(model: Any, inputs: dict, req: PruneRequest) -> Iterator:
    check_family(model, "visionzip", FAMILIES)
    r = need_budget(req, "visionzip")
    opts = check_options(req, "visionzip", ("dominant", "contextual", "projector"))
    dominant, contextual = split_budget(r)
    if "dominant" in opts or "contextual" in opts:
        dominant = int(opts.get("dominant", r - int(opts.get("contextual", 0))))
        contextual = int(opts.get("contextual", r - dominant))
        if dominant < 1 or contextual < 0 or dominant + contextual != r:
            raise ValueError(f"visionzip: dominant ({dominant}) + contextual ({contextual}) must equal R ({r}), dominant >= 1")
    projector = load_projector(model, opts["projector"]) if opts.get("projector") else model.model.multi_modal_projector
    state: dict = {}

    def prepare(cap):
        hidden, cls_attn, keys = vision_signals(model, inputs["pixel_values"].to(cap.embeds.device))
        state.update(hidden=hidden, cls_attn=cls_attn, keys=keys, image=0, dominant={})

    def choose(cap, b, i, chunk):
        k = state["image"]
        state["image"] += 1
        feats, dom = visionzip_tokens(state["hidden"][k], state["cls_attn"][k], state["keys"][k], dominant, contextual)
        state["dominant"][k] = dom
        with torch.no_grad():
            emb = projector(feats.unsqueeze(0))[0]  # (D + C, D_llm)
        return ImageTokens(emb, None)

    with run_before_llm(model, inputs, choose, prepare) as run:
        run.extra = [{"dominant": dominant, "contextual": contextual} for _ in run.n_in]
        yield run
