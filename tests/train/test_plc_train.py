"""train-plc: configs, sample -> tokens/labels, overfitting, exact resume, CLI on real shards."""

from __future__ import annotations

import dataclasses
import io
import json
import random
from itertools import islice
from pathlib import Path

import pytest
import torch
from PIL import Image

from crop.contract import instruction_record, region_record, validate

from crop.models.llava_plc import LlavaPLC, byte_tokenizer, tiny_image_processor, tiny_llava
from crop.models.plc import PLC, region_token_masks
from crop.train import common
from crop.train.plc import (
    DataSection,
    OptimSection,
    TrainPLCConfig,
    collate,
    conversation_turns,
    prepare_sample,
    tokenize_turns,
    train,
)

ROOT = Path(__file__).resolve().parents[2]
COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 230, 20)}


def region_sample(i: int, color: str, region=(2, 2, 5, 5), size=(64, 48)):
    img = Image.new("RGB", size, (128, 128, 128))
    w, h = size
    x0, y0, x1, y1 = region
    img.paste(COLORS[color], (x0 * w // 8, y0 * h // 8, (x1 + 1) * w // 8, (y1 + 1) * h // 8))
    rec = region_record(
        source="vsr", source_id=str(i), source_file="vsr_cot_train.jsonl", image=f"{i}.png",
        image_width=w, image_height=h, question="What color is the box?", answer=color,
        boxes_xyxy_px=[[x0 * w / 8, y0 * h / 8, (x1 + 1) * w / 8, (y1 + 1) * h / 8]],
        union_box_xyxy_px=[x0 * w / 8, y0 * h / 8, (x1 + 1) * w / 8, (y1 + 1) * h / 8],
        region_blocks=list(region), grid_size=8)
    validate(rec)
    return {"json": rec, "image": img}


def instruction_sample(i: int, with_image: bool, tag: bool = True):
    human = ("<image>\nDescribe." if tag else "Describe.") if with_image else "Say hi."
    rec = instruction_record(source_id=str(i), source_file="llava.json",
                             image=f"{i}.jpg" if with_image else None,
                             image_width=40 if with_image else None, image_height=40 if with_image else None,
                             conversations=[{"from": "human", "value": human}, {"from": "gpt", "value": "ok"},
                                            {"from": "human", "value": "More?"}, {"from": "gpt", "value": "no"}])
    validate(rec)
    return {"json": rec, "image": Image.new("RGB", (40, 40), (10, 90, 10)) if with_image else None}


def tiny_cfg(tmp_path, **loop) -> TrainPLCConfig:
    cfg = common.load_config(TrainPLCConfig, ROOT / "configs/plc-tiny.yaml")
    cfg.data = dataclasses.replace(cfg.data, region_answer_suffix="")
    cfg.train = dataclasses.replace(cfg.train, output_dir=str(tmp_path), export_final=False,
                                    save_every=1000, log_every=1000, **loop)
    return cfg


def tiny_model(cfg: TrainPLCConfig):
    torch.set_num_threads(1)
    llava = tiny_llava(hidden=cfg.model.tiny_hidden, layers=cfg.model.tiny_layers, seed=0)
    torch.manual_seed(0)
    return LlavaPLC(llava, plc=PLC(cfg.plc)), byte_tokenizer(), tiny_image_processor()


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["plc-llava15-7b.yaml", "plc-tiny.yaml"])
def test_every_yaml_config_loads(name):
    cfg = common.load_config(TrainPLCConfig, ROOT / "configs" / name)
    assert cfg.plc.num_output_tokens == 68
    assert cfg.plc.num_context_queries == 64 and cfg.plc.num_noncontext_queries == 4
    if name == "plc-llava15-7b.yaml":
        assert (cfg.optim.lr, cfg.train.epochs, cfg.plc.dim) == (1e-5, 2, 4096)
    else:
        assert cfg.plc.dim == cfg.model.tiny_hidden


@pytest.mark.parametrize("override, msg", [
    ("train.lrr=1", r"unknown field\(s\) \['lrr'\]"),
    ("train.batch_size=two", "config.train.batch_size: expected int"),
    ("train.batch_size=0", "train.batch_size=0 must be >= 1"),
    ("plc.num_context_queries=60", "square"),
    ("data.text_only=drop", "data.text_only='drop'"),
    ("optim.betas=0.9", "config.optim.betas: expected a list"),
])
def test_config_errors_name_the_field(override, msg):
    with pytest.raises(common.ConfigError, match=msg):
        common.from_dict(TrainPLCConfig, common.apply_overrides({}, [override]))


# ---------------------------------------------------------------- samples -> tokens


def test_labels_cover_only_answers_and_image_expands_to_68():
    from crop.eval.prompts import VICUNA_V1_SYSTEM

    tok = byte_tokenizer()
    turns = [("<image>\nWhat?", "red"), ("And?", "blue")]
    ids, labels = tokenize_turns(turns, tok, 259, 68)
    assert len(ids) == len(labels) and ids.count(259) == 68
    supervised = [t for t in labels if t != -100]
    assert tok.decode(supervised) == " red</s> blue</s>"
    assert tok.decode([t for t, l in zip(ids, labels) if l == -100 and t != 259]) == \
        f"{VICUNA_V1_SYSTEM} USER: \nWhat? ASSISTANT:USER: And? ASSISTANT:"


@pytest.mark.parametrize("sample, text_only, expected", [
    (region_sample(0, "red"), "feed", [("<image>\nWhat color is the box?", "red")]),
    ({"json": region_sample(0, "red")["json"], "image": None}, "feed", "region_without_image"),
    (instruction_sample(1, True), "feed", [("<image>\nDescribe.", "ok"), ("More?", "no")]),
    (instruction_sample(2, True, tag=False), "feed", [("<image>\nDescribe.", "ok"), ("More?", "no")]),
    ({"json": {**instruction_sample(6, True)["json"], "conversations": [
        {"from": "human", "value": "Describe.\n<image>"}, {"from": "gpt", "value": "ok"}]},
      "image": Image.new("RGB", (4, 4))}, "feed", [("<image>\nDescribe.", "ok")]),   # LLaVA moves the tag first
    (instruction_sample(3, False), "feed", [("Say hi.", "ok"), ("More?", "no")]),
    (instruction_sample(3, False), "skip", "text_only"),
    ({"json": {**instruction_sample(4, True)["json"], "conversations": [{"from": "gpt", "value": "x"}]},
      "image": Image.new("RGB", (4, 4))}, "feed", "bad_conversation"),
    ({"json": instruction_sample(5, True)["json"], "image": None}, "feed", "image_missing"),
])
def test_sample_rules(sample, text_only, expected):
    cfg = DataSection(region_answer_suffix="", text_only=text_only)
    got = prepare_sample(sample, cfg, byte_tokenizer(), 259, 68)
    if isinstance(expected, str):
        assert got == expected
        return
    assert conversation_turns(sample["json"], sample["image"] is not None, cfg) == expected
    region = {"region": (2, 2, 5, 5), "instruction": (0, 0, 7, 7)}[sample["json"]["kind"]]
    assert got.region == (region if sample["image"] is not None else None)


def test_collate_mixed_batch():
    cfg = DataSection(region_answer_suffix="")
    tok = byte_tokenizer()
    exs = [prepare_sample(s, cfg, tok, 259, 68) for s in
           (region_sample(0, "red", size=(48, 48)), instruction_sample(1, False), instruction_sample(2, True))]
    batch = collate(exs, tiny_image_processor(), True, (24, 24), tok.pad_token_id)
    assert batch["pixel_values"].shape == (2, 3, 48, 48)
    expected = region_token_masks(torch.tensor([[2, 2, 5, 5], [0, 0, 7, 7]]), (24, 24)).flatten(1)
    assert torch.equal(batch["context_mask"], expected)
    assert (batch["input_ids"] == 259).sum() == 2 * 68
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


# ---------------------------------------------------------------- training


def mean_loss(model, samples, cfg, tok, proc) -> float:
    exs = [prepare_sample(s, cfg.data, tok, 259, 68) for s in samples]
    with torch.no_grad():
        return float(model.eval()(**collate(exs, proc, True, (24, 24), tok.pad_token_id)).loss)


def test_tiny_llava_plc_overfits_a_small_set(tmp_path):
    samples = [region_sample(i, c, region=r) for i, (c, r) in
               enumerate(zip(COLORS, [(0, 0, 2, 2), (5, 5, 7, 7), (2, 3, 4, 6), (0, 4, 3, 7)]))]
    cfg = tiny_cfg(tmp_path, epochs=30, batch_size=4)
    cfg.optim = OptimSection(lr=2e-3, warmup_ratio=0.0, schedule="constant")
    model, tok, proc = tiny_model(cfg)
    before = mean_loss(model, samples, cfg, tok, proc)
    summary = train(cfg, model, tok, proc, samples)
    after = mean_loss(model, samples, cfg, tok, proc)
    assert summary["step"] == 30
    assert after < 0.25 * before, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and {"loss", "lr", "samples_per_s", "eta_s"} <= set(rows[0])
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "checkpoints/step-000030").is_dir()
    assert model.llava.model.vision_tower.embeddings.patch_embedding.weight.requires_grad is False


