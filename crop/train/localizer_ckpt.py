"""Checkpoints of ``crop train-localizer``: resumable, and loadable as a localizer.

A checkpoint folder is at the same time a ``Localizer.from_pretrained`` folder (full weights via
``save_pretrained``, tokenizer, image processor) and a resume point:

    model.safetensors (+ config, tokenizer, image processor)    weights, loadable by transformers
    optimizer.safetensors + optimizer.json                      optimizer tensors / the rest, keyed
                                                                by parameter name ("<name>.<slot>")
    scheduler.json                                              LambdaLR state (the schedule itself
                                                                is rebuilt from the config)
    rng.safetensors + trainer_state.json                        RNG states, step, epoch, data position
    train_config.yaml                                           the resolved config

Full weights (not only the trainable ones, as :func:`crop.train.common.save_checkpoint` stores)
because a localizer checkpoint must be usable on its own for ``crop predict-regions`` / eval.
RNG states go through :func:`crop.train.common.rng_state` / ``set_rng_state``. Nothing is pickled.
Written to ``<path>.tmp`` and renamed, so a crash never leaves a half checkpoint under the name.

Under ``accelerate``: every rank calls :func:`save_checkpoint` (under FSDP gathering the full weights
and optimizer state is a collective), only the main process writes. Single process and DDP hold full
replicas, so the state is read directly. FSDP goes through ``torch.distributed.checkpoint.state_dict``
(full, CPU-offloaded on save; every rank re-shards the full dict on load). DeepSpeed keeps its sharded
optimizer inside the engine (its own checkpoints are pickles): its checkpoints hold full weights only,
are marked ``"optimizer": false`` and are refused for resuming.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any

from crop.train import accel
from crop.train.localizer_config import LocalizerTrainConfig, save_config


def save_checkpoint(path: str, loc: Any, opt: Any, sched: Any, position: dict,
                    cfg: LocalizerTrainConfig, accelerator: Any = None, prepared: Any = None) -> None:
    """Write the checkpoint folder ``path``; ``position`` holds step, epoch and data position.

    Call on every rank; ``prepared`` is the model ``accelerator.prepare`` returned (default
    ``loc.model``). Only the main process (or a call without an accelerator) writes.
    """
    from safetensors.torch import save_file

    from crop.train.common import rng_state

    weights, osd = accel.full_state(accelerator, prepared if prepared is not None else loc.model, loc.model, opt)
    if accelerator is not None and not accelerator.is_main_process:
        return
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    loc.model.save_pretrained(tmp, state_dict=weights)
    loc.encoder.tokenizer.save_pretrained(tmp)
    loc.encoder.image_processor.save_pretrained(tmp)
    if osd is not None:
        accel.write_optimizer(tmp, osd)
    with open(os.path.join(tmp, "scheduler.json"), "w", encoding="utf-8") as f:
        # lr_lambdas holds None for plain functions: the schedule is rebuilt from the config
        json.dump(sched.state_dict(), f)
    rng_tensors, rng_meta = rng_state()
    save_file({k: v.contiguous() for k, v in rng_tensors.items()}, os.path.join(tmp, "rng.safetensors"))
    with open(os.path.join(tmp, "trainer_state.json"), "w", encoding="utf-8") as f:
        json.dump(dict(position, rng=rng_meta, optimizer=osd is not None), f)
    save_config(cfg, os.path.join(tmp, "train_config.yaml"))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def load_checkpoint(path: str, model: Any, opt: Any, sched: Any, accelerator: Any = None,
                    prepared: Any = None) -> dict:
    """Restore weights, optimizer, scheduler and RNG in place (every rank); returns the trainer state.

    Call after ``accelerator.prepare``; ``model`` is the unwrapped model, ``prepared`` what
    ``prepare`` returned.
    """
    from safetensors.torch import load_file

    from crop.train.common import set_rng_state

    with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
        tstate = json.load(f)
    if not tstate.get("optimizer", True):
        raise ValueError(f"{path}: checkpoint holds no optimizer state (a DeepSpeed run); it loads as a "
                         "localizer but cannot resume exactly")
    if accel.distributed_mode(accelerator) == "deepspeed":
        raise ValueError("resuming under DeepSpeed is not supported: its optimizer state lives in the "
                         "engine and is not saved by this trainer")
    # Weights go through from_pretrained: save_pretrained may rename keys to the hub layout.
    saved = type(model).from_pretrained(path, dtype=next(model.parameters()).dtype)
    weights = saved.state_dict()
    del saved
    accel.load_full_state(accelerator, prepared, model, opt, weights, accel.read_optimizer(path), where=path)
    with open(os.path.join(path, "scheduler.json"), encoding="utf-8") as f:
        sched.load_state_dict(json.load(f))
    set_rng_state(load_file(os.path.join(path, "rng.safetensors")), tstate["rng"])
    return tstate


def latest_checkpoint(output_dir: str) -> str:
    """The newest ``checkpoint-NNNNNNN`` folder in ``output_dir`` ("" when there is none)."""
    found = sorted(p for p in glob.glob(os.path.join(output_dir, "checkpoint-*[0-9]")) if os.path.isdir(p))
    return found[-1] if found else ""
