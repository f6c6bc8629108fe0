"""Localizer trainer: configs, freezing, learning, exact resume, shards and CLI end to end."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch

from crop.train.localizer import (
    LocalizerTrainConfig,
    config_from_dict,
    freeze_vision,
    load_config,
    train,
)

from localizer_tiny import TINY, one_thread  # noqa: F401 (autouse fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))



@pytest.mark.parametrize("name", ["localizer-qwen2vl-2b.yaml", "localizer-tiny.yaml"])
def test_every_config_loads(name):
    cfg = load_config(os.path.join(ROOT, "configs", name))
    assert isinstance(cfg, LocalizerTrainConfig)
    assert cfg.freeze_vision is True


def test_paper_config_has_the_paper_defaults():
    cfg = load_config(os.path.join(ROOT, "configs", "localizer-qwen2vl-2b.yaml"))
    assert (cfg.model, cfg.lr, cfg.epochs) == ("Qwen/Qwen2-VL-2B-Instruct", 2e-5, 2.0)


@pytest.mark.parametrize("data,message", [
    ({"synthetic": 10, "learning_rate": 1.0}, r"unknown config field\(s\) 'learning_rate'; known: "),
    ({"synthetic": 10, "lrr": 0.1}, "unknown config field\\(s\\) 'lrr' \\(did you mean 'lr'\\?\\)"),
    ({"synthetic": 10, "batch_size": "4"}, "config field 'batch_size': expected int"),
    ({"synthetic": 10, "scheduler": "step"}, "config field 'scheduler': 'step' not in"),
    ({"synthetic": 10, "grad_accum": 0}, "config field 'grad_accum' must be >= 1"),
    ({}, "config field 'shards' is empty"),
])
def test_config_errors_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(data)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("synthetic: 8\nlr: 1e-3\n")
    assert load_config(str(path)).lr == 1e-3
    with pytest.raises(ValueError, match="c.yaml: config field 'lr'"):
        load_config(str(path), ["lr=fast"])


def test_freeze_vision_keeps_merger_and_llm_trainable():
    from crop.models.localizer import TinySpec, build_tiny_localizer

    model = build_tiny_localizer(TinySpec(**TINY)).model
    trainable, frozen = freeze_vision(model, train_merger=True)
    for name, p in model.named_parameters():
        in_tower = name.startswith("model.visual.") and not name.startswith("model.visual.merger.")
        assert p.requires_grad is (not in_tower), name
    assert trainable > 0 and frozen > 0
    freeze_vision(model, train_merger=False)
    assert not any(p.requires_grad for p in model.model.visual.parameters())


def _cfg(tmp_path, **kw):
    base = dict(model="tiny", tiny=TINY, synthetic=64, synthetic_spec={"size": 112}, batch_size=8,
                lr=2e-3, precision="fp32", log_every=2, save_every=0, max_length=256,
                output_dir=str(tmp_path / "run"), progress=False, epochs=1.0)
    base.update(kw)
    return config_from_dict(base)


def test_loss_falls_clearly_within_a_minute(tmp_path):
    out = train(_cfg(tmp_path, synthetic=480, lr=5e-3, log_every=5), log=lambda s: None)
    first, last = out["losses"][0], out["losses"][-1]
    assert out["steps"] == 60
    assert last < 0.6 * first, out["losses"]
    log = [json.loads(x) for x in open(tmp_path / "run" / "log.jsonl")]
    assert {"step", "loss", "lr", "samples_per_s", "eta_s", "epoch"} <= set(log[-1])
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").exists() and (final / "train_config.yaml").exists()
    assert not glob.glob(str(final / "*.pt")) + glob.glob(str(final / "*.bin")) + glob.glob(str(final / "*.pth"))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors")), load_file(os.path.join(path, "optimizer.safetensors"))


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    # 64 samples / batch 8 = 8 steps per epoch; 1.5 epochs = 12 steps, so the checkpoint at
    # step 10 sits in the middle of epoch 2 and resuming must skip 16 samples of it.
    straight = train(_cfg(tmp_path / "a", epochs=1.5, save_every=10), log=lambda s: None)
    ckpt = tmp_path / "a" / "run" / "checkpoint-0000010"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["position"]) == (10, 1, 16)
    resumed = train(_cfg(tmp_path / "b", epochs=1.5, resume=str(ckpt)), log=lambda s: None)
    assert straight["steps"] == resumed["steps"] == 12
    (wa, oa), (wb, ob) = _weights(straight["final_dir"]), _weights(resumed["final_dir"])
    assert wa.keys() == wb.keys() and oa.keys() == ob.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k
    # and the resume really restored something: a fresh run from step 0 to 2 differs
    sched_a = json.loads((tmp_path / "a" / "run" / "final" / "scheduler.json").read_text())
    sched_b = json.loads((tmp_path / "b" / "run" / "final" / "scheduler.json").read_text())
    assert sched_a == sched_b and sched_a["last_epoch"] == 12


def test_cli_trains_from_shards_with_instruction_samples_then_predicts_and_evaluates(tmp_path):
    from crop.cli import main
    from crop.contract import instruction_record
    from crop.data.synthetic_localization import synthetic_samples, write_shards

    samples = synthetic_samples(24, seed=5)
    samples.append({"__key__": "x", "json": instruction_record(
        source_id="t1", source_file="l.json", image=None, image_width=None, image_height=None,
        conversations=[{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "Hi."}]), "image": None})
    samples[-1]["__key__"] = samples[-1]["json"]["key"]
    shard_dir = tmp_path / "shards"
    write_shards(samples, str(shard_dir), per_shard=10)
    # text-only sample: a .json member and no image member
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(dict(model="tiny", tiny=TINY, shards=[str(shard_dir)], samples_per_epoch=25,
                                   batch_size=5, lr=1e-3, precision="fp32", max_length=256, epochs=1,
                                   log_every=1, save_every=2, progress=False)))
    out = tmp_path / "run"
    assert main(["train-localizer", "--config", str(cfg), "--output-dir", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["checkpoint-0000002", "checkpoint-0000004", "final", "log.jsonl",
                                       "train_config.yaml"]
    preds = tmp_path / "p.jsonl"
    assert main(["predict-regions", "--model", str(out / "final"), "--input", str(shard_dir),
                 "--output", str(preds), "--batch-size", "8"]) == 0
    rows = [json.loads(x) for x in open(preds)]
    assert len(rows) == 24 and all(r["status"] in ("strict", "lenient", "fallback") for r in rows)
    ev = tmp_path / "ev"
    assert main(["eval-localizer", "--model", str(out / "final"), "--shards", str(shard_dir),
                 "--output-dir", str(ev), "--limit", "10"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["samples"] == 10
    assert len((ev / "predictions.jsonl").read_text().splitlines()) == 10


def test_synthetic_set_is_reproducible_and_splits_do_not_share_keys():
    import numpy as np

    from crop.data.synthetic_localization import synthetic_samples

    a, b = synthetic_samples(3, seed=1), synthetic_samples(3, seed=1)
    assert [s["json"] for s in a] == [s["json"] for s in b]
    assert all(np.array_equal(np.asarray(x["image"]), np.asarray(y["image"])) for x, y in zip(a, b))
    held = synthetic_samples(3, seed=1, split="heldout")
    assert not {s["__key__"] for s in a} & {s["__key__"] for s in held}


def test_plain_background_changes_pixels_only():
    from crop.data.synthetic_localization import SyntheticSpec, synthetic_samples

    kw = dict(size=224, objects=1, min_side=56, max_side=112)
    plain = synthetic_samples(4, seed=2, spec=SyntheticSpec(background="plain", **kw))
    noisy = synthetic_samples(4, seed=2, spec=SyntheticSpec(**kw))
    assert [s["json"] for s in plain] == [s["json"] for s in noisy]  # same boxes, questions, targets
    for p, n in zip(plain, noisy):
        assert len(p["image"].getcolors()) == 2  # one grey + the object's colour
        assert len(n["image"].getcolors(1 << 16)) > 10
        x0, y0, x1, y1 = p["json"]["region_blocks"]
        assert 2 <= x1 - x0 + 1 <= 5 and 2 <= y1 - y0 + 1 <= 5  # 56-112 px = 2-4 blocks of 28 px (+1 unaligned)
    with pytest.raises(ValueError, match="background must be"):
        SyntheticSpec(background="stripes")


def test_docs_shard_training_commands_run(tmp_path, monkeypatch):
    """docs/localizer.md's "From the synthetic set to your shards" commands, as written (the demo
    build into a temporary folder, then the training command on it)."""
    import re
    import shlex
    from pathlib import Path

    from crop.cli import main
    from pipelines.main import run as build

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # the commands name repo-relative files (configs/...)
    doc = (root / "docs" / "localizer.md").read_text()
    block = doc.split("## From the synthetic set to your shards", 1)[1].split("```", 2)[1]
    lines = [ln.split("#")[0].strip() for ln in re.sub(r"\\\s*\n\s*", " ", block).strip().splitlines()]
    build_argv, train_argv = shlex.split(lines[0]), shlex.split(lines[1])
    assert build_argv[:2] == ["python", "beam_runner.py"] and train_argv[:2] == ["crop", "train-localizer"]
    shards = tmp_path / "shards" / "demo"
    build(build_argv[2:] + ["--output", str(shards)])
    argv = [a.replace("shards/demo", str(shards)).replace("runs/loc-demo", str(tmp_path / "run")) for a in train_argv[1:]]
    assert main(argv) == 0
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_localizer_export_drives_crop_eval_in_process(tmp_path, monkeypatch):
    """The trainer's `final/` folder is what `method.localizer` loads in crop eval: a tiny run's
    export predicts the regions of a tiny ILP evaluation end to end (issue 22's round trip)."""
    import shutil
    from pathlib import Path

    import yaml

    from crop.cli import main
    from crop.eval.tiny import write_tiny_eval

    run = train(_cfg(tmp_path, synthetic=16, max_steps=2), log=lambda s: None)
    final = Path(run["final_dir"])
    assert (final / "config.json").is_file() and (final / "preprocessor_config.json").is_file()
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    write_tiny_eval("tiny")
    cfg = yaml.safe_load((root / "configs" / "eval-tiny.yaml").read_text().replace("runs/eval-tiny", "tiny"))
    cfg["method"].pop("regions")
    cfg["method"]["localizer"] = str(final)
    cfg["output_dir"] = "out"
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", "--config", "eval.yaml", "--limit", "2"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "gqa" / "efficiency.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < r["visual_tokens_kept"] < r["visual_tokens_in"] for r in rows)
    shutil.rmtree(tmp_path / "tiny")