def shuffled_source(samples):
    def source(epoch, skip):
        order = list(samples)
        random.Random(epoch).shuffle(order)
        return islice(order, skip, None)
    return source


def test_resume_equals_uninterrupted(tmp_path):
    samples = [region_sample(i, c) for i, c in enumerate(COLORS)] + [
        instruction_sample(10, True), instruction_sample(11, False),
        {"json": region_sample(12, "red")["json"], "image": None}]  # one rejected sample
    base = dict(epochs=2, batch_size=2)
    cfg_a = tiny_cfg(tmp_path / "a", **base)
    cfg_a.optim = OptimSection(lr=1e-3, warmup_ratio=0.25)
    model_a, tok, proc = tiny_model(cfg_a)
    summary_a = train(cfg_a, model_a, tok, proc, shuffled_source(samples), samples_per_epoch=7)
    # a micro-batch is the next 2 samples of one endless stream over the epochs (rejected ones
    # left out): 2 epochs x 7 samples = 7 steps, the last step ends exactly at the end of epoch 2
    assert summary_a["step"] == 7

    cfg_b = dataclasses.replace(cfg_a, train=dataclasses.replace(cfg_a.train, output_dir=str(tmp_path / "b"),
                                                                 max_steps=4))  # stops inside epoch 2
    model_b, _, _ = tiny_model(cfg_b)
    assert train(cfg_b, model_b, tok, proc, shuffled_source(samples), 7)["step"] == 4
    mid = json.loads((tmp_path / "b/checkpoints/step-000004/trainer_state.json").read_text())
    assert mid["data"]["epoch"] == 1 and 0 < mid["data"]["consumed"] < 7
    torch.manual_seed(1234)  # disturb the global RNG: the checkpoint must restore it
    cfg_b.train.max_steps = 0
    model_c, _, _ = tiny_model(cfg_b)  # a fresh process would rebuild the model from scratch
    summary_c = train(cfg_b, model_c, tok, proc, shuffled_source(samples), 7)
    assert summary_c["step"] == 7 and summary_c["counters"] == summary_a["counters"] == {"region_without_image": 2}
    steps_logged = [json.loads(r)["step"] for r in (tmp_path / "b/log.jsonl").read_text().splitlines()]
    assert steps_logged == [1, 2, 3, 4, 5, 6, 7]  # the second run really resumed at step 4
    a, c = dict(model_a.named_parameters()), dict(model_c.named_parameters())
    for name, p in a.items():
        assert torch.equal(p, c[name]), name
    state = json.loads((tmp_path / "b/checkpoints/step-000007/trainer_state.json").read_text())
    assert state["data"] == {"epoch": 1, "consumed": 7, "num_workers": 0}


