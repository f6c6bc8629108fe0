"""DivPrune (Alvar et al., CVPR 2025): keep the R most diverse visual tokens, before the LLM.

Where: before the LLM, per image. What it scores: pairwise cosine *distance* ``1 - cos`` between
the image's tokens as they enter the LLM (the projector's outputs: the official LLaVA code prunes
the output of ``encode_images``, i.e. vision tower + projector). Rule (paper Sec. 3, a greedy
solution of the Max-Min Diversity Problem; official repo github.com/vbdi/divprune, ``DivPrune``
in ``llava/model/llava_arch.py``): the first token is the one whose nearest other token is
farthest (second-smallest entry of its distance column, the smallest being itself); every next
token maximises its minimum distance to the tokens already chosen; ties go to the lowest index
(``argmax``). The kept tokens enter the LLM in their original order. Defaults: none besides R
(the paper sets R through a pruning ratio; here R is given directly). No text is used.
Families: LLaVA-1.5, LLaVA-NeXT (all visual tokens of an image, newline tokens included, as one
set) and Qwen2-VL (the merger's outputs).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from crop.pruning.methods.before_llm import (
    FAMILIES_ALL, check_family, check_options, need_budget, run_before_llm, select,
)
from crop.pruning.registry import PruneRequest

FAMILIES = FAMILIES_ALL


def divprune_select(features: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices (in choice order) of the ``budget`` max-min diverse rows of ``features`` (n, D)."""
    n = features.shape[0]
    if n <= budget:
        return torch.arange(n, device=features.device)
    f = features.float()
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    dist = 1.0 - f @ f.T  # (n, n) cosine distance
    chosen = [int(torch.topk(dist, 2, dim=0, largest=False).values[1].argmax())]
    nearest = dist[chosen[0]].clone()  # (n,) min distance to the chosen set
    for _ in range(budget - 1):
        j = int(nearest.argmax())
        chosen.append(j)
        nearest = torch.minimum(nearest, dist[j])
    return torch.as_tensor(chosen, device=features.device)


@contextmanager
def attach(model: Any, inputs: dict, req: PruneRequest) -> Iterator:
    check_family(model, "divprune", FAMILIES)
    r = need_budget(req, "divprune")
    check_options(req, "divprune", ())

    def choose(cap, b, i, chunk):
        pos = torch.as_tensor(chunk, device=cap.embeds.device)
        return select(cap, b, chunk[divprune_select(cap.embeds[b, pos], r).cpu().numpy()])

    with run_before_llm(model, inputs, choose) as run:
        yield run
