"""The ``self`` region picture (block scores + chosen rectangle) and its section in ``crop report``."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
from PIL import Image

import tinyshards
from crop.cli import main
from crop.viz.self_region import RECT_COLOUR, block_scores_picture

CELL = 24


def _cell_centre(img: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return img.getpixel((x * CELL + CELL // 2, y * CELL + CELL // 2))


def test_picture_colours_the_peak_darkest_and_outlines_the_rectangle():
    s = np.zeros((8, 8))
    s[3, 5] = 0.5   # peak at block x=5, y=3
    s[4, 5] = 0.25
    img = block_scores_picture(s, [4, 2, 6, 5], cell_px=CELL)
    assert img.size == (8 * CELL, 8 * CELL)
    peak, half, empty = _cell_centre(img, 5, 3), _cell_centre(img, 5, 4), _cell_centre(img, 0, 0)
    assert empty == (255, 255, 255)
    assert sum(peak) < sum(half) < sum(empty)  # darker = more mass
    # the rectangle's corners (block x 4..6, y 2..5) are orange, the picture's corner is not
    for xy in [(4 * CELL, 2 * CELL), (7 * CELL - 1, 6 * CELL - 1), (4 * CELL + 1, 4 * CELL)]:
        assert img.getpixel(xy) == RECT_COLOUR, xy
    assert img.getpixel((0, 0)) != RECT_COLOUR
    orange = np.all(np.asarray(img) == RECT_COLOUR, axis=-1)
    ys, xs = np.nonzero(orange)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (4 * CELL, 2 * CELL, 7 * CELL - 1, 6 * CELL - 1)


def test_crop_report_adds_the_self_region_section(tmp_path):
    tinyshards.make_dataset(tmp_path / "ds", shards=1)
    rows = tmp_path / "efficiency.jsonl"
    s = np.zeros((8, 8))
    s[1:3, 1:3] = 0.25
    lines = [json.dumps({"key": "q0", "region_used": [1, 1, 2, 2], "attention_share": 1.0, "block_scores": s.tolist()}),
             "not json",
             json.dumps({"key": "q1", "visual_tokens_kept": 3}),  # a row of another method: skipped
             json.dumps({"key": "q2", "region_used": [0, 0, 7, 7], "attention_share": 1.0,
                         "block_scores": np.full((8, 8), 1 / 64).tolist()})]
    rows.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "ds"), "--out", str(out), "--n", "2", "--self-rows", str(rows)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "Regions from the model's own attention (2 questions)" in page
    assert "q0: region [1, 1, 2, 2], attention share 1.000" in page
    uris = re.findall(r'<img class="self-region"[^>]* src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 2
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[0]))).convert("RGB"))
    ys, xs = np.nonzero(np.all(first == RECT_COLOUR, axis=-1))
    assert (xs.min(), ys.min()) == (1 * CELL, 1 * CELL)
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert all(r.startswith("data:") for r in refs)


def test_crop_report_without_self_rows_has_no_such_section(tmp_path):
    tinyshards.make_dataset(tmp_path / "ds", shards=1)
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "ds"), "--out", str(out), "--n", "1"]) == 0
    assert "own attention" not in out.read_text(encoding="utf-8")
