"""CDPruner (Zhang et al., 2025, "Beyond Attention or Similarity: Maximizing Conditional Diversity
for Token Pruning in MLLMs"): a conditional DPP over an image's visual tokens, before the LLM.

Where: before the LLM, per image. What it scores (paper Sec. 3; official code
github.com/Theia-4869/CDPruner, ``encode_images`` in ``llava/model/llava_arch.py``):

- similarity ``S = cos(v_i, v_j)`` between the projector's outputs (the tokens as the LLM sees
  them);
- relevance ``r_i``: mean over the question's text embeddings of the cosine between token i and
  the text, min-max normalised to (0, 1]. **Sign**: the paper conditions on relevance, the
  official code uses ``-cos`` (``relevance = (-relevance).mean(dim=-1)``) before normalising; we
  follow the code (docs/baselines.md, "code vs paper");
- kernel ``L = diag(r) S diag(r)``; the R tokens are chosen by the greedy MAP inference of
  Chen et al. (2018), the incremental-Cholesky loop of the official code; ties go to the lowest
  index. The official code's optional ``theta`` re-weighting is commented out there; not used.

Question embedding. The official LLaVA code embeds the image with CLIP's projection head and the
question with CLIP's text tower, a second model the VLM does not contain. Here both sides are in
the LLM's input space: the image tokens are the projector's outputs and the question is the LLM's
input embeddings of the prompt's text tokens after the image (``options: {text: "after_image"}``,
default; ``"all"``: every real text token of the prompt). The official code normalises the
relevance over the whole batch tensor (its runs use batch 1); we normalise per image, so a
sample's choice does not depend on its batch.

Families: LLaVA-1.5, LLaVA-NeXT (all visual tokens of an image as one set; the official NeXT
code selects per tile), Qwen2-VL.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from crop.pruning.methods.before_llm import (
    FAMILIES_ALL, check_family, check_options, need_budget, run_before_llm, select,
)
from crop.pruning.registry import PruneRequest

FAMILIES = FAMILIES_ALL
TEXT_MODES = ("after_image", "all")


def relevance(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(n,) the official code's relevance: mean over text of ``-cos``, min-max normalised to (0, 1]."""
    img = image.float() / image.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    txt = text.float() / text.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    rel = (-(img @ txt.T)).mean(dim=-1)  # (n,) sign as in the official code
    span = rel.max() - rel.min()
    return (rel - rel.min() + 1e-6) / (span if span > 0 else torch.ones_like(span))


def dpp_kernel(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(n, n) conditional kernel ``diag(r) S diag(r)``."""
    img = image.float() / image.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = img @ img.T  # (n, n)
    rel = relevance(image, text)
    return rel[:, None] * sim * rel[None, :]


def greedy_map(kernel: torch.Tensor, budget: int) -> torch.Tensor:
    """Greedy MAP of a DPP (Chen et al. 2018, incremental Cholesky): indices in choice order."""
    n = kernel.shape[0]
    budget = min(budget, n)
    cis = torch.zeros(budget, n, dtype=kernel.dtype, device=kernel.device)
    di2 = torch.diagonal(kernel).clone()  # (n,) marginal gains
    chosen = []
    for i in range(budget):
        j = int(di2.argmax())
        chosen.append(j)
        e = (kernel[j] - cis[:i, j] @ cis[:i]) / di2[j].clamp_min(1e-12).sqrt()  # (n,)
        cis[i] = e
        di2 = di2 - e * e
        di2[j] = -float("inf")
    return torch.as_tensor(chosen, device=kernel.device)


def question_positions(cap, row: int, mode: str) -> np.ndarray:
    real = (cap.attention_mask[row] != 0).cpu().numpy()
    visual = np.zeros(real.size, dtype=bool)
    visual[cap.layouts[row].visual_positions] = True
    text = np.flatnonzero(real & ~visual)
    if mode == "after_image":
        after = text[text > int(cap.layouts[row].visual_positions.max())]
        if after.size:
            return after
    return text


@contextmanager
def attach(model: Any, inputs: dict, req: PruneRequest) -> Iterator:
    check_family(model, "cdpruner", FAMILIES)
    r = need_budget(req, "cdpruner")
    opts = check_options(req, "cdpruner", ("text",))
    mode = opts.get("text", "after_image")
    if mode not in TEXT_MODES:
        raise ValueError(f"cdpruner: options.text must be one of {TEXT_MODES}, got {mode!r}")

    def choose(cap, b, i, chunk):
        dev = cap.embeds.device
        img = cap.embeds[b, torch.as_tensor(chunk, device=dev)]  # (n, D)
        txt = cap.embeds[b, torch.as_tensor(question_positions(cap, b, mode), device=dev)]
        if txt.shape[0] == 0:
            raise ValueError(f"cdpruner: row {b} has no text tokens to condition on")
        return select(cap, b, chunk[greedy_map(dpp_kernel(img, txt), r).cpu().numpy()])

    with run_before_llm(model, inputs, choose) as run:
        yield run
