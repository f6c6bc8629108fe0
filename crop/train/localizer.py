"""``crop train-localizer``: fine-tune Qwen2-VL as the localizer (paper Sec. 4.1, Stage 1).

Paper defaults: vision encoder frozen, everything else trained, AdamW, lr 2e-5, 2 epochs. The
``PatchMerger`` (Qwen2-VL's vision-to-LLM projector, ``model.visual.merger``) counts as "everything
else" and is trained unless ``train_merger: false``.

Launch: ``crop train-localizer --config configs/localizer-qwen2vl-2b.yaml`` on one device, or
``accelerate launch --config_file configs/accelerate-{ddp,fsdp,deepspeed-zero2}.yaml -m crop.cli
train-localizer --config ...`` for several. ``accelerate.Accelerator`` does device placement,
DDP / FSDP / DeepSpeed wrapping, mixed precision, gradient accumulation and clipping; the loop,
the data position and the checkpoints are ours (safetensors + JSON, exact resume).

Modules: :mod:`crop.train.localizer_config` (typed YAML config), :mod:`crop.train.localizer_stream`
(shards through ``crop.data.stream.ShardStream`` or the synthetic set, per rank, with the data
position), :mod:`crop.train.localizer_ckpt` (safetensors + JSON checkpoints that resume exactly
and load as a localizer); this module holds the model set-up, the loop and the CLI.
A resumed run reproduces the uninterrupted one (weights, optimizer, scheduler, RNG, data position).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from crop.train import accel, loader_health, run_folder

from crop.train.localizer_ckpt import latest_checkpoint, load_checkpoint, save_checkpoint
from crop.train.localizer_config import (  # noqa: F401 - re-exported for callers and tests
    LocalizerTrainConfig,
    config_from_dict,
    load_config,
    save_config,
)
from crop.train.localizer_stream import epoch_stream, iter_shard_samples, make_reader  # noqa: F401


# ---------------------------------------------------------------------------------- model

def build_localizer(cfg: LocalizerTrainConfig):
    from crop.models.localizer import Localizer, TinySpec, build_tiny_localizer

    if cfg.model == "tiny":
        return build_tiny_localizer(TinySpec(**cfg.tiny))
    return Localizer.from_pretrained(cfg.model, dtype="float32", device="cpu",
                                     min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)


def freeze_vision(model, train_merger: bool = True) -> tuple[int, int]:
    """Freeze the Qwen2-VL vision tower (optionally not its merger); returns (trainable, frozen)."""
    for name, p in model.model.visual.named_parameters():
        p.requires_grad_(train_merger and name.startswith("merger."))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


# ---------------------------------------------------------------------------------- train

from crop.train.accel import mixed_precision  # noqa: E402,F401 - re-exported (tests, callers)


def make_accelerator(cfg: LocalizerTrainConfig):
    """The ``Accelerator`` for ``cfg`` (:func:`crop.train.accel.make_accelerator`, shared with train-plc)."""
    from crop.train import accel

    return accel.make_accelerator(precision=cfg.precision, grad_accum=cfg.grad_accum, log_with=cfg.log_with,
                                  project_dir=cfg.output_dir, find_unused=cfg.ddp_find_unused)


def _check_deepspeed(acc, cfg: LocalizerTrainConfig) -> None:
    from crop.train import accel

    accel.check_deepspeed(acc, cfg.batch_size, cfg.grad_accum, cfg.max_grad_norm)


def _run_folder_mode(cfg: LocalizerTrainConfig, acc, overwrite: bool) -> str:
    """``crop.train.run_folder``'s rule, decided by the main process and shared with every rank."""
    from dataclasses import asdict

    from crop.train import accel

    return accel.decide_on_main(acc, lambda: run_folder.prepare(cfg.output_dir, asdict(cfg), overwrite=overwrite,
                                                                has_checkpoint=_has_checkpoint),
                                run_folder.RunFolderError)


def _newest_checkpoint(folder) -> str:
    """The checkpoint of the highest step in a run folder: the newest ``checkpoint-*`` or ``final``."""
    found = []
    for path in filter(None, (latest_checkpoint(str(folder)), os.path.join(folder, "final"))):
        try:
            with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
                found.append((int(json.load(f)["step"]), path))
        except (OSError, ValueError, KeyError):
            continue
    return max(found)[1] if found else ""


def _has_checkpoint(folder) -> bool:
    return bool(_newest_checkpoint(folder))


