"""What a pruning run drops: the keep plan of a batch, per row (built by :mod:`crop.pruning.region_map`,
:mod:`crop.pruning.fastv`; applied by :mod:`crop.pruning.plugin` / :mod:`crop.pruning.prune`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from crop.pruning.layout import SampleLayout


@dataclass(frozen=True)
class KeepPlan:
    """Which sequence positions each batch row drops from layer K on.

    ``drop[b]`` are sorted positions; everything else (text, kept visual tokens and any token
    generated later) stays. ``prompt_len`` is the prompt length the plan was computed for and
    ``visual[b]`` the positions of row b's image tokens then (``None`` for a hand-built plan); the
    hooks check both against the prompt they prune (:mod:`crop.pruning.guards`).

    ``padding_total[b]`` / ``padding_kept[b]``: row b's visual tokens that show no image (pure
    padding cells, :func:`crop.pruning.region_map.content_mask`) in all / kept; ``image_kept`` = kept minus padding
    (``None`` when the plan was built without that knowledge, e.g. FastV's or a hand-built one).
    """

    prompt_len: int
    drop: tuple[np.ndarray, ...]
    visual_total: tuple[int, ...]
    visual_kept: tuple[int, ...]
    visual: tuple[np.ndarray, ...] | None = None
    padding_total: tuple[int, ...] | None = None
    padding_kept: tuple[int, ...] | None = None

    @property
    def image_kept(self) -> tuple[int, ...] | None:
        """Kept visual tokens that show some of the image, per row."""
        if self.padding_kept is None:
            return None
        return tuple(k - p for k, p in zip(self.visual_kept, self.padding_kept))

    @property
    def batch_size(self) -> int:
        return len(self.drop)

    @classmethod
    def from_keep_masks(cls, layouts: Sequence[SampleLayout], keep_visual: Sequence[np.ndarray],
                        padding_visual: Sequence[np.ndarray] | None = None) -> "KeepPlan":
        """``keep_visual[b]`` (and ``padding_visual[b]``) are bool masks over ``layouts[b].visual_positions``."""
        drop, kept = [], []
        for lay, m in zip(layouts, keep_visual):
            m = np.asarray(m, dtype=bool)
            if m.shape != lay.visual_positions.shape:
                raise ValueError(f"keep mask shape {m.shape} != visual positions {lay.visual_positions.shape}")
            drop.append(np.sort(lay.visual_positions[~m]))
            kept.append(int(m.sum()))
        seq = {lay.seq_len for lay in layouts}
        if len(seq) != 1:
            raise ValueError(f"layouts disagree on the sequence length: {sorted(seq)}")
        total = tuple(lay.num_visual for lay in layouts)
        pad_total = pad_kept = None
        if padding_visual is not None:
            pads = [np.asarray(p, dtype=bool) for p in padding_visual]
            pad_total = tuple(int(p.sum()) for p in pads)
            pad_kept = tuple(int((p & np.asarray(m, dtype=bool)).sum()) for p, m in zip(pads, keep_visual))
        return cls(seq.pop(), tuple(drop), total, tuple(kept), tuple(lay.visual_positions for lay in layouts),
                   pad_total, pad_kept)
