"""Guards of the pruning hooks: the right prompt, no ``labels``, one handle per model.

A keep plan (or FastV's layouts) is a list of sequence positions computed for one prompt. Applied
to another prompt it would silently drop the wrong positions, so at every prefill the handle
checks, before any layer runs:

* the sequence length equals the plan's ``prompt_len`` (with ``inputs_embeds`` and no
  ``input_ids`` only this can be checked);
* with ``input_ids``: row b's positions holding ``image_token_id`` are exactly the positions the
  plan treats as visual (a plan without recorded visual positions: its dropped positions must
  hold image tokens).

A *longer* sequence without a cache is accepted only when it continues the prompt last checked by
the same handle for the same plan (``generate(use_cache=False)`` re-runs the whole sequence every
step). Decode steps (a non-empty cache) are not checked: the cache already holds the checked
prefill, and the per-step cost stays a dict lookup.

Two handles on one model would gather already-gathered tensors, so a handle marks the model's
decoder stack while attached (:func:`claim` / :func:`release`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

LABELS_MESSAGE = (
    "labels are not supported while an ILP / FastV handle is attached: layers >= K only see the kept "
    "positions, so the returned logits are (B, N - dropped, V) and a loss against full-length labels is "
    "wrong; compute the loss from the returned logits and plan.drop, or remove the handle first"
)
_MARK = "_crop_pruning_handle"


@dataclass(frozen=True)
class PromptRef:
    """What a handle knows about the prompt it was built for (one entry per plan row)."""

    source: str  # "keep plan" / "FastV layouts", for messages
    prompt_len: int
    visual: tuple[np.ndarray, ...] | None  # image-token positions per row, if recorded
    drop: tuple[np.ndarray, ...]  # positions dropped per row (checked when ``visual`` is None)

    @property
    def rows(self) -> int:
        return len(self.drop) if self.visual is None else len(self.visual)

    def expected(self) -> np.ndarray:
        """(P, N) bool: where the prompt must hold image tokens (``visual`` or at least ``drop``)."""
        out = np.zeros((self.rows, self.prompt_len), dtype=bool)
        for b, pos in enumerate(self.visual if self.visual is not None else self.drop):
            out[b, pos] = True
        return out


def ref_of_plan(plan) -> PromptRef:
    return PromptRef("keep plan", plan.prompt_len, getattr(plan, "visual", None), plan.drop)


def ref_of_layouts(layouts: Sequence) -> PromptRef:
    lens = sorted({lay.seq_len for lay in layouts})
    if not lens:
        raise ValueError("no layouts given: pass token_layout(model, inputs), one per batch row")
    if len(lens) != 1:
        raise ValueError(f"layouts disagree on the sequence length: {lens}")
    vis = tuple(lay.visual_positions for lay in layouts)
    return PromptRef("FastV layouts", lens[0], vis, vis)


def image_token_id_of(model: torch.nn.Module) -> int | None:
    """The model's image placeholder id (``None`` for a text-only model: length checks only)."""
    cfg = getattr(model, "config", None)
    for name in ("image_token_id", "image_token_index"):
        tid = getattr(cfg, name, None)
        if isinstance(tid, int):
            return tid
    return None


def _ranges(pos: np.ndarray, limit: int = 4) -> str:
    """Sorted positions as runs: ``[3..18, 40]``; at most ``limit`` runs shown."""
    if pos.size == 0:
        return "none"
    cuts = np.flatnonzero(np.diff(pos) != 1) + 1
    runs = [(int(r[0]), int(r[-1])) for r in np.split(pos, cuts)]
    txt = [f"{a}..{b}" if b > a else f"{a}" for a, b in runs[:limit]]
    more = f", ... ({len(runs) - limit} more runs)" if len(runs) > limit else ""
    return "[" + ", ".join(txt) + more + "]"