def write_shards(folder: Path, samples) -> None:
    import webdataset as wds

    folder.mkdir(parents=True)
    with wds.TarWriter(str(folder / "tiny-000000.tar")) as sink:
        for s in samples:
            member = {"__key__": s["json"]["key"], "json": json.dumps(s["json"]).encode()}
            if s["image"] is not None:
                buf = io.BytesIO()
                s["image"].save(buf, format="PNG")
                member["png"] = buf.getvalue()
            sink.write(member)


def test_cli_trains_from_shards_and_exports(tmp_path):
    from crop.cli import main

    samples = [region_sample(i, c) for i, c in enumerate(COLORS)] + [instruction_sample(9, False)]
    write_shards(tmp_path / "shards", samples)
    out = tmp_path / "run"
    rc = main(["train-plc", "--config", str(ROOT / "configs/plc-tiny.yaml"), "--shards", str(tmp_path / "shards"),
               "--output-dir", str(out), "--set", "train.max_steps=2", "--set", "train.batch_size=2"])
    assert rc == 0
    saved = common.load_config(TrainPLCConfig, out / "checkpoints/step-000002/config.yaml")
    assert saved.train.max_steps == 2 and saved.data.shards == [str(tmp_path / "shards")]
    loaded = LlavaPLC.from_pretrained(str(out / "final/llava"), plc_weights=str(out / "final/plc.safetensors"),
                                      dtype=torch.float32)
    trained = LlavaPLC.load_plc(out / "final/plc.safetensors")
    assert torch.equal(loaded.plc.q_context, trained.q_context)
    assert loaded.num_image_tokens == 68

    # crop eval loads the export as it is: AutoProcessor with a patch size, PLC answers a question
    from crop.eval.config import EvalConfig
    from crop.eval.engine import Engine
    from crop.eval.prompts import load_questions

    (tmp_path / "img").mkdir()
    samples[0]["image"].save(tmp_path / "img" / "0.png")
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"question_id": 0, "image": "0.png", "text": "What color is the box?"}) + "\n")
    regions = tmp_path / "regions.jsonl"
    regions.write_text(json.dumps({"key": "0", "region_blocks": [2, 2, 5, 5]}) + "\n")
    cfg = EvalConfig.from_dict({
        "model": {"path": str(out / "final/llava"), "dtype": "float32", "device": "cpu",
                  "plc_weights": str(out / "final/plc.safetensors")},
        "method": {"name": "plc", "regions": str(regions)}, "output_dir": str(tmp_path / "eval"),
        "benchmarks": [{"name": "gqa", "question_file": str(qfile), "image_folder": str(tmp_path / "img"),
                        "max_new_tokens": 2}]})
    engine = Engine.load(cfg)
    assert engine.frontend.processor.patch_size == 2 and engine.frontend.padded
    _, info = engine.answer(load_questions("gqa", qfile)[0], cfg.benchmarks[0])
    assert (info["visual_tokens_in"], info["visual_tokens_kept"]) == (24 * 24, 68)


