"""Method ``plc`` through the runner: tiny LLaVA (4x4 visual grid) + a tiny PLC saved as safetensors."""

import json

import pytest

torch = pytest.importorskip("torch")

from crop.eval.runner import ConfigError, EvalConfig, run_benchmark  # noqa: E402
from crop.eval.scorers.common import read_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def plc_weights(tiny_llava_dir, tmp_path_factory):
    """PLC for a 4x4 grid, hidden 32: 2x2 anchors + 1 non-context token = 5 LLM tokens per image."""
    from transformers import LlavaForConditionalGeneration

    from crop.models.llava_plc import LlavaPLC
    from crop.models.plc import PLC, PLCConfig

    torch.manual_seed(1)
    cfg = PLCConfig(dim=32, grid_rows=4, grid_cols=4, num_context_queries=4, num_noncontext_queries=1,
                    anchor_size=2)
    path = tmp_path_factory.mktemp("plc") / "plc.safetensors"
    LlavaPLC(LlavaForConditionalGeneration.from_pretrained(str(tiny_llava_dir)), plc=PLC(cfg)).save_plc(path)
    return str(path)


def test_plc_runs_with_region_masks_through_the_pad_view(tiny_llava_dir, plc_weights, tiny_benchmarks, tmp_path):
    from crop.eval.engine import Engine

    torch.set_num_threads(1)
    regions = tmp_path / "regions.jsonl"
    regions.write_text("".join(json.dumps({"key": k, "region_blocks": [0, 0, 3, 7]}) + "\n" for k in ("1", "2", "p1")))
    cfg = EvalConfig.from_dict({
        "model": {"path": str(tiny_llava_dir), "dtype": "float32", "device": "cpu", "plc_weights": plc_weights},
        "method": {"name": "plc", "regions": str(regions)}, "output_dir": str(tmp_path / "run"),
        "benchmarks": [dict(tiny_benchmarks["pope"], max_new_tokens=3),
                       dict(tiny_benchmarks["scienceqa"], max_new_tokens=3)]})
    engine = Engine.load(cfg)
    assert engine.model.num_image_tokens == 5                    # the saved PLC config, not the 7B default
    masks = []
    hook = engine.model.plc.register_forward_hook(lambda mod, args, out: masks.append(args[1].clone()))
    out = tmp_path / "run"
    entries = {b.name: run_benchmark(engine, cfg, b, out) for b in cfg.benchmarks}
    hook.remove()
    assert "score" in entries["pope"] and "score" in entries["scienceqa"]
    eff = {r["key"]: r for r in read_jsonl(out / "pope" / "efficiency.jsonl")}
    assert all(eff[k]["visual_tokens_in"] == 16 and eff[k]["visual_tokens_kept"] == 5 for k in ("1", "2"))
    # im0 is 160x96: padded to 160x160 (rows 0.2..0.8 hold the image); the left half of the image is
    # x in [0, 0.5] -> grid columns 0-1 on all four rows; im1 (48x80) is padded in x: x in [0.2, 0.5]
    # -> columns 0-1 as well (0.2*4 = 0.8 overlaps column 0).
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:, :2] = True
    assert len(masks) == 3                                       # 2 POPE images + the ScienceQA image problem
    for m in masks[:2]:
        assert torch.equal(m.reshape(4, 4).bool(), expected)
    sqa = {r["key"]: r for r in read_jsonl(out / "scienceqa" / "efficiency.jsonl")}
    assert sqa["p1"]["visual_tokens_kept"] == 5 and sqa["p2"]["visual_tokens_in"] == 0   # text-only: plain LLaVA
    for row in read_jsonl(out / "pope" / "answers.jsonl"):
        assert not row["text"].startswith("A chat")                   # the prompt is cut off the output


def test_plc_config_errors():
    base = {"model": {"path": "m"}, "benchmarks": [{"name": "gqa", "question_file": "q"}]}
    with pytest.raises(ConfigError, match="plc exists for family llava"):
        EvalConfig.from_dict({**base, "model": {"path": "m", "family": "qwen2_vl"},
                              "method": {"name": "plc", "regions": "r"}})
    with pytest.raises(ConfigError, match="budget does not apply to plc"):
        EvalConfig.from_dict({**base, "method": {"name": "plc", "regions": "r", "budget": 64}})
