"""eval-localizer: Table-9 metrics, Visual-CoT benchmark rows, output files."""

from __future__ import annotations

import json

import pytest

from crop.eval.localization import evaluate, localization_metrics, parse_viscot_row
from crop.geometry import Region
from crop.models.localizer import Prediction


def test_metrics_on_hand_cases():
    gts = [(0, 0, 1, 1), (0, 0, 1, 1), (0, 0, 3, 0), (2, 2, 2, 2)]
    preds = [(0, 0, 1, 1), (0, 0, 0, 1), (0, 0, 7, 7), (5, 5, 6, 6)]
    # recalls 1, 0.5 (exactly: not counted as > 0.5), 1 (fallback: whole image), 0
    m = localization_metrics(gts, preds, ["strict", "strict", "fallback", "lenient"])
    assert m["samples"] == 4
    assert m["area_recall_mean"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert m["area_recall_mean_fallback_as_zero"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert (m["recall_gt_0.5"], m["recall_gt_0.7"], m["recall_gt_0.9"]) == (2, 2, 2)
    assert m["iou_mean"] == pytest.approx((1 + 0.5 + 4 / 64 + 0) / 4)
    assert m["exact_match_rate"] == 0.25
    assert (m["parse_failures"], m["fallbacks"]) == (2, 1)
    with pytest.raises(ValueError, match="lengths differ"):
        localization_metrics(gts, preds[:2], ["strict"] * 4)


def test_parse_viscot_row_uses_pixel_box_and_strips_prompt(tmp_path):
    from PIL import Image

    Image.new("RGB", (800, 400)).save(tmp_path / "a.jpg")
    row = {"dataset": "textvqa", "split": "val", "question_id": 7,
           "image": ["a.jpg", "a.jpg###[100, 50, 300, 150]"],
           "conversations": [
               {"from": "human", "value": "<image>\nWhat is written? Please provide the bounding box "
                                          "coordinate of the region that can help you answer the question better."},
               {"from": "gpt", "value": "[0.125, 0.3125, 0.375, 0.4375]"},
               {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "stop"}]}
    got = parse_viscot_row(row, str(tmp_path))
    assert got["key"] == "textvqa-7" and got["question"] == "What is written?"
    # x 100..300 of 800 -> blocks 1..2; y 50..150 of 400 -> blocks 1..2
    assert got["gt"] == Region(1, 1, 2, 2)
    with pytest.raises(ValueError, match="row 7: image field lacks"):
        parse_viscot_row(dict(row, image=["a.jpg"]), str(tmp_path))


class _Fixed:
    def predict_detailed(self, images, questions):
        return [Prediction(Region(0, 0, 1, 1), "0 0 1 1.", "strict") for _ in images]


def test_evaluate_writes_predictions_and_metrics(tmp_path):
    from PIL import Image

    im = Image.new("RGB", (16, 16))
    rows = [{"key": f"k{i}", "question": "q", "image": im, "gt": Region(0, 0, i, i)} for i in range(3)]
    m = evaluate(_Fixed(), iter(rows), str(tmp_path), batch_size=2, extra={"model": "fixed"})
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["key"] for r in lines] == ["k0", "k1", "k2"]
    assert [r["area_recall"] for r in lines] == [1.0, 1.0, pytest.approx(4 / 9)]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == m and saved["model"] == "fixed" and saved["exact_match_rate"] == pytest.approx(1 / 3)


def test_progress_bar_has_a_total_and_log_lines_do_not_share_its_line(tmp_path, monkeypatch):
    """The bar knows its end (batches = ceil(min(total, limit) / batch)); logging goes around it."""
    import logging

    import tqdm as tqdm_mod
    from PIL import Image

    seen = {}
    real = tqdm_mod.tqdm

    class Spy(real):
        def __init__(self, *a, **k):
            seen["total"] = k.get("total")
            super().__init__(*a, **k)

    monkeypatch.setattr(tqdm_mod, "tqdm", Spy)
    im = Image.new("RGB", (16, 16))
    rows = [{"key": f"k{i}", "question": "q", "image": im, "gt": Region(0, 0, 1, 1)} for i in range(7)]

    class Logs(_Fixed):
        def predict_detailed(self, images, questions):
            logging.getLogger("crop.test").warning("inside the loop")
            seen["handler_types"] = [type(h).__name__ for h in logging.getLogger().handlers]
            return super().predict_detailed(images, questions)

    evaluate(Logs(), iter(rows), str(tmp_path), batch_size=2, limit=5, total=7)
    assert seen["total"] == 3  # 5 samples (limit) in batches of 2
    assert "_TqdmLoggingHandler" in seen["handler_types"]  # logging written through tqdm.write


def test_count_shard_regions_from_stats_markers(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("tinyshards", Path(__file__).parents[1] / "viz" / "tinyshards.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    info = tiny.make_dataset(tmp_path / "ds", shards=2)
    from crop.eval.localization import count_shard_regions

    want = sum(1 for r in info["records"] if r["kind"] == "region")
    assert count_shard_regions([str(tmp_path / "ds")]) == want
    (tmp_path / "ds" / "tiny-000001.stats.json").unlink()
    assert count_shard_regions([str(tmp_path / "ds" / "tiny-*.tar")]) is None
