"""What the before-the-LLM methods share: read what enters the decoder, replace each image's tokens.

random_tokens, downsample, visionzip, divprune and cdpruner all act on the sequence that enters
the language model. Each one decides, per image of every batch row, which vectors stand for the
image (a subset of its tokens, or new pooled / merged vectors); this module does the rest:

- :func:`capture` runs the model up to its decoder stack (``crop.pruning.prune.capture_llm_inputs``)
  and keeps the merged embeddings, the attention mask, Qwen2-VL's M-RoPE ids and the token layout;
- :func:`image_chunks` splits a row's visual positions into its images (R is per image);
- :func:`assemble` builds the model inputs: each row's real text tokens in order, each image's
  tokens replaced by what the method chose, rows left-padded to the longest (mask 0).

Positions. Kept tokens keep their M-RoPE ids on Qwen2-VL (as in ``prune_inputs``); new vectors
carry the ids the method gives them. LLaVA / LLaVA-NeXT rows are numbered contiguously over the
shorter sequence (what the official VisionZip / DivPrune / CDPruner LLaVA code does: it feeds
fewer image features), and ``position_ids`` ``(B, M)`` are passed explicitly
(``cumsum(mask) - 1``, the rule ``generate`` itself uses), so a forward without ``generate``
numbers left-padded rows the same way. A row in a ragged batch therefore sees exactly the inputs
it sees at batch size 1 (up to the masked padding slots).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from crop.pruning.registry import PruneRequest

FAMILIES_ALL = ("llava", "llava_next", "qwen2_vl")


@dataclass
class LLMInputs:
    """The decoder's inputs for the unpruned prompt (one forward up to the first decoder layer)."""

    embeds: torch.Tensor                 # (B, N, D) text + projected image features
    attention_mask: torch.Tensor         # (B, N) 1 = real token
    position_ids: torch.Tensor | None    # (P, B, N) Qwen2-VL M-RoPE ids; None for LLaVA families
    input_ids: torch.Tensor              # (B, N)
    layouts: list                        # crop.pruning.layout.SampleLayout per row
    family: str                          # "llava" | "llava_next" | "qwen2_vl"


@dataclass
class ImageTokens:
    """What stands for one image in the pruned sequence."""

    embeds: torch.Tensor                 # (k, D)
    position_ids: torch.Tensor | None    # (P, k) Qwen2-VL; None for LLaVA families


def family_of(model: Any) -> str:
    return str(getattr(model.config, "model_type", ""))


def check_family(model: Any, method: str, families: Sequence[str]) -> str:
    """The model's family, or a ``ValueError`` naming the families the method supports."""
    fam = family_of(model)
    if fam not in families:
        raise ValueError(f"{method} supports model families {tuple(families)}, not {fam!r} (docs/baselines.md)")
    return fam


def capture(model: torch.nn.Module, inputs: dict) -> LLMInputs:
    """Merged embeddings (and Qwen2-VL position ids) at the decoder entrance, plus the layouts."""
    from crop.pruning.layout import token_layout
    from crop.pruning.prune import capture_llm_inputs

    layouts = token_layout(model, inputs)
    got = capture_llm_inputs(model, inputs)
    emb = got["inputs_embeds"]  # (B, N, D)
    ids = inputs["input_ids"].to(emb.device)
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask.to(emb.device)
    pid = None
    if family_of(model) == "qwen2_vl":
        pid = got.get("position_ids")
        if not (isinstance(pid, torch.Tensor) and pid.dim() == 3):
            raise RuntimeError("Qwen2-VL did not pass (P, B, N) M-RoPE position_ids to its decoder stack")
    return LLMInputs(emb, mask, pid, ids, layouts, family_of(model))


def image_chunks(layout: Any) -> list[np.ndarray]:
    """Sorted visual positions of each image of one row (images in prompt order).

    A row's image tokens are consecutive per image (the processors expand one placeholder into
    the image's tokens); the count per image is its views' grid tokens, LLaVA-NeXT's newline
    tokens and the LLaVA "full" CLS token (``layout.always_kept``, one per image).
    """
    sizes: dict[int, int] = {i: 0 for i in layout.image_indices}
    for view in layout.views:
        nl = 0 if view.newline_positions is None else int(view.newline_positions.size)
        sizes[view.image_index] += int(view.positions.size) + nl
    extra = int(layout.always_kept.size) // max(1, len(layout.image_indices))
    bounds = np.cumsum([sizes[i] + extra for i in layout.image_indices])[:-1]
    return [c for c in np.split(layout.visual_positions, bounds) if c.size]


def select(cap: LLMInputs, row: int, positions: np.ndarray) -> ImageTokens:
    """The captured tokens of ``row`` at ``positions`` (kept in sequence order)."""
    pos = torch.as_tensor(np.sort(np.asarray(positions, dtype=np.int64)), device=cap.embeds.device)
    pid = None if cap.position_ids is None else cap.position_ids[:, row, pos]  # (P, k)
    return ImageTokens(cap.embeds[row, pos], pid)


