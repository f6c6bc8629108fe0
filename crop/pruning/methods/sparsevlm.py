"""SparseVLM (Zhang et al., ICML 2025): question tokens that attend to the image ("raters") score
the visual tokens at several layers; part of the deleted tokens is recycled (merged).

We follow **version 1.0** of the official code (github.com/Gumpest/SparseVLMs, default
``USE_VERSION=1_0``; ``llava/model/language_model/modelling_sparse_llama.py`` and ``score.py``),
the version the ICML paper reports (v1.5 / "2_0" changes the schedules, drops the recycling and
selects heads):

* raters (paper Sec. 3.2): once per prompt, from the embeddings entering layer 0: ``m =
  softmax_text(V @ T^T)`` averaged over the visual tokens; the text tokens after the image with
  ``m > mean(m)`` rate;
* at each pruning layer p (``pruning_loc = [2, 6, 15]`` for 32 layers) layer p runs on the current
  tokens; its attention probabilities (heads averaged) from the raters to the visual tokens,
  averaged over the raters, rank them; the top ``k`` are kept from layer p + 1 on;
* recycling (Sec. 3.4, ``cluster_and_merge``): of the deleted tokens the top 30 % (+1) by that
  score are clustered (density-peaks kNN on layer p's output states, ``int(m / 10) + 1``
  clusters) and each cluster's average joins the kept tokens.

Budgets. The code's named budgets are per-stage top-k lists ``{192: [300, 200, 110], 128: [303,
110, 36], 96: [238, 48, 26], 64: [66, 30, 17]}`` chosen so the *layer-averaged* count is about the
name (its comment: ``2*576 4*300 10*200 16*110``); after the last stage "64" keeps 17 + recycled.
``options.schedule``:

* ``"kept"`` (default): R is the count after the last stage, recycled tokens included (the same
  convention as every other method here); stages aim at ``n * (R/n) ** (s/3)``; at each stage the
  top-k count is chosen so that top-k + clusters is exactly the target;
* ``"official"``: R must be one of 64 / 96 / 128 / 192; the top-k lists above (scaled by n / 576)
  and the code's cluster count (rows then report the real kept and layer-averaged counts).

Other ``options``: ``layers`` (first layer of each stage = p + 1; default 3 / 7 / 16 of 32,
scaled), ``counts`` (per-stage targets), ``recycle`` (True), ``freeze``.

Differences from the code (docs/baselines.md): each recycled token sits at the position of its
cluster centre (the code appends the merged tokens after the kept visual tokens and renumbers all
positions 0..M-1); no random jitter of the densities (equal densities are common: two mutual
nearest neighbours; ties go to the lower position); any batch
size (the code runs batch 1).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from crop.pruning.registry import PruneRequest

OFFICIAL_PRUNING_LOC = (2, 6, 15)  # layers whose attention ranks; pruned from the next layer on
OFFICIAL_TOPK = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}
MERGE_FRACTION = 0.3
CLUSTER_DIVISOR = 10
OPTIONS = ("schedule", "layers", "counts", "recycle", "freeze")


def n_clusters(deleted: int) -> int:
    """The code's cluster count for ``deleted`` tokens: ``int(int(0.3 d + 1) / 10) + 1`` (0 if none)."""
    if deleted <= 0:
        return 0
    return int((int(deleted * MERGE_FRACTION) + 1) / CLUSTER_DIVISOR) + 1


def merge_count(deleted: int) -> int:
    return int(deleted * MERGE_FRACTION) + 1 if deleted > 0 else 0


def split_target(present: int, target: int, recycle: bool) -> tuple[int, int]:
    """(top-k, clusters) with top-k + clusters == ``target`` (``present`` tokens now)."""
    if target >= present:
        return present, 0
    if not recycle:
        return target, 0
    for k in range(target, -1, -1):
        if k + n_clusters(present - k) <= target:
            return k, target - k
    return 0, target


