"""The localizer trainer on ``accelerate``: the shipped launch configs parse with accelerate's own
validators, one process trains with bf16 autocast and gradient accumulation, and two launched CPU
processes (DDP over gloo) end with identical weights having seen every sample once per epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from crop.train.localizer import _check_deepspeed, config_from_dict, mixed_precision, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64,
        "vision_depth": 1, "vision_dim": 16, "vision_heads": 1}
SMALL = {"size": 56, "min_side": 8, "max_side": 16}


def _launch_args(name: str):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = os.path.join(ROOT, "configs", f"accelerate-{name}.yaml")
    args = launch_command_parser().parse_args(["--config_file", path, "train.py"])
    return _validate_launch_command(args)[0]


def test_ddp_launch_config_is_valid():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    cfg = load_config_from_file(os.path.join(ROOT, "configs", "accelerate-ddp.yaml"))
    assert cfg.distributed_type == DistributedType.MULTI_GPU and cfg.mixed_precision == "bf16"
    args = _launch_args("ddp")
    assert args.multi_gpu and not args.use_fsdp and not args.use_deepspeed and args.num_processes == 8


def test_fsdp_launch_config_builds_accelerates_fsdp_plugin(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = _launch_args("fsdp")
    assert args.use_fsdp and args.mixed_precision == "bf16"
    env = prepare_multi_gpu_env(args)  # what `accelerate launch` hands the workers
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # reads (and validates) that environment
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert str(plugin.state_dict_type).endswith("FULL_STATE_DICT")
    assert plugin.auto_wrap_policy is not None


def test_deepspeed_launch_config_builds_accelerates_plugin_and_must_match_the_trainer():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    args = _launch_args("deepspeed-zero2")
    assert args.use_deepspeed and args.zero_stage == 2
    ds_fields = load_config_from_file(os.path.join(ROOT, "configs", "accelerate-deepspeed-zero2.yaml")).deepspeed_config
    plugin = DeepSpeedPlugin(**ds_fields)  # does not need deepspeed installed
    assert plugin.zero_stage == 2 and plugin.deepspeed_config["gradient_clipping"] == 1.0
    paper = json.loads(json.dumps(plugin.deepspeed_config))
    fake = SimpleNamespace(num_processes=8, state=SimpleNamespace(deepspeed_plugin=plugin))
    from crop.train.localizer import load_config

    cfg = load_config(os.path.join(ROOT, "configs", "localizer-qwen2vl-2b.yaml"))
    _check_deepspeed(fake, cfg)  # the paper config agrees with the shipped ZeRO-2 file
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == cfg.batch_size
    assert plugin.deepspeed_config["train_batch_size"] == cfg.batch_size * cfg.grad_accum * 8
    plugin.deepspeed_config = paper
    with pytest.raises(ValueError, match="gradient_accumulation_steps=4 but trainer config says 2"):
        _check_deepspeed(fake, config_from_dict(dict(synthetic=4, grad_accum=2)))


def test_precision_choice():
    assert mixed_precision("fp32") == "no" and mixed_precision("bf16") == "bf16"
    cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert mixed_precision("auto") == ("bf16" if cuda_bf16 else "no")


def test_one_process_bf16_with_gradient_accumulation(tmp_path):
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    batches, lines = [], []
    cfg = config_from_dict(dict(model="tiny", tiny=TINY, synthetic=24, synthetic_spec=SMALL, batch_size=3,
                                grad_accum=2, lr=2e-3, precision="bf16", log_every=1, save_every=0,
                                max_length=128, output_dir=str(tmp_path / "run"), progress=False, epochs=1.0))
    out = train(cfg, log=lines.append, on_batch=lambda e, b: batches.append(len(b)))
    assert out["steps"] == 4 and batches == [3] * 8  # 24 samples = 4 steps x 2 micro-batches x 3
    assert "mixed precision bf16" in lines[0] and "x1 on cpu" in lines[0]
    final = out["final_dir"]
    opt = load_file(os.path.join(final, "optimizer.safetensors"))
    steps = {float(v) for k, v in opt.items() if k.endswith(".step")}
    assert steps == {4.0}  # the optimizer stepped once per accumulation window, not per micro-batch
    assert json.loads(open(os.path.join(final, "scheduler.json")).read())["last_epoch"] == 4
    # an fp32 run in the same interpreter afterwards (accelerate's state is per process)
    later: list[str] = []
    again = train(config_from_dict(dict(cfg.__dict__, precision="fp32", max_steps=1,
                                        output_dir=str(tmp_path / "b"))), log=later.append)
    assert again["steps"] == 1 and "mixed precision no" in later[0]


PROBE = """
import json, os, sys
import torch
torch.set_num_threads(1)
from safetensors.torch import save_file
from crop.train.localizer import config_from_dict, train
out = sys.argv[1]
cfg = config_from_dict(json.loads(sys.argv[2]))
seen = []
res = train(cfg, log=lambda s: None, on_batch=lambda e, b: seen.extend([e, s["__key__"]] for s in b))
sd = {k: v.contiguous() for k, v in res["localizer"].model.state_dict().items()}
save_file(sd, os.path.join(out, "w%d.safetensors" % res["rank"]))
with open(os.path.join(out, "r%d.json" % res["rank"]), "w") as f:
    json.dump({"world": res["world"], "steps": res["steps"], "seen": seen}, f)
# leave the gloo group together: a rank exiting while the other still holds the group can abort
# it ("terminate called without an active exception"), seen once under CI load
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
"""


def test_two_cpu_processes_ddp_identical_weights_each_sample_once_per_epoch(tmp_path):
    from safetensors.torch import load_file

    from crop.models.localizer import TinySpec, build_tiny_localizer

    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    cfg = dict(model="tiny", tiny=TINY, synthetic=24, synthetic_spec=SMALL, batch_size=3, grad_accum=2,
               lr=2e-3, precision="fp32", log_every=1, save_every=0, max_length=128, progress=False,
               epochs=2.0, output_dir=str(tmp_path / "run"))
    # `--multi_gpu` picks accelerate's torchrun launcher; without CUDA the trainer asks for
    # cpu=True, so the workers join a gloo group (accelerate's `--cpu` launcher needs MPI for >1)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", "--num_cpu_threads_per_process", "1", str(script), str(tmp_path),
           json.dumps(cfg)]
    if torch.cuda.is_available():
        pytest.skip("this test runs the CPU (gloo) path")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1)]
    assert [(r["world"], r["steps"]) for r in runs] == [(2, 4), (2, 4)]  # 48 samples / (3 x 2 x 2)
    for epoch in (0, 1):
        keys = Counter(k for r in runs for e, k in r["seen"] if e == epoch)
        assert len(keys) == 24 and set(keys.values()) == {1}, epoch
        halves = [{k for e, k in r["seen"] if e == epoch} for r in runs]
        assert len(halves[0]) == len(halves[1]) == 12 and not halves[0] & halves[1]  # ranks split it
    w0, w1 = load_file(str(tmp_path / "w0.safetensors")), load_file(str(tmp_path / "w1.safetensors"))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    torch.manual_seed(0)  # the trainer's seed: the weights both ranks started from
    init = build_tiny_localizer(TinySpec(**TINY)).model.state_dict()
    moved = [k for k in w0 if not torch.equal(w0[k], init[k])]
    assert moved and all(not k.startswith("model.visual.blocks") for k in moved)  # tower frozen
    saved = sorted(os.listdir(tmp_path / "run"))
    assert saved == ["final", "log.jsonl", "train_config.yaml"]  # the main process wrote once