def assemble(cap: LLMInputs, images: list[list[ImageTokens]]) -> dict:
    """Model inputs with every image's tokens replaced by ``images[row][i]`` (rows left-padded).

    Returns ``inputs_embeds`` (B, M, D), ``attention_mask`` (B, M) and ``position_ids`` ((B, M)
    for LLaVA families, (P, B, M) for Qwen2-VL). Original padding is dropped and rows are
    re-padded on the left to the longest pruned row; padding slots are zero vectors.
    """
    device, dtype = cap.embeds.device, cap.embeds.dtype
    rows_emb, rows_pid = [], []
    for b, layout in enumerate(cap.layouts):
        chunks = image_chunks(layout)
        if len(chunks) != len(images[b]):
            raise ValueError(f"row {b}: {len(chunks)} images but {len(images[b])} replacements")
        real = (cap.attention_mask[b] != 0).cpu().numpy()
        visual = np.zeros(real.size, dtype=bool)
        visual[layout.visual_positions] = True
        text = np.flatnonzero(real & ~visual)
        parts_e, parts_p, start = [], [], 0
        for chunk, rep in zip(chunks, images[b]):
            t = torch.as_tensor(text[(text >= start) & (text < chunk[0])], device=device)
            parts_e += [cap.embeds[b, t], rep.embeds.to(dtype)]
            if cap.position_ids is not None:
                parts_p += [cap.position_ids[:, b, t], rep.position_ids.to(cap.position_ids.dtype)]
            start = int(chunk[-1]) + 1
        t = torch.as_tensor(text[text >= start], device=device)
        parts_e.append(cap.embeds[b, t])
        rows_emb.append(torch.cat(parts_e))  # (L_b, D)
        if cap.position_ids is not None:
            parts_p.append(cap.position_ids[:, b, t])
            rows_pid.append(torch.cat(parts_p, dim=1))  # (P, L_b)
    m = max(e.shape[0] for e in rows_emb)
    batch, dim = len(rows_emb), cap.embeds.shape[-1]
    emb = torch.zeros(batch, m, dim, dtype=dtype, device=device)  # (B, M, D)
    mask = torch.zeros(batch, m, dtype=cap.attention_mask.dtype, device=device)  # (B, M)
    for b, e in enumerate(rows_emb):
        emb[b, m - e.shape[0]:] = e
        mask[b, m - e.shape[0]:] = 1
    out = {"inputs_embeds": emb, "attention_mask": mask}
    if cap.position_ids is None:
        out["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, M): generate's own rule
    else:
        pid = torch.zeros(cap.position_ids.shape[0], batch, m, dtype=cap.position_ids.dtype, device=device)
        for b, p in enumerate(rows_pid):
            pid[:, b, m - p.shape[1]:] = p
            pid[:, b, : m - p.shape[1]] = p[:, :1]  # padding slots: valid ids, masked out
        out["position_ids"] = pid  # (P, B, M)
    return out


def row_seed(seed: int, key: str) -> int:
    """A stable 64-bit seed for one sample (``"<seed>:<key>"`` through SHA-256; no PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()[:8], "little")


def row_keys(req: PruneRequest, batch: int) -> list[str]:
    if req.keys is None:
        return [str(b) for b in range(batch)]
    if len(req.keys) != batch:
        raise ValueError(f"request.keys has {len(req.keys)} entries for a batch of {batch} rows")
    return [str(k) for k in req.keys]


def need_budget(req: PruneRequest, method: str) -> int:
    if req.budget is None:
        raise ValueError(f"{method} needs a budget R (visual tokens kept per image)")
    r = int(req.budget)
    if r < 1:
        raise ValueError(f"{method}: budget R must be >= 1, got {req.budget!r}")
    return r


def check_options(req: PruneRequest, method: str, known: Sequence[str]) -> dict:
    unknown = sorted(set(req.options) - set(known))
    if unknown:
        raise ValueError(f"{method}: unknown option(s) {unknown}; known: {sorted(known) or 'none'}")
    return dict(req.options)


@dataclass
class BeforeLLMRun:
    """:class:`crop.pruning.registry.MethodRun` of a before-the-LLM method (new inputs, no hooks)."""

    inputs: dict
    n_in: list[int]
    kept: list[int]
    extra: list[dict]
    output_has_prompt: bool = False

    def rows(self) -> list[dict]:
        # before the LLM: every decoder layer sees ``kept``, so both budget conventions agree
        return [{"visual_tokens_in": i, "visual_tokens_kept": k, "visual_tokens_layer_avg": float(k),
                 "stages": [[0, k]], **e} for i, k, e in zip(self.n_in, self.kept, self.extra)]


ChooseFn = Callable[[LLMInputs, int, int, np.ndarray], ImageTokens]


@contextmanager
def run_before_llm(model: Any, inputs: dict, choose: Callable[[LLMInputs, int, int, np.ndarray], ImageTokens],
                   prepare: Callable[[LLMInputs], Any] | None = None) -> Iterator[BeforeLLMRun]:
    """Capture, call ``choose(cap, row, image_i, chunk_positions)`` per image, assemble.

    Nothing is attached to the model: leaving the block leaves the model as it was.
    """
    cap = capture(model, inputs)
    if prepare is not None:
        prepare(cap)
    images, n_in, kept = [], [], []
    for b, layout in enumerate(cap.layouts):
        reps = [choose(cap, b, i, chunk) for i, chunk in enumerate(image_chunks(layout))]
        images.append(reps)
        n_in.append(int(layout.num_visual))
        kept.append(int(sum(r.embeds.shape[0] for r in reps)))
    yield BeforeLLMRun(assemble(cap, images), n_in, kept, [{} for _ in n_in])