def raters_of(embeds: np.ndarray, image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Rater slots among ``text`` (Sec. 3.2): softmax over text of V @ T^T, mean over V, > mean."""
    if text.size == 0:
        return text
    rel = embeds[image] @ embeds[text].T  # (V, T)
    rel = np.exp(rel - rel.max(axis=1, keepdims=True))
    m = (rel / rel.sum(axis=1, keepdims=True)).mean(axis=0)  # (T,)
    picked = text[m > m.mean()]
    return picked if picked.size else text  # all equal: every text token rates


def dpc_knn(x: np.ndarray, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Density-peaks clustering with kNN density (``cluster_and_merge``): (centre rows, label per row).

    ``x`` (m, C). Distances are Euclidean / sqrt(C); density = exp(-mean squared distance to the
    ``clusters`` nearest (self included)); a token's parent distance is the distance to the nearest
    denser token (the largest distance if none); centres = top ``clusters`` of distance x density;
    every token joins its nearest centre, centres themselves.
    """
    m, c = x.shape
    # pairwise distances through the Gram matrix (float64): (m, m) memory, where the broadcast
    # difference (m, m, C) held ~4 GB for ~500 deleted tokens at C = 4096
    x64 = np.asarray(x, dtype=np.float64)
    sq = (x64 * x64).sum(1)  # (m,)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x64 @ x64.T)  # (m, m)
    np.fill_diagonal(d2, 0.0)
    d = np.sqrt(np.maximum(d2, 0.0)) / np.sqrt(c)  # (m, m)
    near = np.sort(d, axis=1)[:, :clusters]
    density = np.exp(-(near ** 2).mean(axis=1))  # (m,)
    denser = density[None, :] > density[:, None]  # (m, m): [i, j] j denser than i
    parent = np.where(denser, d, d.max()).min(axis=1)  # (m,)
    score = parent * density
    centres = np.argsort(-score, kind="stable")[:clusters]
    labels = np.argmin(d[centres], axis=0)  # (m,) index into centres
    labels[centres] = np.arange(centres.size)
    return centres, labels


def sparsevlm_select(relation: np.ndarray, states: np.ndarray, cand: np.ndarray, topk: int, clusters: int
                     ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """One stage of one row in slot coordinates: (kept candidate slots, {centre slot: member slots}).

    ``relation`` (M,): the raters' mean attention per slot; ``cand``: candidate (visual) slots.
    """
    order = np.argsort(-relation[cand], kind="stable")
    keep = cand[order[:topk]]
    deleted = cand[order[topk:]]
    merged: dict[int, np.ndarray] = {}
    if clusters and deleted.size:
        pool = np.sort(deleted[:merge_count(deleted.size)])  # top 30 % (+1) by score, in position order
        centres, labels = dpc_knn(states[pool], min(clusters, pool.size))
        for j, ci in enumerate(centres):
            merged[int(pool[ci])] = np.sort(pool[labels == j])
    return np.sort(np.concatenate([keep, np.array(sorted(merged), dtype=np.int64)])), merged


class SparseVLMSelector:
    def __init__(self, stages: list[int], targets: list[list[int]], official: list[list[int]] | None, recycle: bool):
        self.capture_layers = tuple(sorted({0, *(s - 1 for s in stages)}))
        self.targets, self.official, self.recycle = targets, official, recycle
        self.raters: list[np.ndarray] = []  # per batch row: rater positions (absolute)

    def select(self, ctx):
        from crop.pruning.staged import Selection, rows_attention

        batch = ctx.hidden.shape[0]
        rep = batch // len(self.targets)
        if ctx.stage == 0:  # raters from the embeddings entering layer 0 (full sequence)
            emb = ctx.captured[0][0].float().cpu().numpy()  # (B, N, D)
            self.raters = []
            for b in range(batch):
                real = ctx.real(b)
                cand = ctx.candidates[b]
                text = real[real > cand.max()] if cand.size else real[:0]
                self.raters.append(raters_of(emb[b], cand, text))  # full slots: slot == position
        h_p, kw_p = ctx.captured[ctx.layer - 1]  # layer p ran on the current slots
        layer = ctx.handle._layers[ctx.layer - 1]
        states = ctx.hidden.float().cpu().numpy()  # (B, M, D): layer p's output
        out = []
        for b in range(batch):
            real = ctx.real(b)
            offset = ctx.slots.shape[1] - real.size
            rows = torch.as_tensor(offset + np.searchsorted(real, self.raters[b]), device=h_p.device)[None]
            cos, sin = kw_p["position_embeddings"]
            mask = kw_p.get("attention_mask")
            att = rows_attention(layer, h_p[b:b + 1], (cos[b:b + 1] if cos.shape[0] > 1 else cos,
                                                      sin[b:b + 1] if sin.shape[0] > 1 else sin),
                                 None if mask is None else mask[b:b + 1], rows)  # (1, Q, M)
            relation = att[0].mean(0).cpu().numpy()  # (M,)
            cand = offset + np.searchsorted(real, ctx.candidates[b])
            if self.official is not None:
                topk = min(self.official[b // rep][ctx.stage], cand.size - 1)
                clusters = n_clusters(cand.size - topk) if self.recycle else 0
            else:
                topk, clusters = split_target(cand.size, self.targets[b // rep][ctx.stage], self.recycle)
            kept, merged = sparsevlm_select(relation, states[b], cand, max(topk, 0), clusters)
            slots = ctx.slots[b].cpu().numpy()
            out.append(Selection(slots[kept], {int(slots[c]): slots[m] for c, m in merged.items()}))
        return out


@contextmanager
def attach(model: Any, inputs: dict, req: PruneRequest) -> Iterator[Any]:
    from crop.pruning import token_layout
    from crop.pruning.methods.builtin import Run, num_decoder_layers
    from crop.pruning.staged import StagedHandle, check_options, geometric_counts, scaled_layers, staged_rows

    opts = dict(req.options)
    check_options(opts, OPTIONS, "sparsevlm")
    layers_n = num_decoder_layers(model)
    stages = ([int(x) for x in opts["layers"]] if "layers" in opts
              else scaled_layers([p + 1 for p in OFFICIAL_PRUNING_LOC], layers_n))
    layouts = token_layout(model, inputs)
    schedule = opts.get("schedule", "kept")
    official = None
    if schedule == "official":
        if req.budget not in OFFICIAL_TOPK or len(stages) != 3:
            raise ValueError(f"sparsevlm schedule 'official' needs R in {sorted(OFFICIAL_TOPK)} and 3 stages")
        official = [[max(1, round(k * lay.num_visual / 576)) for k in OFFICIAL_TOPK[req.budget]] for lay in layouts]
        targets = official
    elif schedule == "kept":
        if "counts" in opts:
            targets = [[int(c) for c in opts["counts"]] for _ in layouts]
            if len(targets[0]) != len(stages):
                raise ValueError(f"sparsevlm: {len(targets[0])} per-stage counts for {len(stages)} stages")
        elif req.budget is None:
            raise ValueError("sparsevlm needs a budget R (or options.counts)")
        else:
            targets = [geometric_counts(lay.num_visual, req.budget, len(stages)) for lay in layouts]
    else:
        raise ValueError(f"sparsevlm: options.schedule must be 'kept' or 'official', got {schedule!r}")
    sel = SparseVLMSelector(stages, targets, official, bool(opts.get("recycle", True)))
    handle = StagedHandle(model, layouts, stages, sel, freeze=bool(opts.get("freeze", False)), name="SparseVLM")
    with handle:
        yield Run(inputs, lambda: staged_rows(handle, layouts, layers_n))
