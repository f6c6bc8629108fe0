"""``crop eval --method self`` on generated benchmarks with tiny saved models (issue 25).

Checked beyond "it runs": no regions file is needed; every row logs the region, its attention
share and the 8x8 block scores; the share equals the block scores inside the region; the kept
tokens stay within R in budget mode, and the mass mode's region holds at least the asked share
(that the kept tokens are the logged region's exact keep plan is checked in
tests/pruning/test_self_region.py).
"""

import json

import pytest

torch = pytest.importorskip("torch")

from crop.eval.runner import EvalConfig, run_eval  # noqa: E402


def _rows(out, bench):
    return [json.loads(line) for line in open(out / bench / "efficiency.jsonl")]


def _check_row(row):
    import numpy as np

    from crop.geometry import Region

    region = Region(*row["region_used"]).check(8)
    scores = np.array(row["block_scores"])
    assert scores.shape == (8, 8) and scores.sum() == pytest.approx(1.0, abs=1e-3)
    inside = scores[region.y_min:region.y_max + 1, region.x_min:region.x_max + 1].sum()
    assert row["attention_share"] == pytest.approx(inside, abs=1e-3)
    assert row["stages"] == [[1, row["visual_tokens_kept"]]]
    return region


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("extra", [{"budget": 4}, {"options": {"mass": 0.6, "self_layer": 0}},
                                   {"budget": 4, "options": {"relative": True}}])
def test_crop_eval_self(family, extra, tiny_llava_dir, tiny_qwen_dir, tiny_benchmarks, tmp_path):
    torch.set_num_threads(1)
    model_dir = tiny_llava_dir if family == "llava" else tiny_qwen_dir
    bench = dict(tiny_benchmarks["pope"], max_new_tokens=2)
    model = {"path": str(model_dir), "dtype": "float32", "device": "cpu"}
    if family != "llava":
        model["family"] = family
    cfg = EvalConfig.from_dict({"model": model, "method": {"name": "self", "layer": 1, **extra},
                                "output_dir": str(tmp_path / "run"), "benchmarks": [bench]})
    summary = run_eval(cfg)
    assert "score" in summary["benchmarks"]["pope"]
    rows = _rows(tmp_path / "run", "pope")
    assert len(rows) == 2
    for row in rows:
        _check_row(row)
        assert row["self_layer"] == extra.get("options", {}).get("self_layer", 0)  # default S = K - 1 = 0
        assert 0 < row["visual_tokens_kept"] <= row["visual_tokens_in"]
        if "budget" in extra:
            assert row["visual_tokens_kept"] <= extra["budget"]
        else:
            assert row["attention_share"] >= 0.6 - 1e-6