def train(cfg: LocalizerTrainConfig, log: Callable[[str], None] = print,
          on_batch: Callable[[int, list[dict]], None] | None = None, overwrite: bool = False) -> dict:
    """Train per ``cfg``; returns ``{"steps", "final_dir", "losses", "wall_s", "stream", "localizer",
    "rank", "world", "stopped"}``. ``on_batch(epoch, samples)`` sees every micro-batch this rank
    trains on. The output folder follows :mod:`crop.train.run_folder` (a run of the same config
    resumes; another config is refused unless ``overwrite``); a SIGINT/SIGTERM stops after the
    current optimizer step with a checkpoint, and ``stopped`` holds the signal number."""
    import torch
    from tqdm import tqdm

    from crop.models.localizer_data import LocalizerCollator
    from crop.train.common import build_scheduler

    acc = make_accelerator(cfg)
    rank, world = acc.process_index, acc.num_processes
    mode = _run_folder_mode(cfg, acc, overwrite)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank

    loc = build_localizer(cfg)
    loc.encoder.max_length = cfg.max_length
    loc.max_regions = cfg.max_regions  # multi-region targets (issue 21); predictions read them the same way
    model = loc.model
    if cfg.freeze_vision:
        freeze_vision(model, cfg.train_merger)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    reader, per_epoch, source = make_reader(cfg, rank, world)
    global_batch = cfg.batch_size * cfg.grad_accum * world
    total = math.ceil(per_epoch * cfg.epochs / global_batch)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = max(1, int(cfg.warmup_ratio * total)) if cfg.warmup_ratio > 0 else 0
    sched = build_scheduler(opt, total, warmup, cfg.scheduler)  # stepped by hand: not prepared
    if acc.state.deepspeed_plugin is not None:
        _check_deepspeed(acc, cfg)
    prepared, opt = acc.prepare(model, opt)  # device placement + DDP / FSDP / DeepSpeed wrapping
    if acc.gradient_accumulation_steps != cfg.grad_accum:
        raise ValueError(f"accelerate uses gradient_accumulation_steps={acc.gradient_accumulation_steps} "
                         f"(launch config / environment) but config field 'grad_accum' is {cfg.grad_accum}")
    step, epoch, pos = 0, 0, 0
    resume = cfg.resume if cfg.resume not in ("", "auto") else ""
    if not resume and mode == "resume":
        resume = _newest_checkpoint(cfg.output_dir)
    if resume:
        state = load_checkpoint(resume, model, opt, sched, acc, prepared)
        step, epoch, pos = state["step"], state["epoch"], state["position"]
        log(f"resumed from {resume} at step {step} (epoch {epoch}, sample {pos})")
        if acc.is_main_process:
            run_folder.trim_log(os.path.join(cfg.output_dir, "log.jsonl"), step)
    if acc.is_main_process:
        os.makedirs(cfg.output_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.output_dir, "train_config.yaml"))
        log(f"data: {source}; {per_epoch} samples/epoch, {total} steps of {global_batch} samples; "
            f"trainable {trainable:,} frozen {frozen:,}; {acc.distributed_type} x{world} on {acc.device}; "
            f"mixed precision {acc.mixed_precision}")
    if acc.log_with:
        from dataclasses import asdict

        acc.init_trackers("crop-localizer", config=accel.tracker_config(asdict(cfg)))
    from crop.train import prefetch

    collate = LocalizerCollator(loc.encoder, max_regions=cfg.max_regions)
    shard_stream = getattr(reader, "stream", None)
    if shard_stream is not None:  # shards: read, decoded and encoded in DataLoader workers (crop.train.prefetch)
        if resume:
            prefetch.check_resume_workers(state.get("num_workers"), cfg.num_workers, pos, field="num_workers")
        counters = prefetch.LoaderCounts()
        stream = prefetch.endless_items(shard_stream, collate.one, epoch, pos, num_workers=cfg.num_workers,
                                        prefetch_factor=cfg.prefetch_factor, pin_memory=cfg.pin_memory,
                                        counts=counters)
    else:  # the in-memory synthetic set: encoded here
        counters = getattr(reader, "counters", None)
        stream = ((e, p, {"item": collate.one(s), "sample": s}) for e, p, s in epoch_stream(reader, epoch, pos))
    start_step = step
    prepared.train()
    losses: list[float] = []
    window, t0, t_log, seen_log = [], time.time(), time.time(), 0
    bar = tqdm(total=total, initial=step, desc="train-localizer", disable=not acc.is_main_process or not cfg.progress)

    def checkpoint(path: str) -> None:
        save_checkpoint(path, loc, opt, sched, {"step": step, "epoch": epoch, "position": pos,
                                                "num_workers": cfg.num_workers}, cfg, acc, prepared)
        acc.wait_for_everyone()
        if acc.is_main_process and os.path.basename(path).startswith("checkpoint-"):
            kept = sorted(Path(p) for p in glob.glob(os.path.join(cfg.output_dir, "checkpoint-*[0-9]")))
            run_folder.prune_checkpoints(kept, cfg.keep_checkpoints)

    signals = run_folder.StopSignals().__enter__()
    stopped = None
    try:
        while step < total:
            for _ in range(cfg.grad_accum):  # accumulate() skips the DDP all-reduce until the last one
                group = [next(stream) for _ in range(cfg.batch_size)]  # this rank's micro-batch
                epoch, pos = group[-1][0], group[-1][1]  # equal on every rank (equal epoch lengths)
                if on_batch is not None:
                    on_batch(epoch, [row["sample"] for _, _, row in group])  # (no images: they stay in workers)
                batch = {k: v.to(acc.device, non_blocking=True)
                         for k, v in collate.stack([row["item"] for _, _, row in group]).items()}
                with acc.accumulate(prepared):  # prepare() already wrapped forward in autocast
                    loss = prepared(**batch).loss
                    acc.backward(loss)  # divides by grad_accum
                    if acc.sync_gradients and cfg.max_grad_norm:  # FSDP/DeepSpeed: their own clipping
                        acc.clip_grad_norm_(prepared.parameters(), cfg.max_grad_norm)
                    opt.step()  # a no-op until the accumulation window is full
                    opt.zero_grad(set_to_none=True)
                window.append(loss.item())
            sched.step()
            step += 1
            seen_log += global_batch
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                now = time.time()
                mean = acc.reduce(torch.tensor(sum(window) / len(window), device=acc.device), "mean").item()
                losses.append(mean)
                rate = seen_log / max(1e-9, now - t_log)
                eta = (total - step) * global_batch / max(1e-9, rate)
                loader = _loader_counts(counters, acc)  # summed over ranks
                rec = {"step": step, "epoch": epoch, "loss": round(mean, 5), "lr": sched.get_last_lr()[0],
                       "samples_per_s": round(rate, 2), "eta_s": round(eta, 1), "loader": loader}
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{rec['lr']:.2e}")
                if acc.log_with:
                    acc.log(accel.tracker_values(rec), step=step)
                if acc.is_main_process:
                    with open(os.path.join(cfg.output_dir, "log.jsonl"), "a", encoding="utf-8") as f:
                        f.write(json.dumps(rec) + "\n")
                    if not cfg.progress:
                        log(json.dumps(rec))
                window, t_log, seen_log = [], now, 0
                read = (step - start_step) * global_batch
                try:
                    loader_health.check(loader, read, cfg.max_failure_fraction,
                                        getattr(counters, "first", None))
                except loader_health.LoaderFailureError:
                    checkpoint(os.path.join(cfg.output_dir, f"checkpoint-{step:07d}"))
                    raise
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                checkpoint(os.path.join(cfg.output_dir, f"checkpoint-{step:07d}"))
            if accel.stop_requested(signals, acc):
                stopped = signals.requested or signal.SIGTERM
                break
    finally:
        signals.__exit__()
        if acc.log_with:
            acc.end_training()
    bar.close()
    if stopped is not None:
        path = os.path.join(cfg.output_dir, f"checkpoint-{step:07d}")
        if not os.path.isdir(path):
            checkpoint(path)
        prepared.eval()
        return {"steps": step, "final_dir": None, "checkpoint": path, "losses": losses, "wall_s": time.time() - t0,
                "stream": source, "localizer": loc, "rank": rank, "world": world, "stopped": int(stopped)}
    final = os.path.join(cfg.output_dir, "final")
    if not (resume and os.path.abspath(resume) == os.path.abspath(final)):
        checkpoint(final)
    prepared.eval()
    out = {"steps": step, "final_dir": final, "losses": losses, "wall_s": time.time() - t0,
           "stream": source, "localizer": loc, "rank": rank, "world": world, "stopped": None,
           "loader": _loader_counts(counters, acc)}
    acc.wait_for_everyone()  # every rank leaves train() together (the caller may tear the group down)
    return out


