"""benchmarks/multi_region.py part 1 on a few questions: it runs, and its figures obey the rules
(every object fully covered by both policies; several regions never keep more than the union)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


def test_part1_figures_are_consistent(capsys):
    spec = importlib.util.spec_from_file_location("multi_region_bench", ROOT / "benchmarks" / "multi_region.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.measure_union_vs_regions(40, seed=3)
    assert res["questions"] > 5
    for n in (1, 2, 3, 4):
        assert res[n]["area_recall_per_object"] == 1.0
        assert res[n]["llava_tokens_kept"] <= res[1]["llava_tokens_kept"]
        assert res[n]["blocks_kept"] <= res[1]["blocks_kept"]
    assert res[1]["regions_per_question"] == 1.0 and res[2]["regions_per_question"] > 1.0
    assert res[2]["llava_tokens_kept"] < res[1]["llava_tokens_kept"]
    bench.print_part1(res)
    assert "regions N=2 / union" in capsys.readouterr().out
