"""``crop train-localizer``: fine-tune Qwen2-VL as the localizer (paper Sec. 4.1, Stage 1).

Paper defaults: vision encoder frozen, everything else trained, AdamW, lr 2e-5, 2 epochs. The
``PatchMerger`` (Qwen2-VL's vision-to-LLM projector, ``model.visual.merger``) counts as "everything
else" and is trained unless ``train_merger: false``.

Launch: ``crop train-localizer --config configs/localizer-qwen2vl-2b.yaml`` on one device, or
``torchrun --nproc_per_node 8 -m crop.cli train-localizer --config ...`` for DDP. The loop is
plain PyTorch (transformers' Trainer needs ``accelerate``, which this environment lacks).

Data position: the stream is a deterministic function of (seed, epoch); the trainer counts the
samples it consumed, and a resumed run skips exactly that many. Checkpoints (safetensors + JSON,
never pickles, see :mod:`crop.train.localizer_ckpt` helpers below) hold weights, optimizer,
scheduler, RNG states and that position, so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import math
import os
import random
import sys
import time
from typing import Any, Callable, Iterable, Iterator

from dataclasses import MISSING, asdict, dataclass, field, fields

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")


# --------------------------------------------------------------------------------- config

@dataclass
class LocalizerTrainConfig:
    """Every knob of a localizer run; defaults are the paper's (Sec. 4.1, Stage 1)."""

    model: str = "Qwen/Qwen2-VL-2B-Instruct"  # folder / Hub id, or "tiny" (random init, no download)
    tiny: dict = field(default_factory=dict)  # TinySpec fields when model == "tiny"
    shards: list = field(default_factory=list)  # tar paths, globs or dataset folders
    synthetic: int = 0  # > 0: train on this many generated synthetic samples instead of shards
    synthetic_spec: dict = field(default_factory=dict)  # SyntheticSpec fields
    samples_per_epoch: int = 0  # 0: from the synthetic size or manifest.json
    output_dir: str = "runs/localizer"
    epochs: float = 2.0
    max_steps: int = 0  # 0: no cap
    batch_size: int = 4  # per device
    grad_accum: int = 1
    lr: float = 2e-5
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 on a CUDA device that has it, else fp32) | bf16 | fp32
    gradient_checkpointing: bool = False
    freeze_vision: bool = True
    train_merger: bool = True
    min_pixels: int = 0  # 0: the processor's own budget
    max_pixels: int = 0
    max_length: int = 2048
    shuffle_buffer: int = 1000
    seed: int = 0
    log_every: int = 10
    save_every: int = 500  # 0: only the final checkpoint
    resume: str = ""  # "" | "auto" | checkpoint folder
    ddp_find_unused: bool = True  # text-only batches leave the merger unused
    progress: bool = True

    def __post_init__(self) -> None:
        choices = {"scheduler": ("cosine", "linear", "constant"), "precision": ("auto", "bf16", "fp32")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config field {name!r}: {getattr(self, name)!r} not in {allowed}")
        for name in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.epochs <= 0:
            raise ValueError(f"config fields 'lr' and 'epochs' must be > 0, got {self.lr}, {self.epochs}")
        if not self.synthetic and not self.shards:
            raise ValueError("config field 'shards' is empty and 'synthetic' is 0: no training data")
        if len(self.betas) != 2:
            raise ValueError(f"config field 'betas' needs two values, got {self.betas}")


def _check_type(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"config field {name!r}: expected {type(default).__name__}, got {value!r}")
    return value


def config_from_dict(data: dict) -> LocalizerTrainConfig:
    """Typed config from a plain dict; unknown fields and wrong types raise naming the field."""
    probe = {f.name: f.default if f.default is not MISSING else f.default_factory()
             for f in fields(LocalizerTrainConfig)}
    unknown = sorted(set(data) - set(probe))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; known: {sorted(probe)}")
    return LocalizerTrainConfig(**{k: _check_type(k, v, probe[k]) for k, v in data.items()})


def load_config(path: str, overrides: Iterable[str] = ()) -> LocalizerTrainConfig:
    """YAML file + ``field=value`` overrides (values parsed as YAML) -> config."""
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping of config fields")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not FIELD=VALUE")
        data[key.strip()] = yaml.safe_load(value) if value != "" else ""
    try:
        return config_from_dict(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def save_config(cfg: LocalizerTrainConfig, path: str) -> None:
    import yaml

    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(asdict(cfg), f, sort_keys=False)


# ---------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: str, loc: Any, opt: Any, sched: Any, position: dict,
                    cfg: LocalizerTrainConfig) -> None:
    """A resumable checkpoint that is also a loadable localizer (``Localizer.from_pretrained``).

    Files: model (``save_pretrained`` safetensors), tokenizer, image processor,
    ``optimizer.safetensors`` + ``optimizer.json`` (tensors / everything else),
    ``scheduler.json``, ``rng.safetensors`` + ``trainer_state.json`` (step, data position,
    Python and NumPy RNG), ``train_config.yaml``. Written to ``path.tmp`` and renamed, so a crash
    never leaves a half checkpoint under the final name.
    """
    import shutil

    import numpy as np
    import torch
    from safetensors.torch import save_file

    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    loc.save_pretrained(tmp)
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                meta["state"].setdefault(str(pid), {})[k] = v
    save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
    with open(os.path.join(tmp, "optimizer.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    with open(os.path.join(tmp, "scheduler.json"), "w", encoding="utf-8") as f:
        # lr_lambdas holds None for plain functions: the schedule is rebuilt from the config
        json.dump(sched.state_dict(), f)
    np_state = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    save_file(rng, os.path.join(tmp, "rng.safetensors"))
    state = dict(position, python_rng=random.getstate(),
                 numpy_rng=[np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])])
    with open(os.path.join(tmp, "trainer_state.json"), "w", encoding="utf-8") as f:
        json.dump(state, f)
    save_config(cfg, os.path.join(tmp, "train_config.yaml"))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def load_checkpoint(path: str, model: Any, opt: Any, sched: Any) -> dict:
    """Restore weights, optimizer, scheduler and RNG in place; returns the trainer state."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    # Weights go through from_pretrained: save_pretrained may rename keys to the hub layout.
    saved = type(model).from_pretrained(path, dtype=next(model.parameters()).dtype)
    model.load_state_dict(saved.state_dict(), strict=True)
    del saved
    with open(os.path.join(path, "optimizer.json"), encoding="utf-8") as f:
        meta = json.load(f)
    state: dict = {int(k): dict(v) for k, v in meta["state"].items()}
    for key, t in load_file(os.path.join(path, "optimizer.safetensors")).items():
        pid, _, k = key.partition(".")
        state.setdefault(int(pid), {})[k] = t
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    with open(os.path.join(path, "scheduler.json"), encoding="utf-8") as f:
        sched.load_state_dict(json.load(f))
    rng = load_file(os.path.join(path, "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("cuda")])
    with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
        tstate = json.load(f)
    py = tstate["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = tstate["numpy_rng"]
    np.random.set_state((n[0], rng["numpy_keys"].numpy().astype(np.uint32), n[1], n[2], n[3]))
    return tstate


def latest_checkpoint(output_dir: str) -> str:
    """The newest ``checkpoint-NNNNNNN`` folder in ``output_dir`` ("" when there is none)."""
    found = sorted(glob.glob(os.path.join(output_dir, "checkpoint-*[0-9]")))
    return found[-1] if found else ""


# ----------------------------------------------------------------------------------- data

def shard_paths(specs: Iterable[str]) -> list[str]:
    """Tar paths from paths, globs or dataset folders (``<folder>/*.tar``), sorted, checked."""
    out: list[str] = []
    for spec in specs:
        found = sorted(glob.glob(os.path.join(spec, "*.tar"))) if os.path.isdir(spec) else sorted(glob.glob(spec))
        if not found:
            raise FileNotFoundError(f"no shards match {spec!r}")
        out.extend(found)
    return out


def decode_sample(raw: dict) -> dict:
    """WebDataset member dict -> ``{"__key__", "json": record, "image": PIL | None}`` (no pickles)."""
    from PIL import Image

    record = json.loads(raw["json"])
    image = None
    for ext in IMAGE_EXTS:
        if ext in raw:
            image = Image.open(io.BytesIO(raw[ext])).convert("RGB")
            break
    if record.get("image") is not None and image is None:
        raise ValueError(f"sample {raw.get('__key__')}: record names an image but the shard has none")
    return {"__key__": raw["__key__"], "json": record, "image": image}


def iter_shard_samples(specs: Iterable[str], order_seed: str | None = None) -> Iterator[dict]:
    """Samples of the shards, read with webdataset; shard order shuffled by ``order_seed``."""
    import webdataset as wds

    paths = shard_paths(specs)
    if order_seed is not None:
        random.Random(order_seed).shuffle(paths)
    for path in paths:  # one shard at a time keeps the order deterministic
        for raw in wds.WebDataset(path, shardshuffle=False, empty_check=False):
            yield decode_sample(raw)


def buffer_shuffle(it: Iterable[dict], size: int, seed: str) -> Iterator[dict]:
    """Reservoir-style shuffle with a fixed-size buffer and a seeded RNG (deterministic)."""
    rng, buf = random.Random(seed), []
    for x in it:
        buf.append(x)
        if len(buf) >= size:
            yield buf.pop(rng.randrange(len(buf)))
    rng.shuffle(buf)
    yield from buf


def make_stream_factory(cfg: LocalizerTrainConfig) -> tuple[Callable[[int], Iterable[dict]], str]:
    """``epoch -> samples`` and a line saying where the samples come from."""
    if cfg.synthetic:
        from crop.data.synthetic_localization import SyntheticSpec, synthetic_samples

        data = synthetic_samples(cfg.synthetic, cfg.seed, SyntheticSpec(**cfg.synthetic_spec))

        def synth(epoch: int) -> Iterable[dict]:
            order = list(range(len(data)))
            random.Random(f"{cfg.seed}:{epoch}").shuffle(order)
            return (data[i] for i in order)
        return synth, f"synthetic localization set ({cfg.synthetic} samples)"
    try:
        from crop.data import stream as crop_stream  # the project's streaming loader, when present
    except ImportError:
        crop_stream = None
    if crop_stream is not None and hasattr(crop_stream, "iter_samples"):
        def project(epoch: int) -> Iterable[dict]:
            return crop_stream.iter_samples(cfg.shards, seed=cfg.seed, epoch=epoch,
                                            shuffle_buffer=cfg.shuffle_buffer)
        return project, "crop.data.stream.iter_samples"

    def direct(epoch: int) -> Iterable[dict]:
        seed = f"{cfg.seed}:{epoch}"
        return buffer_shuffle(iter_shard_samples(cfg.shards, seed), cfg.shuffle_buffer, seed)
    return direct, "webdataset directly (crop.data.stream not available)"


def count_samples(cfg: LocalizerTrainConfig) -> int:
    """Samples per epoch: config, else the synthetic size, else ``manifest.json`` beside the shards."""
    if cfg.samples_per_epoch:
        return cfg.samples_per_epoch
    if cfg.synthetic:
        return cfg.synthetic
    total = 0
    for spec in cfg.shards:
        folder = spec if os.path.isdir(spec) else os.path.dirname(spec)
        manifest = os.path.join(folder, "manifest.json")
        if not os.path.exists(manifest):
            raise ValueError(f"samples_per_epoch: not set and no manifest.json beside {spec!r}")
        with open(manifest, encoding="utf-8") as f:
            total += sum(int(s.get("samples", s.get("count", 0))) for s in json.load(f)["shards"])
    return total


def epoch_stream(factory: Callable[[int], Iterable[dict]], epoch: int, pos: int) -> Iterator[tuple[int, int, dict]]:
    """Endless ``(epoch, position after this sample, sample)``, starting at sample ``pos`` of ``epoch``."""
    while True:
        it = iter(factory(epoch))
        for _ in range(pos):  # resume: skip what the checkpointed run already consumed
            next(it, None)
        for sample in it:
            pos += 1
            yield epoch, pos, sample
        epoch, pos = epoch + 1, 0


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


def lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0
    return f


# ---------------------------------------------------------------------------------- train

def train(cfg: LocalizerTrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train per ``cfg``; returns ``{"steps", "final_dir", "losses", "wall_s", "stream"}``."""
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    from crop.models.localizer_data import LocalizerCollator

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    loc = build_localizer(cfg)
    loc.encoder.max_length = cfg.max_length
    model = loc.model.to(device)
    trainable, frozen = freeze_vision(model, cfg.train_merger) if cfg.freeze_vision else (0, 0)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"
                                           and torch.cuda.is_bf16_supported())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    per_epoch = count_samples(cfg)
    global_batch = cfg.batch_size * cfg.grad_accum * world
    total = math.ceil(per_epoch * cfg.epochs / global_batch)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = max(1, int(cfg.warmup_ratio * total)) if cfg.warmup_ratio > 0 else 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.scheduler, warmup, total))
    step, epoch, pos = 0, 0, 0
    resume = latest_checkpoint(cfg.output_dir) if cfg.resume == "auto" else cfg.resume
    if resume:
        state = load_checkpoint(resume, model, opt, sched)
        step, epoch, pos = state["step"], state["epoch"], state["position"]
        log(f"resumed from {resume} at step {step} (epoch {epoch}, sample {pos})")
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local] if device.type == "cuda" else None,
            find_unused_parameters=cfg.ddp_find_unused)
    factory, source = make_stream_factory(cfg)
    if rank == 0:
        os.makedirs(cfg.output_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.output_dir, "train_config.yaml"))
        log(f"data: {source}; {per_epoch} samples/epoch, {total} steps of {global_batch} samples; "
            f"trainable {trainable:,} frozen {frozen:,}; bf16={use_bf16}; world={world}")
    collate = LocalizerCollator(loc.encoder)
    stream = epoch_stream(factory, epoch, pos)
    model.train()
    losses: list[float] = []
    window, t0, t_log, seen_log = [], time.time(), time.time(), 0
    bar = tqdm(total=total, initial=step, desc="train-localizer", disable=rank != 0 or not cfg.progress)
    while step < total:
        for _ in range(cfg.grad_accum):
            group = [next(stream) for _ in range(cfg.batch_size * world)]  # one global micro-batch
            epoch, pos = group[-1][0], group[-1][1]
            mine = [s for _, _, s in group[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]]
            batch = {k: v.to(device) for k, v in collate(mine).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = ddp_model(**batch).loss / cfg.grad_accum
            loss.backward()
            window.append(loss.item() * cfg.grad_accum)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        seen_log += global_batch
        bar.update(1)
        if step % cfg.log_every == 0 or step == total:
            now = time.time()
            mean = sum(window) / len(window)
            losses.append(mean)
            rate = seen_log / max(1e-9, now - t_log)
            eta = (total - step) * global_batch / max(1e-9, rate)
            rec = {"step": step, "epoch": epoch, "loss": round(mean, 5), "lr": sched.get_last_lr()[0],
                   "samples_per_s": round(rate, 2), "eta_s": round(eta, 1)}
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{rec['lr']:.2e}")
            if rank == 0:
                with open(os.path.join(cfg.output_dir, "log.jsonl"), "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                if not cfg.progress:
                    log(json.dumps(rec))
            window, t_log, seen_log = [], now, 0
        if rank == 0 and cfg.save_every and step % cfg.save_every == 0 and step < total:
            save_checkpoint(os.path.join(cfg.output_dir, f"checkpoint-{step:07d}"), loc, opt, sched,
                            {"step": step, "epoch": epoch, "position": pos}, cfg)
    bar.close()
    final = os.path.join(cfg.output_dir, "final")
    if rank == 0:
        save_checkpoint(final, loc, opt, sched, {"step": step, "epoch": epoch, "position": pos}, cfg)
    model.eval()
    return {"steps": step, "final_dir": final, "losses": losses, "wall_s": time.time() - t0,
            "stream": source, "localizer": loc}


# ------------------------------------------------------------------------------------ CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (configs/localizer-*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field (YAML value), e.g. --set max_steps=100")
    parser.add_argument("--resume", default=None, help="checkpoint folder, or 'auto' for the latest")
    parser.add_argument("--output-dir", default=None)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    if args.resume:
        overrides.append(f"resume={args.resume}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    out = train(cfg, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps({"steps": out["steps"], "final_dir": out["final_dir"], "stream": out["stream"],
                      "wall_s": round(out["wall_s"], 1), "last_loss": out["losses"][-1] if out["losses"] else None}))
    return 0