def _loader_counts(counters, acc) -> dict[str, int]:
    """Loader failure counters of every rank, summed (kind -> count; ``filled`` = repeats)."""
    from crop.train import accel

    return accel.summed_counts(dict(counters.counts) if counters is not None else {}, acc)


# ------------------------------------------------------------------------------------ CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (configs/localizer-*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field (YAML value), e.g. --set max_steps=100")
    parser.add_argument("--resume", default=None,
                        help="checkpoint folder to resume from (default: a run of the same config in the "
                             "output folder resumes from its newest checkpoint)")
    parser.add_argument("--output-dir", default=None, help="run folder (default: the config's output_dir)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run of another config in the output folder instead of refusing")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    if args.resume:
        overrides.append(f"resume={args.resume}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    try:
        out = train(cfg, log=lambda s: print(s, file=sys.stderr), overwrite=args.overwrite)
    finally:
        accel.leave_process_group()
    if out["stopped"] is not None:
        if out["rank"] == 0:
            print(run_folder.stopped_message(out["stopped"], out["steps"], out["checkpoint"]), file=sys.stderr)
        return 128 + out["stopped"]
    if out["rank"] != 0:
        return 0
    print(json.dumps({"steps": out["steps"], "final_dir": out["final_dir"], "stream": out["stream"],
                      "wall_s": round(out["wall_s"], 1), "last_loss": out["losses"][-1] if out["losses"] else None,
                      "loader": out["loader"]}))
    return 0
