"""Pruning methods through the runner (adapters over crop.pruning) on the tiny LLaVA."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("crop.pruning")

from crop.eval.runner import EvalConfig, run_eval  # noqa: E402


@pytest.mark.parametrize("method, extra", [
    ("ilp", {"budget": 4}), ("center", {"budget": 4}), ("random", {"budget": 4}),
    ("prune", {}), ("fastv", {"budget": 5}),
])
def test_pruning_methods_run_and_report_kept_tokens(tiny_llava_dir, tiny_benchmarks, tmp_path, method, extra):
    torch.set_num_threads(1)
    bench = dict(tiny_benchmarks["pope"], max_new_tokens=2)
    regions = tmp_path / "regions.jsonl"
    # question keys 1 and 2; region = the left half of the 8x8 grid (blocks x 0..3, y 0..7)
    regions.write_text("".join(json.dumps({"key": k, "region_blocks": [0, 0, 3, 7]}) + "\n" for k in ("1", "2")))
    method_cfg = {"name": method, "layer": 1, **extra}
    if method != "fastv":
        method_cfg["regions"] = str(regions)
    cfg = EvalConfig.from_dict({"model": {"path": str(tiny_llava_dir), "dtype": "float32", "device": "cpu"},
                                "method": method_cfg, "output_dir": str(tmp_path / "run"), "benchmarks": [bench]})
    summary = run_eval(cfg)
    assert "score" in summary["benchmarks"]["pope"]
    eff = [json.loads(l) for l in open(tmp_path / "run" / "pope" / "efficiency.jsonl")]
    assert len(eff) == 2
    for row in eff:
        assert row["visual_tokens_in"] == 16
        if method != "fastv":  # region methods split the kept tokens into image and padding
            assert row["visual_tokens_kept_image"] + row["visual_tokens_kept_padding"] == row["visual_tokens_kept"]
        if method == "prune":
            # padded square image, 4x4 token grid: the left half of the grid is 2 columns x 4 rows
            assert row["visual_tokens_kept"] == 8
        else:
            assert row["visual_tokens_kept"] == extra["budget"]