def mismatch_message(ref: PromptRef, row: int, plan_row: int, expected: np.ndarray, got: np.ndarray, tid: int) -> str:
    """Explain why row ``row`` of ``input_ids`` does not fit plan row ``plan_row`` (both (N,) bool)."""
    what = "visual" if ref.visual is not None else "dropped"
    missing = np.flatnonzero(expected & ~got)  # plan says image token, prompt has text
    extra = np.flatnonzero(got & ~expected) if ref.visual is not None else np.zeros(0, np.int64)
    msg = (
        f"row {row}: the {ref.source} (row {plan_row}) was built for another prompt: it treats "
        f"{int(expected.sum())} positions {_ranges(np.flatnonzero(expected))} as {what}, but input_ids has "
        f"{int(got.sum())} image tokens (id {tid}) at {_ranges(np.flatnonzero(got))}"
    )
    if missing.size:
        msg += f"; no image token at {what} positions {_ranges(missing)}"
    if extra.size:
        msg += f"; image tokens the plan does not know at {_ranges(extra)}"
    return msg + ". Build the plan from these inputs (token_layout / region_keep_plan)."


class PromptGuard:
    """Prefill checks of one handle; remembers the last checked prompt for uncached continuations."""

    def __init__(self, image_token_id: int | None):
        self.image_token_id = image_token_id
        self._last: tuple[Any, torch.Tensor] | None = None  # (plan object, (B, P) checked input_ids)

    def check(self, ref: PromptRef, owner: Any, input_ids: torch.Tensor | None, seq_len: int, batch: int) -> None:
        """Raise ``ValueError`` unless this no-cache call may use ``ref``; ``owner`` is the plan object."""
        if batch % ref.rows:
            raise ValueError(f"batch of {batch} rows does not match a {ref.source} for {ref.rows} rows")
        p = ref.prompt_len
        if seq_len > p and input_ids is not None and self._continues(owner, input_ids):
            return  # uncached generate: the first P tokens are the prompt already checked
        if seq_len != p:
            hint = (
                " (a longer uncached call is accepted only as the continuation of the prompt this handle last "
                "checked, as in generate(use_cache=False))" if seq_len > p else ""
            )
            raise ValueError(
                f"prefill of {seq_len} tokens does not match the {ref.source}, built for a {p}-token prompt{hint}; "
                "build the plan from these inputs (token_layout / region_keep_plan)"
            )
        if input_ids is None:
            self._last = None  # inputs_embeds only: nothing to continue from
            return
        if self.image_token_id is not None:
            self._check_tokens(ref, input_ids)
        self._last = (owner, input_ids.detach().clone())

    def _continues(self, owner: Any, input_ids: torch.Tensor) -> bool:
        if self._last is None or self._last[0] is not owner:
            return False
        prev = self._last[1]  # (B, P)
        return prev.shape[0] == input_ids.shape[0] and torch.equal(input_ids[:, : prev.shape[1]], prev.to(input_ids.device))

    def _check_tokens(self, ref: PromptRef, input_ids: torch.Tensor) -> None:
        rep = input_ids.shape[0] // ref.rows  # generate repeats rows for beams / num_return_sequences
        expected = ref.expected()  # (P, N)
        exp = torch.as_tensor(expected, device=input_ids.device).repeat_interleave(rep, dim=0)  # (B, N)
        got = input_ids == self.image_token_id  # (B, N)
        bad = ((got != exp) if ref.visual is not None else (exp & ~got)).any(dim=1)  # (B,)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            got_row = got[row].cpu().numpy()
            raise ValueError(mismatch_message(ref, row, row // rep, expected[row // rep], got_row, self.image_token_id))


# ----------------------------------------------------------------------------- one handle per model
def claim(stack: torch.nn.Module, handle: Any, model_name: str) -> None:
    """Mark ``stack`` as pruned by ``handle``; raise if another attached handle holds it."""
    mark = getattr(stack, _MARK, None)
    other = mark() if mark is not None else None
    if other is not None and other is not handle:
        raise RuntimeError(
            f"{model_name} already has {other!r} attached; call remove() on it (or leave its with-block) "
            "before attaching another: a second set of hooks would gather already-gathered tensors"
        )
    setattr(stack, _MARK, weakref.ref(handle))


def release(stack: torch.nn.Module, handle: Any) -> None:
    """Clear ``handle``'s mark on ``stack`` (a no-op when it holds none)."""
    mark = getattr(stack, _MARK, None)
    if mark is not None and mark() in (handle, None):
        delattr(stack, _MARK)


def attached_handle(stack: torch.nn.Module) -> Any:
    """The handle now attached to ``stack``'s model, or ``None``."""
    mark = getattr(stack, _MARK, None)
    return mark() if mark is not None else None
