"""The whole runner on tiny random LLaVA-NeXT and Qwen2-VL saved to disk (no processor download).

Checked beyond "it runs": the visual-token counts the runner reports equal those of the family's
own image processor (Qwen2-VL: ``t*h*w / merge**2`` from ``image_grid_thw``; LLaVA-NeXT: the
``<image>`` expansion of ``LlavaNextProcessor``), ILP keeps exactly the tokens whose cells the
region overlaps (``crop.geometry.tokens``), and fractional budgets keep that share of each image.
"""

import json
import math

import pytest

torch = pytest.importorskip("torch")

from crop.eval.runner import ConfigError, EvalConfig, run_eval  # noqa: E402
from crop.eval.scorers.common import read_jsonl  # noqa: E402

REGION = [0, 0, 3, 7]  # left half of the 8x8 block grid


def _regions(tmp_path, keys=("1", "2", "q0", "q1")):
    path = tmp_path / "regions.jsonl"
    path.write_text("".join(json.dumps({"key": k, "region_blocks": REGION}) + "\n" for k in keys))
    return str(path)


def _cfg(model_dir, family, benches, out, **method):
    return EvalConfig.from_dict({
        "model": {"path": str(model_dir), "family": family, "dtype": "float32", "device": "cpu"},
        "method": {"name": "none", **method}, "output_dir": str(out),
        "benchmarks": [dict(b, max_new_tokens=3) for b in benches]})


def _eff(out, bench):
    return [json.loads(line) for line in open(out / bench / "efficiency.jsonl")]


def _qwen_counts(model_dir, image_folder, names):
    """Merged visual tokens per image straight from the saved Qwen2-VL image processor."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil

    ip = Qwen2VLImageProcessorPil.from_pretrained(str(model_dir))
    out = {}
    for name in names:
        grid = ip(images=[Image.open(f"{image_folder}/{name}").convert("RGB")], return_tensors="pt")["image_grid_thw"]
        t, h, w = grid[0].tolist()
        out[name] = (t * h * w // 4, (h // 2, w // 2))
    return out


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl"])
def test_all_benchmarks_unpruned(family, tiny_next_dir, tiny_qwen_dir, tiny_benchmarks, tmp_path):
    torch.set_num_threads(1)
    model_dir = tiny_next_dir if family == "llava_next" else tiny_qwen_dir
    summary = run_eval(_cfg(model_dir, family, tiny_benchmarks.values(), tmp_path / "run"))
    for name, entry in summary["benchmarks"].items():
        assert "score" in entry, (name, entry)
        rows = read_jsonl(tmp_path / "run" / name / "answers.jsonl")
        assert len(rows) == entry["n_questions"] and all(isinstance(r["text"], str) for r in rows)
    assert summary["family"] == family
    eff = {r["key"]: r for r in _eff(tmp_path / "run", "scienceqa")}
    assert eff["p2"]["visual_tokens_in"] == 0          # the text-only ScienceQA problem
    gqa = _eff(tmp_path / "run", "gqa")               # q0: im0.jpg 40x24, q1: im1.jpg 24x40
    folder = tiny_benchmarks["gqa"]["image_folder"]
    if family == "qwen2_vl":
        counts = _qwen_counts(model_dir, folder, ["im0.jpg", "im1.jpg"])
        assert [r["visual_tokens_in"] for r in gqa] == [counts["im0.jpg"][0], counts["im1.jpg"][0]]
    else:
        from PIL import Image
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(str(model_dir))
        for row, name in zip(gqa, ["im0.jpg", "im1.jpg"]):
            ids = proc(images=[Image.open(f"{folder}/{name}")], text="<image>", return_tensors="pt")["input_ids"]
            assert row["visual_tokens_in"] == int((ids == proc.tokenizer.convert_tokens_to_ids("<image>")).sum())
    assert all(r["visual_tokens_in"] == r["visual_tokens_kept"] > 0 for r in gqa)


def _layout(family, model_dir, folder, name):
    """``crop.pruning`` token layout of one image, encoded by the family's own image processor."""
    from PIL import Image
    from transformers import AutoConfig, AutoProcessor, Qwen2VLImageProcessorPil

    from crop.pruning import token_layout

    image = Image.open(f"{folder}/{name}").convert("RGB")
    config = AutoConfig.from_pretrained(str(model_dir))
    if family == "qwen2_vl":
        vis = Qwen2VLImageProcessorPil.from_pretrained(str(model_dir))(images=[image], return_tensors="pt")
        n = int(vis["image_grid_thw"].prod()) // 4
        ids = torch.tensor([[5] + [config.image_token_id] * n + [6]])  # (1, N)
        return token_layout(config, {"input_ids": ids, "image_grid_thw": vis["image_grid_thw"]})[0]
    proc = AutoProcessor.from_pretrained(str(model_dir))
    return token_layout(config, dict(proc(images=[image], text="<image>", return_tensors="pt")))[0]


