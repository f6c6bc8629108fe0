"""downsample: each image's token grid average-pooled to about R tokens, before the LLM.

The second sanity baseline of the 2025 benchmark studies: VTC-Bench (Liao et al., 2025, "Are We
Using the Right Benchmark", arXiv 2510.07143) finds that plain image downsampling beats many
token-compression methods; they downsample the image fed to Qwen2-VL (native resolution, so a
smaller image gives fewer tokens). LLaVA-1.5's CLIP takes a fixed 336-px input (the processor
resizes any image back to it), so there a smaller image cannot give fewer tokens; the token-level
equivalent, and what we do for every family so one rule holds, is to average-pool the image's
token grid (the projector's outputs, what the LLM reads) to an ``h' x w'`` grid:

    h' = clip(round(sqrt(R * h / w)), 1, h),   w' = clip(R // h', 1, w)

(aspect kept; 24 x 24 -> 8 x 8 = 64 at R = 64, 11 x 11 = 121 at R = 128, 14 x 13 = 182 at
R = 192: "about R", the row reports the count). Pooling windows are those of
``torch.nn.functional.adaptive_avg_pool2d`` (rows ``floor(i h / h')`` .. ``ceil((i+1) h / h')``).
LLaVA-NeXT: the base view and the high-resolution view are pooled separately, R split in
proportion to their grid tokens; the newline tokens are dropped. Qwen2-VL: the pooled token
(i, j) gets the M-RoPE ids ``(t0, h0 + i, w0 + j)`` of a resized image whose grid starts where
the original one did; text tokens keep their ids.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from crop.pruning.methods.before_llm import (
    FAMILIES_ALL, ImageTokens, check_family, check_options, need_budget, run_before_llm,
)
from crop.pruning.registry import PruneRequest

FAMILIES = FAMILIES_ALL


def pooled_grid(h: int, w: int, budget: int) -> tuple[int, int]:
    """(h', w') with h' * w' <= budget (when budget >= 1), aspect close to h : w."""
    hp = min(max(int(round(math.sqrt(budget * h / w))), 1), h)
    wp = min(max(budget // hp, 1), w)
    return hp, wp


def pool_view(grid: torch.Tensor, budget: int) -> torch.Tensor:
    """(h, w, D) -> (h', w', D) adaptive average pooling."""
    h, w, _ = grid.shape
    hp, wp = pooled_grid(h, w, budget)
    x = grid.permute(2, 0, 1).unsqueeze(0).float()  # (1, D, h, w)
    return F.adaptive_avg_pool2d(x, (hp, wp))[0].permute(1, 2, 0).to(grid.dtype)  # (h', w', D)


def split_budget(counts: list[int], budget: int) -> list[int]:
    total = sum(counts)
    return [max(1, int(round(budget * c / total))) for c in counts]


@contextmanager
def attach(model: Any, inputs: dict, req: PruneRequest) -> Iterator:
    check_family(model, "downsample", FAMILIES)
    r = need_budget(req, "downsample")
    check_options(req, "downsample", ())

    def choose(cap, b, i, chunk):
        lo, hi = int(chunk[0]), int(chunk[-1])
        views = [v for v in cap.layouts[b].views if lo <= int(v.positions.min()) <= hi]
        budgets = split_budget([int(v.positions.size) for v in views], r)
        embs, pids = [], []
        for view, rv in zip(views, budgets):
            pos = torch.as_tensor(view.positions, device=cap.embeds.device)  # (h, w)
            pooled = pool_view(cap.embeds[b][pos], rv)  # (h', w', D)
            hp, wp = pooled.shape[:2]
            embs.append(pooled.reshape(hp * wp, -1))
            if cap.position_ids is not None:
                origin = cap.position_ids[:, b, int(view.positions[0, 0])]  # (P,) ids of the top-left token
                ii, jj = np.meshgrid(np.arange(hp), np.arange(wp), indexing="ij")
                pid = origin[:, None].repeat(1, hp * wp).clone()  # (P, h' w')
                pid[-2] += torch.as_tensor(ii.reshape(-1), device=pid.device, dtype=pid.dtype)  # height axis
                pid[-1] += torch.as_tensor(jj.reshape(-1), device=pid.device, dtype=pid.dtype)  # width axis
                pids.append(pid)
        return ImageTokens(torch.cat(embs), torch.cat(pids, dim=1) if pids else None)

    with run_before_llm(model, inputs, choose) as run:
        yield run