def test_one_run_folder_rule_and_stop_signal(tmp_path):
    """crop.train.run_folder for PLC: another config is refused (named field) unless overwrite; a
    SIGINT mid-run finishes the step, checkpoints and returns stopped; the rerun resumes to the
    end with every log step once."""
    import os
    import signal

    from crop.train.run_folder import RunFolderError

    samples = [region_sample(i, c) for i, c in enumerate(COLORS)] + [instruction_sample(10, True)]
    cfg = tiny_cfg(tmp_path / "run", epochs=2, batch_size=2)
    model, tok, proc = tiny_model(cfg)
    seen = []
    inner = shuffled_source(samples)

    def interrupting(epoch, skip):
        for s in inner(epoch, skip):
            seen.append(1)
            if len(seen) == 5:  # inside step 3
                os.kill(os.getpid(), signal.SIGINT)
            yield s

    out = train(cfg, model, tok, proc, interrupting, samples_per_epoch=len(samples))
    assert out["stopped"] == signal.SIGINT and out["step"] == 3
    assert out["checkpoint"].endswith("step-000003")
    other = dataclasses.replace(cfg, optim=OptimSection(lr=5e-4))
    with pytest.raises(RunFolderError, match=r"optim.lr: 0.001 -> 0.0005"):
        train(other, *tiny_model(other), shuffled_source(samples), samples_per_epoch=len(samples))
    model2, _, _ = tiny_model(cfg)
    done = train(cfg, model2, tok, proc, shuffled_source(samples), samples_per_epoch=len(samples))
    assert done["stopped"] is None and done["step"] == 5  # 2 epochs x 5 samples, 2 per step
    steps = [json.loads(r)["step"] for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_loader_failures_reach_the_log_and_stop_the_run(tmp_path):
    """Damaged shards: every log row carries the loader counters; past max_failure_fraction the
    run saves a checkpoint and stops with the kinds and the first bad sample named."""
    from localizer_tiny import damaged_shards

    from crop.train.loader_health import LoaderFailureError
    from crop.train.plc import shard_source

    shards = damaged_shards(tmp_path / "shards", n=12, bad=3)
    cfg = tiny_cfg(tmp_path / "run", epochs=1, batch_size=2)
    source, n = shard_source([shards], cfg.data)
    model, tok, proc = tiny_model(cfg)
    with pytest.warns(Warning), pytest.raises(LoaderFailureError, match=r"bad_image \d+ \(first: dmg-000000.tar:"):
        train(cfg, model, tok, proc, source, n)
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["loader"]["bad_image"] >= 1
    assert list((tmp_path / "run" / "checkpoints").glob("step-*"))


def test_multi_region_records_train_with_the_union_as_context():
    """A record with several regions (recipe multi_box: regions) becomes a label-map context mask
    (what crop eval --method plc builds for several regions); mixed with one-region rows in a batch,
    the one-region rows are label 1, which PLC treats exactly as their bool mask."""
    from crop.geometry.multi_region import bounding_region
    from crop.train.plc import sample_region

    two = [[0, 0, 1, 1], [5, 5, 7, 7]]
    rec = region_record(
        source="vsr", source_id="m", source_file="vsr_cot_train.jsonl", image="m.png", image_width=64,
        image_height=48, question="Same colour?", answer="no", boxes_xyxy_px=[[0, 0, 16, 12], [40, 30, 64, 48]],
        union_box_xyxy_px=[0, 0, 64, 48], region_blocks=list(bounding_region(two)), grid_size=8, regions_blocks=two)
    validate(rec)
    assert sample_region(rec) == ((0, 0, 1, 1), (5, 5, 7, 7))
    assert sample_region(region_sample(0, "red")["json"]) == (2, 2, 5, 5)
    cfg = tiny_cfg(".")
    model, tok, proc = tiny_model(cfg)
    multi = {"json": rec, "image": Image.new("RGB", (64, 48), (9, 9, 9))}
    exs = [prepare_sample(s, cfg.data, tok, 259, 68) for s in (multi, region_sample(1, "blue"))]
    batch = collate(exs, proc, True, (24, 24), tok.pad_token_id)
    assert batch["context_mask"].dtype == torch.long and set(batch["context_mask"][1].unique().tolist()) == {0, 1}
    assert set(batch["context_mask"][0].unique().tolist()) == {0, 1, 2}
    single = collate(exs[1:], proc, True, (24, 24), tok.pad_token_id)  # bool mask alone
    assert single["context_mask"].dtype == torch.bool
    with torch.no_grad():
        feats = model.image_features(single["pixel_values"])
        a = model.plc(feats, single["context_mask"])
        b = model.plc(feats, single["context_mask"].long())
        loss = model.eval()(**batch).loss
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.isfinite(loss)
