"""Multi-stage inner-LLM pruning: several decoder layers, each dropping more visual tokens.

The one generalisation of :class:`crop.pruning.plugin.PruneHandle` (one stage at layer K) used by
PyramidDrop, SparseVLM and DART (:mod:`crop.pruning.methods`). Stage ``s`` starts at decoder
layer ``L_s`` (``L_0 < L_1 < ...``); layers ``L_s .. L_{s+1}-1`` run on (and cache) the tokens
stage ``s`` kept::

    layer:   0 .. L0-1          L0 .. L1-1          L1 .. end
    tokens:  t v v v v v v t    t v v . v v . t     t v . . v . . t      ('.' = dropped)
    cache:   full length        stage-0 length      stage-1 length       (+ generated tokens)

What a stage keeps is chosen at prefill, by a :class:`Selector`, from what the model computed so
far (the hidden states entering ``L_s``, inputs captured at earlier layers); a selection may also
overwrite the hidden state of a kept slot (SparseVLM's recycled tokens: the average of dropped
tokens, placed at one of their positions). As in ILP every kept token keeps its original position:
the rotary tables and the 4-D mask of the full sequence, which the decoder stack hands to every
layer, are gathered at the stage's kept positions (:mod:`crop.pruning.gather`); during decode each
stage gets the model's mask (sized against layer 0's full cache) with its dropped columns removed,
so every layer's cache holds exactly the tokens that layer saw.

Ragged batches: rows may keep different numbers of tokens at every stage; they are left-padded to
the longest row (:func:`crop.pruning.gather.left_pad_rows`) and the padding slots masked. Prompt
checks, ``labels`` refusal, one handle per model and ``remove()`` are PruneHandle's.

``freeze=True`` keeps the first prefill's selections for later prefills (how an uncached
``generate`` reproduces the cached run: each uncached step re-runs the prompt, whose hidden
states are the same, so frozen selections and recomputed recycled averages equal the cached ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from crop.compat import cache_of_kwargs
from crop.pruning import guards
from crop.pruning.attention_rows import layer_keys, row_attention  # noqa: F401 - layer_keys re-exported
from crop.pruning.gather import decode_mask, gather_seq, left_pad_rows, prefill_mask
from crop.pruning.layout import SampleLayout
from crop.pruning.plugin import PruneHandle, _check_attn, _check_runtime, _gather_positions, check_supported


@dataclass
class Selection:
    """What one stage keeps of one row: absolute visual positions, and recycled slots.

    ``merged[p]`` (p in ``keep``): absolute positions whose hidden states (entering the stage's
    first layer) are averaged into slot ``p`` (SparseVLM's token recycling; ``p`` among them).
    """

    keep: np.ndarray
    merged: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class StageContext:
    """What a selector sees at the first layer of stage ``stage`` during a prefill."""

    stage: int
    layer: int                        # index of the stage's first decoder layer
    hidden: torch.Tensor              # (B, M, D) input of that layer, over the previous stage's slots
    slots: torch.Tensor               # (B, M) absolute positions of those slots (left-padded)
    pad: torch.Tensor | None          # (B, M) padding slots, or None
    candidates: list[np.ndarray]      # per row: absolute visual positions still present
    kwargs: dict                      # the layer's full-sequence kwargs (rotary tables, 4-D mask)
    captured: dict[int, tuple[torch.Tensor, dict]]  # layer -> (input hidden, kwargs as that layer ran)
    handle: "StagedHandle"

    def slot_kwargs(self) -> dict:
        """Rotary tables / position ids / mask of the current slots (what the previous stage ran with)."""
        seq_len = self.handle._seq_len
        out = _gather_positions(self.kwargs, self.slots, seq_len)
        out["attention_mask"] = prefill_mask(self.kwargs.get("attention_mask"), self.slots, self.pad)
        return out

    def real(self, b: int) -> np.ndarray:
        """Row ``b``'s absolute positions of its real (non-padding) slots, ascending."""
        s = self.slots[b].cpu().numpy()
        return s if self.pad is None else s[~self.pad[b].cpu().numpy()]


class Selector(Protocol):
    """A method's rule: which layers it needs inputs of, and what each stage keeps."""

    capture_layers: Sequence[int]

    def select(self, ctx: StageContext) -> list[Selection]:
        ...


class StagedHandle(PruneHandle):
    """Hooks that prune at every stage layer of ``stages``; remove with ``remove()`` / ``with``.

    ``layouts``: :func:`crop.pruning.token_layout` of the prompt (one per row; the prompt guard
    checks prefills against them). ``selections[s][b]``: what stage ``s`` kept of row ``b`` at the
    last prefill; ``stage_counts()``: per row, ``[(layer, visual tokens kept), ...]``.
    """

    kind = "staged"

    def __init__(self, model: torch.nn.Module, layouts: Sequence[SampleLayout], stages: Sequence[int],
                 selector: Selector, freeze: bool = False, name: str = "staged"):
        stages = [int(s) for s in stages]
        if not stages or any(b <= a for a, b in zip(stages, stages[1:])):
            raise ValueError(f"stage layers must be a non-empty increasing list, got {stages}")
        n = check_supported(model, stages[0])
        if stages[-1] >= n:
            raise ValueError(f"stage layers {stages} must be < the number of decoder layers ({n})")
        captures = sorted({int(c) for c in selector.capture_layers})
        if captures and (captures[0] < 0 or captures[-1] >= n):
            raise ValueError(f"captured layers {captures} out of range for {n} decoder layers")
        self.kind = name
        self.layouts, self.stages, self.selector, self.freeze = list(layouts), stages, selector, freeze
        self._ref = guards.ref_of_layouts(self.layouts)
        super().__init__(model, None, n)  # K = n: PruneHandle adds only its model-level guard hook
        self.layer = stages[0]
        self.selections: list[list[Selection]] | None = None
        self._captures = set(captures)
        self._slots: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # per stage: (B, M_s), pad
        self._captured: dict[int, tuple[torch.Tensor, dict]] = {}
        self._stage_kwargs: dict = {}
        self._seq_len = 0
        first = min([stages[0]] + captures)
        try:
            for i in range(first, n):
                self._hooks.append(self._layers[i].register_forward_pre_hook(partial(self._pre_layer, i),
                                                                             with_kwargs=True))
        except Exception:
            self.remove()
            raise

    def __repr__(self) -> str:
        return f"a {self.kind} handle (stages at layers {self.stages})"

    def _prompt_ref(self):
        return self._ref, self.layouts

    @property
    def kept_counts(self) -> tuple[int, ...] | None:
        counts = self.stage_counts()
        return None if counts is None else tuple(c[-1][1] for c in counts)

    def stage_counts(self) -> list[list[tuple[int, int]]] | None:
        """Per row: ``[(first layer of stage s, visual tokens kept by stage s), ...]``."""
        if self.selections is None:
            return None
        rows = len(self.selections[0])
        return [[(layer, int(sel[b].keep.size)) for layer, sel in zip(self.stages, self.selections)]
                for b in range(rows)]

    def reset(self) -> None:
        """Forget frozen selections."""
        self.selections = None

    # ------------------------------------------------------------------------- hooks
    def _stage_of(self, i: int) -> int:
        return max((s for s, layer in enumerate(self.stages) if layer <= i), default=-1)

    def _pre_layer(self, i: int, module, args, kwargs):
        cache = cache_of_kwargs(kwargs)
        h = args[0] if args else kwargs["hidden_states"]
        prefill = cache is None or cache.get_seq_length(i) == 0
        s = self._stage_of(i)
        if s >= 0 and self.stages[s] == i:
            _check_runtime(cache)
            if prefill:
                h = self._enter_stage_prefill(s, i, h, kwargs)
            else:
                self._enter_stage_decode(s, i, h, kwargs, cache)
        if s >= 0:
            kwargs.update(self._stage_kwargs)
        if prefill and i in self._captures:
            self._captured[i] = (h, dict(kwargs))
        if args:
            args = (h,) + tuple(args[1:])
        else:
            kwargs["hidden_states"] = h
        return args, kwargs

    def _enter_stage_prefill(self, s: int, i: int, h: torch.Tensor, kwargs: dict) -> torch.Tensor:
        batch = h.shape[0]
        if s == 0:
            _check_attn(self.model)
            self._seq_len = h.shape[1]
            full = torch.arange(self._seq_len, device=h.device).expand(batch, -1)  # (B, N)
            self._slots = [(full, None)]
        if batch % len(self.layouts):
            raise RuntimeError(f"batch of {batch} rows does not match {len(self.layouts)} layouts")
        rep = batch // len(self.layouts)
        if len(self._slots) <= s:
            raise RuntimeError(f"stage {s} (layer {i}) ran before stage {s - 1}")
        prev, prev_pad = self._slots[s]  # (B, M_prev) slots the previous stage left
        if s == 0:
            cands = [self.layouts[b // rep].visual_positions for b in range(batch)]
        else:
            cands = [sel.keep for sel in self.selections[s - 1]]
        frozen = self.freeze and self.selections is not None and len(self.selections) > s
        if frozen:
            chosen = self.selections[s]
        else:
            ctx = StageContext(s, i, h, prev, prev_pad, cands, kwargs, self._captured, self)
            with torch.no_grad():
                chosen = list(self.selector.select(ctx))
            if len(chosen) != batch:
                raise RuntimeError(f"selector returned {len(chosen)} rows for a batch of {batch}")
            if s == 0:
                self.selections = []
            del self.selections[s:]
            self.selections.append(chosen)
        # kept absolute positions per row: every real slot except the visual ones not chosen
        rows, rel = [], []
        prev_np = prev.cpu().numpy()
        pad_np = None if prev_pad is None else prev_pad.cpu().numpy()
        for b in range(batch):
            real = prev_np[b] if pad_np is None else prev_np[b][~pad_np[b]]
            dropped = np.setdiff1d(cands[b], chosen[b].keep)
            keep = real[~np.isin(real, dropped)]
            rows.append(keep)
        idx, pad = left_pad_rows(rows, h.device)  # (B, M_s), (B, M_s) | None
        idx_np = idx.cpu().numpy()
        for b in range(batch):
            real = prev_np[b] if pad_np is None else prev_np[b][~pad_np[b]]
            offset = prev_np.shape[1] - real.size  # left padding of the previous slots
            rel.append(offset + np.searchsorted(real, idx_np[b]))
        rel_t = torch.as_tensor(np.stack(rel), dtype=torch.long, device=h.device)  # (B, M_s) into prev slots
        new_h = gather_seq(h, rel_t, dim=1)  # (B, M_prev, D) -> (B, M_s, D)
        merged_any = any(sel.merged for sel in chosen)
        if merged_any:
            new_h = new_h.clone()
            for b, sel in enumerate(chosen):
                real = prev_np[b] if pad_np is None else prev_np[b][~pad_np[b]]
                offset = prev_np.shape[1] - real.size
                for pos, members in sel.merged.items():
                    src = torch.as_tensor(offset + np.searchsorted(real, members), device=h.device)
                    dst = int(np.flatnonzero(idx_np[b] == pos)[-1])
                    new_h[b, dst] = h[b, src].mean(0)  # (D,) recycled token
        del self._slots[s + 1:]
        self._slots.append((idx, pad))
        new = _gather_positions(kwargs, idx, self._seq_len)
        new["attention_mask"] = prefill_mask(kwargs.get("attention_mask"), idx, pad)  # (B, 1, M, M) | None
        self._stage_kwargs = new
        if s == len(self.stages) - 1:
            self._captured = {}  # the last selection is made: free the captured hidden states
        return new_h

    def _enter_stage_decode(self, s: int, i: int, h: torch.Tensor, kwargs: dict, cache: Any) -> None:
        if len(self._slots) <= s + 1 or self._slots[s + 1][0].shape[0] != h.shape[0]:
            raise RuntimeError(f"decode step reached stage layer {i} without a matching pruned prefill")
        idx, pad = self._slots[s + 1]
        q_len = h.shape[1]
        kv_kept = cache.get_seq_length(i) + q_len  # this layer's cache length after the step
        self._stage_kwargs = {"attention_mask": decode_mask(kwargs.get("attention_mask"), idx, pad,
                                                            self._seq_len, kv_kept, q_len)}

    def remove(self) -> None:
        super().remove()
        self._slots, self._captured, self._stage_kwargs = [], {}, {}


# ----------------------------------------------------------------------------- selector helpers
def top_k_rows(scores: torch.Tensor, ctx: StageContext, counts: Sequence[int]) -> list[Selection]:
    """Keep ``counts[b]`` candidates of row ``b`` with the highest ``scores[b]`` over the slots
    (``scores`` (B, M), aligned with ``ctx.slots``); ties go to the lower position."""
    out = []
    for b in range(scores.shape[0]):
        slots = ctx.slots[b].cpu().numpy()
        real = np.ones(slots.size, bool) if ctx.pad is None else ~ctx.pad[b].cpu().numpy()
        is_cand = np.isin(slots, ctx.candidates[b]) & real
        cand_pos = slots[is_cand]
        s = scores[b].float().cpu().numpy()[is_cand]
        r = min(int(counts[b]), cand_pos.size)
        order = np.argsort(-s, kind="stable")[:r]
        out.append(Selection(np.sort(cand_pos[order])))
    return out


def slot_index(ctx: StageContext, b: int, positions: np.ndarray) -> np.ndarray:
    """Slot indices (into ``ctx.hidden[b]``) of absolute ``positions`` of row ``b``."""
    real = ctx.real(b)
    offset = ctx.slots.shape[1] - real.size
    return offset + np.searchsorted(real, positions)


def rows_attention(layer: torch.nn.Module, h_in: torch.Tensor, pos_emb, mask, rows: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention probabilities (B, Q, N) of query slots ``rows`` (B, Q) at ``layer``
    (:func:`crop.pruning.attention_rows.row_attention`)."""
    return row_attention(layer, h_in, pos_emb, mask, rows).mean(1)


def geometric_counts(n: int, budget: int, stages: int) -> list[int]:
    """Visual tokens kept per stage: ``n * (R / n) ** (s / S)`` rounded, the last exactly ``R``."""
    budget = min(int(budget), n)
    if n <= 0:
        return [0] * stages
    out = [int(round(n * (budget / n) ** ((s + 1) / stages))) for s in range(stages - 1)] + [budget]
    for s in range(1, stages):  # never keep more at a later stage
        out[s] = min(out[s], out[s - 1])
    return out


def scaled_layers(default: Sequence[int], num_layers: int, reference: int = 32) -> list[int]:
    """A schedule given for a ``reference``-layer model, scaled to ``num_layers``.

    Each layer is rounded and kept within ``1 .. num_layers - 1``; stages that coincide after
    rounding merge (a 3-layer test model gets 2 stages of PyramidDrop's 3), so the last stage
    still keeps R.
    """
    if num_layers < 2:
        raise ValueError(f"a staged method needs at least 2 decoder layers, the model has {num_layers}")
    got = [min(max(1, int(round(layer * num_layers / reference))), num_layers - 1) for layer in default]
    return sorted(set(got))


def staged_rows(handle: StagedHandle, layouts: Sequence[SampleLayout], num_layers: int, **extra: Any) -> list[dict]:
    """Report rows (:class:`crop.pruning.registry.MethodRun`) of a staged run, read after generate."""
    from crop.pruning.registry import layer_averaged

    counts = handle.stage_counts()
    rows = []
    for b, lay in enumerate(layouts):
        n = lay.num_visual
        stages = counts[b] if counts is not None else []
        kept = stages[-1][1] if stages else n
        rows.append({"visual_tokens_in": n, "visual_tokens_kept": kept,
                     "visual_tokens_layer_avg": layer_averaged(n, stages, num_layers),
                     "stages": [[int(layer), int(k)] for layer, k in stages], **extra})
    return rows


def check_options(options: dict, known: Sequence[str], method: str) -> None:
    """One-line error naming the known keys when ``options`` has others."""
    bad = sorted(set(options) - set(known))
    if bad:
        raise ValueError(f"{method}: unknown option(s) {bad}; known: {sorted(known)}")
