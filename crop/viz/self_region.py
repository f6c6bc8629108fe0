"""Pictures of the ``self`` region source: 8x8 block scores and the rectangle chosen from them.

``crop eval --method self`` logs per question ``block_scores`` (the image's attention mass on
the 8x8 blocks of the original image, summing to 1), ``region_used`` and ``attention_share``
(:mod:`crop.pruning.methods.self_region`). ``crop report ... --self-rows RUN/<bench>/efficiency.jsonl``
adds a section drawn here: one heat map per question (white = no mass, dark blue = the row's
largest block), the chosen rectangle outlined in ``RECT_COLOUR``.
"""

from __future__ import annotations

import html
import json
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

RECT_COLOUR = (255, 120, 0)  # outline of the chosen rectangle; no heat-map colour is orange
LOW, HIGH = np.array([255, 255, 255], float), np.array([20, 50, 160], float)


def block_scores_picture(scores: Sequence[Sequence[float]], region: Sequence[int] | None,
                         cell_px: int = 24, line_px: int = 3) -> Image.Image:
    """Heat map of ``scores`` (rows = y blocks) with ``region`` [x_min, y_min, x_max, y_max] outlined.

    Colours are scaled to the row's largest score, so a diffuse map still shows its peak.
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2:
        raise ValueError(f"block scores must be 2-D, got shape {s.shape}")
    rows, cols = s.shape
    top = float(s.max()) if s.size and s.max() > 0 else 1.0
    t = np.clip(s / top, 0.0, 1.0)[..., None]  # (rows, cols, 1)
    rgb = (LOW + (HIGH - LOW) * t).round().astype(np.uint8)  # (rows, cols, 3)
    img = Image.fromarray(rgb.repeat(cell_px, 0).repeat(cell_px, 1), "RGB")  # cell -> cell_px x cell_px
    if region is not None:
        x0, y0, x1, y1 = (int(v) for v in region)
        box = (x0 * cell_px, y0 * cell_px, (x1 + 1) * cell_px - 1, (y1 + 1) * cell_px - 1)
        ImageDraw.Draw(img).rectangle(box, outline=RECT_COLOUR, width=line_px)
    return img


def read_self_rows(path: str, n: int) -> list[dict]:
    """The first ``n`` rows of an efficiency.jsonl that carry ``block_scores`` (one image per row)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(out) >= n:
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            scores = row.get("block_scores")
            if isinstance(scores, list) and scores and isinstance(scores[0], list) and not isinstance(scores[0][0], list):
                out.append(row)
    return out


def self_region_section(path: str, n: int = 24) -> str:
    """HTML section (PNG data URIs, no other sources) for the report."""
    from crop.viz.report import _png_data_uri

    rows = read_self_rows(path, n)
    esc = html.escape
    figures = []
    for row in rows:
        uri = _png_data_uri(block_scores_picture(row["block_scores"], row.get("region_used")))
        caption = (f"{row.get('key', '')}: region {row.get('region_used')}, "
                   f"attention share {row.get('attention_share', float('nan')):.3f}")
        figures.append(f'<figure><img class="self-region" alt="{esc(str(row.get("key", "")))}" src="{uri}">'
                       f"<figcaption>{esc(caption)}</figcaption></figure>")
    return (f"<h2>Regions from the model's own attention ({len(figures)} questions)</h2>"
            f'<p class="muted">{esc(path)}: 8x8 block scores (dark = more of the image\'s attention) and the '
            "chosen rectangle (orange). Tiny or untrained models give meaningless maps; only real weights "
            f'localize.</p><div class="gallery">{"".join(figures)}</div>')
