"""train-plc on several processes (CPU, gloo): `accelerate launch` with 2 processes trains, checkpoints
once, and a stopped + resumed 2-process run ends with exactly the weights of the uninterrupted one;
the FSDP2 checkpoint path (crop.train.accel full state, gathered on save, re-sharded on load) resumes
bit-exactly on 2 processes with torch's own `fully_shard`. (accelerate runs CPU processes as DDP
only: FSDP needs GPUs there, so the FSDP path is driven by torchrun + fully_shard directly.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_plc_train import ROOT, write_shards
from test_plc_workers import _samples

pytestmark = pytest.mark.slow
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "--main_process_port", "0", "--num_cpu_threads_per_process", "1", "-m", "crop.cli", "train-plc",
          "--config", str(ROOT / "configs/plc-tiny.yaml")]


def _launch(shards: Path, out: Path, *sets: str) -> subprocess.CompletedProcess:
    cmd = LAUNCH + ["--shards", str(shards), "--output-dir", str(out), "--set", "train.log_every=1",
                    "--set", "train.save_every=100"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this test runs the CPU (gloo) path")
def test_two_processes_ddp_resume_equals_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    write_shards(tmp_path / "shards", _samples())  # 10 samples: 5 per rank per epoch
    full = _launch(tmp_path / "shards", tmp_path / "a")
    assert full.returncode == 0, full.stderr[-3000:]
    part = _launch(tmp_path / "shards", tmp_path / "b", "train.max_steps=2")
    assert part.returncode == 0, part.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-000002"]
    rest = _launch(tmp_path / "shards", tmp_path / "b")  # same config but the cap: resumes at step 2
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "resumed from" in rest.stderr
    for run in ("a", "b"):
        rows = [json.loads(r) for r in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4, 5], run  # 2 epochs x 5 samples per rank / 2
        assert all(r["samples_per_s"] > 0 for r in rows)
    a = load_file(str(tmp_path / "a/final/plc.safetensors"))
    b = load_file(str(tmp_path / "b/final/plc.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    wa = load_file(str(tmp_path / "a/checkpoints/step-000005/model.safetensors"))
    wb = load_file(str(tmp_path / "b/checkpoints/step-000005/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    state = json.loads((tmp_path / "b/checkpoints/step-000005/trainer_state.json").read_text())
    assert state["data"]["epoch"] == 1 and state["data"]["consumed"] == 5


FSDP_PROBE = r"""
import json, sys, types
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from crop.models.llava_plc import LlavaPLC, byte_tokenizer, tiny_image_processor, tiny_llava
from crop.models.plc import PLC
from crop.train import accel, common
from crop.train.plc import collate, prepare_sample
from test_plc_train import region_sample, tiny_cfg

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)
cfg = tiny_cfg(sys.argv[1])
tok, proc = byte_tokenizer(), tiny_image_processor()
acc = types.SimpleNamespace(distributed_type="DistributedType.FSDP", is_main_process=rank == 0,
                            wait_for_everyone=dist.barrier, num_processes=2)

def build():
    llava = tiny_llava(hidden=64, layers=2, seed=0)
    torch.manual_seed(0)
    model = LlavaPLC(llava, plc=PLC(cfg.plc))
    model.freeze_vision_tower()
    for layer in model.llava.model.language_model.layers:
        fully_shard(layer)
    fully_shard(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = common.build_optimizer(named, 1e-3)
    return model, opt, common.build_scheduler(opt, 10, 0, "constant")

colors = ["red", "blue", "green", "yellow"]
samples = [region_sample(i + 2 * rank, colors[(i + rank) % 4]) for i in range(2)]  # each rank its own data
exs = [prepare_sample(s, cfg.data, tok, 259, 68) for s in samples]
batch = collate(exs, proc, True, (24, 24), tok.pad_token_id)

def step(model, opt, sched):
    model(**batch).loss.backward()
    opt.step(); sched.step(); opt.zero_grad()

a, opt_a, sched_a = build()
for _ in range(2):
    step(a, opt_a, sched_a)
path = common.save_checkpoint(sys.argv[1], 2, a, opt_a, sched_a, {"epoch": 0, "consumed": 2}, accelerator=acc,
                              prepared=a)
state = common.rng_state()
step(a, opt_a, sched_a)
wa = accel.full_weights(acc, a, a)

b, opt_b, sched_b = build()
common.load_checkpoint(path, b, opt_b, sched_b, accelerator=acc, prepared=b)
common.set_rng_state(*state)
step(b, opt_b, sched_b)
wb = accel.full_weights(acc, b, b)
same = all(torch.equal(wa[k], wb[k]) for k in wa)
moved = sum(1 for n, p in b.named_parameters() if p.requires_grad)
json.dump({"rank": rank, "same": same, "trainable": moved, "keys": len(wa)}, open(f"{sys.argv[1]}/r{rank}.json", "w"))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_fsdp2_checkpoint_resumes_exactly_on_two_processes(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "probe.py"
    script.write_text(FSDP_PROBE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "localhost:0", str(script), str(tmp_path), str(ROOT), str(ROOT / "tests" / "train")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1)]
    assert runs[0]["same"] and runs[0]["keys"] > 0, runs  # rank 0 gathers the full weights (others: none)
    saved = load_file(str(tmp_path / "step-000002/model.safetensors"))
    from crop.models.llava_plc import LlavaPLC, tiny_llava
    from crop.models.plc import PLC
    from test_plc_train import tiny_cfg

    ref = LlavaPLC(tiny_llava(hidden=64, layers=2, seed=0), plc=PLC(tiny_cfg(tmp_path).plc))
    ref.freeze_vision_tower()
    shapes = {n: p.shape for n, p in ref.named_parameters() if p.requires_grad}
    assert {n: v.shape for n, v in saved.items()} == shapes  # full (gathered) tensors, trainable only
    assert (tmp_path / "step-000002/optimizer.json").exists()