def _region(method, key):
    from crop.geometry import Region
    from crop.pruning import center_region, random_region

    region = Region(*REGION)
    if method == "center":
        return center_region(region)
    return random_region(region, f"0:{key}") if method == "random" else region


@pytest.mark.parametrize("family, method, extra", [
    ("qwen2_vl", "ilp", {}), ("qwen2_vl", "ilp", {"budget": 0.5}), ("qwen2_vl", "ilp", {"budget": "22.2%"}),
    ("qwen2_vl", "fastv", {"budget": 0.5}), ("qwen2_vl", "center", {"budget": 3}), ("qwen2_vl", "prune", {}),
    ("llava_next", "ilp", {}), ("llava_next", "ilp", {"budget": 6}), ("llava_next", "prune", {}),
    ("llava_next", "fastv", {"budget": 5}), ("llava_next", "random", {"budget": 0.4}),
])
def test_pruning_methods(family, method, extra, tiny_next_dir, tiny_qwen_dir, tiny_benchmarks, tmp_path):
    from crop.geometry.tokens import box_norm_token_mask
    from crop.pruning import region_keep_plan
    from crop.pruning.region_map import to_box_norm

    torch.set_num_threads(1)
    model_dir = tiny_next_dir if family == "llava_next" else tiny_qwen_dir
    m = {"layer": 1, **extra}
    if method != "fastv":
        m["regions"] = _regions(tmp_path)
    cfg = _cfg(model_dir, family, [tiny_benchmarks["gqa"]], tmp_path / "run", name=method, **m)
    summary = run_eval(cfg)
    assert "score" in summary["benchmarks"]["gqa"]
    rows = _eff(tmp_path / "run", "gqa")
    assert [r["key"] for r in rows] == ["q0", "q1"]
    budget = cfg.method.budget
    for row, name in zip(rows, ["im0.jpg", "im1.jpg"]):                # 160x96 and 48x80 pixels
        lay = _layout(family, model_dir, tiny_benchmarks["gqa"]["image_folder"], name)
        cells = sum(v.grid_hw[0] * v.grid_hw[1] for v in lay.views)
        r = math.floor(budget * cells + 0.5) if isinstance(budget, float) else budget   # this image's R
        assert row["visual_tokens_in"] == lay.num_visual
        assert 0 < row["visual_tokens_kept"] < lay.num_visual, row
        if method == "fastv":
            assert row["visual_tokens_kept"] == r                      # top-R visual tokens
            continue
        region = _region(method, row["key"])
        assert row["region"] == REGION and row.get("region_used", REGION) == list(region)
        plan = region_keep_plan([lay], [region], budget=r)
        assert row["visual_tokens_kept"] == plan.visual_kept[0]
        if family == "qwen2_vl" and r is None:   # exact mode on one grid: the cell-overlap rule itself
            assert row["visual_tokens_kept"] == int(box_norm_token_mask(to_box_norm(region), lay.views[0].grid_hw).sum())
        elif family == "qwen2_vl":
            assert abs(row["visual_tokens_kept"] - r) <= max(2, r // 3)   # a rectangle of about R cells
    if family == "qwen2_vl":
        assert rows[0]["visual_tokens_in"] == 15 and rows[1]["visual_tokens_in"] == 6   # dynamic counts
        if isinstance(budget, float):   # a share of each image, not one count for all
            assert rows[0]["visual_tokens_kept"] > rows[1]["visual_tokens_kept"]


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl"])
def test_frontend_prompts_per_family(family, tiny_next_dir, tiny_qwen_dir, tmp_path):
    """NeXT: vicuna_v1 with one <image> expanded by its processor; Qwen2-VL: its chat template with
    <|image_pad|> expanded to t*h*w/4 (no Qwen2VLProcessor, which needs torchvision)."""
    from PIL import Image

    from crop.eval.models import load_frontend

    model_dir = tiny_next_dir if family == "llava_next" else tiny_qwen_dir
    fe = load_frontend(_cfg(model_dir, family, [{"name": "gqa", "question_file": "q"}], tmp_path))
    assert fe.padded is False
    prompt, enc = fe.encode("What colour?\nAnswer briefly.", Image.new("RGB", (160, 96)))
    text = fe.tokenizer.decode(enc["input_ids"][0])
    assert enc["input_ids"].shape[0] == 1 and enc["attention_mask"].all()
    if family == "qwen2_vl":
        assert enc["image_grid_thw"].tolist() == [[1, 6, 10]]
        assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                        "<|vision_start|>" + "<|image_pad|>" * 15 + "<|vision_end|>What colour?\nAnswer briefly."
                        "<|im_end|>\n<|im_start|>assistant\n")
        assert prompt.count("<|image_pad|>") == 1
    else:
        assert prompt == ("A chat between a curious user and an artificial intelligence assistant. The assistant "
                          "gives helpful, detailed, and polite answers to the user's questions. USER: <image>\n"
                          "What colour?\nAnswer briefly. ASSISTANT:")
        assert text.count("<image>") > 16 and text.endswith("ASSISTANT:")   # base view + high-res tiles
