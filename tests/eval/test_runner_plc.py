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


@pytest.mark.parametrize("aspect, region", [("pad", [0, 2, 1, 5]), ("processor", [0, 2, 1, 5]),
                                            ("processor", [3, 1, 4, 6])])
def test_a_training_batch_is_what_eval_feeds_plc(tiny_llava_dir, plc_weights, tmp_path, monkeypatch, aspect,
                                                 region):
    """PLC trained as evaluated: for a region on a 1000x400 image, ``crop train-plc``'s batch
    (tokenizer and image processor loaded as the trainer loads them, same ``image_aspect``) holds
    the prompt ids, pixels and context mask that ``crop eval --method plc`` hands to
    ``LlavaPLC.generate``.

    The region (0, 2, 1, 5) lies in the strip a centre crop cuts off: the processor's own view
    gives it no context token at all, the padded view (LLaVA-1.5's, the default) keeps it.
    """
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer

    from crop.eval.engine import Engine
    from crop.eval.prompts import load_questions
    from crop.models.llava_plc import view_of
    from crop.train.plc import DataSection, collate, prepare_sample

    torch.set_num_threads(1)
    question = "What is on the left?"
    pixels = np.random.default_rng(0).integers(0, 256, (400, 1000, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)  # noise: every pixel of the view is compared
    (tmp_path / "img").mkdir()
    image.save(tmp_path / "img" / "wide.png")  # lossless: eval reads back the same pixels
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"question_id": 7, "image": "wide.png",
                                 "text": f"{question}\nAnswer the question using a single word or phrase."}) + "\n")
    regions = tmp_path / "regions.jsonl"
    regions.write_text(json.dumps({"key": "7", "region_blocks": region}) + "\n")
    cfg = EvalConfig.from_dict({
        "model": {"path": str(tiny_llava_dir), "dtype": "float32", "device": "cpu", "plc_weights": plc_weights,
                  "image_aspect": aspect},
        "method": {"name": "plc", "regions": str(regions)}, "output_dir": str(tmp_path / "run"),
        "benchmarks": [{"name": "gqa", "question_file": str(qfile), "image_folder": str(tmp_path / "img"),
                        "max_new_tokens": 1}]})
    engine = Engine.load(cfg)
    fed = {}
    generate = engine.model.generate
    monkeypatch.setattr(engine.model, "generate", lambda **kw: fed.update(kw) or generate(**kw))
    engine.answer(load_questions("gqa", qfile)[0], cfg.benchmarks[0])

    tok = AutoTokenizer.from_pretrained(str(tiny_llava_dir))  # as crop.train.plc.build_model loads them
    proc = AutoImageProcessor.from_pretrained(str(tiny_llava_dir))
    record = {"kind": "region", "question": question, "answer": "noise", "region_blocks": region, "grid_size": 8}
    data = DataSection(image_aspect=aspect)  # default suffix: LLaVA's short-answer one
    ex = prepare_sample({"json": record, "image": image}, data, tok, engine.model.image_token_id,
                        engine.model.num_image_tokens)
    batch = collate([ex], proc, data.image_aspect == "pad", engine.model.grid_hw, tok.pad_token_id,
                    engine.model.tile_px)

    first_label = int((batch["labels"][0] != -100).nonzero()[0])
    assert torch.equal(batch["input_ids"][:, :first_label], fed["input_ids"].cpu())
    assert torch.equal(batch["pixel_values"], fed["pixel_values"].cpu())
    assert torch.equal(batch["context_mask"], fed["context_mask"].cpu())
    if region == [0, 2, 1, 5]:
        assert view_of(proc) == "center_crop"
        assert (batch["context_mask"].sum() > 0) == (aspect == "pad")  # cropped away by the processor
    else:
        assert batch["context_mask"].sum() > 0
