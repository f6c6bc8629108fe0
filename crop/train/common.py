"""Training utilities any recipe may reuse: typed YAML configs, AdamW + schedule, checkpoints, logging.

Checkpoints are a folder per optimizer step, written to ``<name>.tmp`` and renamed when complete::

    <out>/checkpoints/step-000120/
        model.safetensors       trainable parameters only (frozen ones come from the base model)
        optimizer.safetensors   every optimizer-state tensor, keyed "<param name>.<slot>"
        optimizer.json          param groups and non-tensor state (by parameter name)
        rng.safetensors         torch CPU (and CUDA) generator states
        trainer_state.json      step, data position, scheduler state, optimizer param groups and
                                non-tensor state, python/numpy RNG states, counters
        config.yaml             the resolved config

Nothing is pickled: tensors go to safetensors, everything else to JSON/YAML.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import time
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- typed YAML configs


class ConfigError(ValueError):
    """A config file or override names an unknown field or has a value of the wrong type."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not a {tp}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return origin(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float:
        return _as_float(value, where)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp in (int, str, bool) and not (isinstance(value, tp) and (tp is not int or not isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _as_float(value: Any, where: str) -> float:
    """A number, or a string YAML 1.1 left unparsed (``1e-5`` has no dot); anything else raises."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number):
            return number
    raise ConfigError(f"{where}: expected float, got {value!r}")


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from a dict; unknown keys and wrong types raise naming the field."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """``["train.lr=2e-5", ...]`` -> nested dict updates; values are parsed as YAML scalars."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return data


def load_config(cls, path: str | Path, overrides: Iterable[str] = ()):
    """Read a YAML file into dataclass ``cls`` (errors name the file and the field)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return from_dict(cls, apply_overrides(data, overrides), where=str(path))


def dump_config(cfg, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), encoding="utf-8")


# ----------------------------------------------------------------------------- optimizer, schedule


def build_optimizer(named_params: Iterable[tuple[str, torch.nn.Parameter]], lr: float,
                    weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (biases, norms, scalars and 1-D tables are exempt)."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas), eps=eps)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Linear warm-up then ``cosine`` to 0, ``linear`` to 0, or ``constant``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown schedule {kind!r} (cosine, linear, constant)")


def build_scheduler(optimizer, total_steps: int, warmup_steps: int = 0, kind: str = "cosine"):
    lr_factor(0, total_steps, warmup_steps, kind)  # validate kind now
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, kind))


# ----------------------------------------------------------------------------- RNG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {"python": [version, list(internal), gauss],
                     "numpy": [name, keys.tolist(), pos, has_gauss, cached]}


def set_rng_state(tensors: dict[str, torch.Tensor], state: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------------------- checkpoints


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (tied parameters appear once)."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: str | Path, step: int, model: torch.nn.Module, optimizer, scheduler,
                    data_state: dict, config=None, extra: dict | None = None, keep: int = 2,
                    accelerator=None, prepared=None) -> Path:
    """Write ``<root>/step-<step>`` atomically and keep the newest ``keep`` checkpoints.

    Under ``accelerate`` call it on every rank (gathering FSDP shards is a collective; the main
    process writes): ``model`` is the unwrapped model, ``prepared`` what ``prepare`` returned. The
    optimizer state is keyed by parameter name (:func:`crop.train.accel.write_optimizer`), so it
    reloads under another process count or sharding. Under DeepSpeed it is not saved (its engine
    keeps it): such a checkpoint has weights only and is refused for resuming.
    """
    from safetensors.torch import save_file

    from crop.train import accel

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if accelerator is None or accel.distributed_mode(accelerator) == "plain":
        weights = trainable_state(model)  # no copy of the frozen tower
        osd = _named_optimizer_state(model, optimizer)
    else:
        full, osd = accel.full_state(accelerator, prepared, model, optimizer)  # only rank 0 receives them
        weights = {n: full[n].detach().contiguous().cpu() for n in names} if accelerator.is_main_process else {}
    root = Path(root)
    final = root / f"step-{step:06d}"
    if accelerator is not None and not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return final
    tmp = root / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / "model.safetensors"))
    if osd is not None:
        accel.write_optimizer(str(tmp), osd)
    rng_tensors, rng_meta = rng_state()
    save_file({k: v.contiguous() for k, v in rng_tensors.items()}, str(tmp / "rng.safetensors"))
    state = {"step": step, "data": data_state, "scheduler": scheduler.state_dict(), "optimizer": osd is not None,
             "rng": rng_meta, **(extra or {})}
    (tmp / "trainer_state.json").write_text(json.dumps(state, default=_json_default), encoding="utf-8")
    if config is not None:
        dump_config(config, tmp / "config.yaml")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    from crop.train.run_folder import prune_checkpoints  # the one retention rule of both trainers

    prune_checkpoints(sorted(root.glob("step-[0-9]*[0-9]")), keep)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return final


def _named_optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    from crop.train import accel

    sd = accel.raw_optimizer(optimizer).state_dict()
    names = accel.param_names(model, optimizer)
    groups = [dict(g, params=[names[i] for i in g["params"]]) for g in sd["param_groups"]]
    return {"state": {names[i]: st for i, st in sd["state"].items()}, "param_groups": groups}


def _json_default(o):
    if torch.is_tensor(o):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"cannot store {type(o).__name__} in trainer_state.json")


def latest_checkpoint(root: str | Path) -> Path | None:
    done = sorted(p for p in Path(root).glob("step-[0-9]*[0-9]") if p.is_dir())
    return done[-1] if done else None


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer, scheduler, accelerator=None,
                    prepared=None) -> dict:
    """Restore weights, optimizer, scheduler and RNG in place (every rank, after ``prepare``);
    return trainer_state.json."""
    from safetensors.torch import load_file

    from crop.train import accel

    path = Path(path)
    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    if state.get("optimizer") is False:
        raise ValueError(f"{path}: checkpoint holds no optimizer state (a DeepSpeed run); it cannot resume exactly")
    if not (path / "optimizer.json").exists():
        raise ValueError(f"{path}: checkpoint written by an older crop (index-keyed optimizer state); "
                         "start a new run folder")
    weights = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in weights)
    unknown = sorted(set(weights) - set(params))
    if missing or unknown:
        raise ValueError(f"{path}: checkpoint does not match the model (missing {missing[:5]}, "
                         f"unknown {unknown[:5]})")
    accel.load_full_state(accelerator, prepared if prepared is not None else model, model, optimizer, weights,
                          accel.read_optimizer(str(path)), strict=False, where=str(path))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(load_file(str(path / "rng.safetensors")), state["rng"])
    return state


# ----------------------------------------------------------------------------- logging


class ProgressLog:
    """Loss / lr / samples per second / ETA, to the logger and a ``log.jsonl`` file."""

    def __init__(self, total_steps: int, path: str | Path | None = None, every: int = 10,
                 start_step: int = 0, show: bool = True):
        self.total, self.every = total_steps, max(1, every)
        self.path = Path(path) if path else None
        self.t0, self.start, self.samples = time.perf_counter(), start_step, 0
        self.bar, self.show = None, show
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            mininterval=2.0, disable=not show)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass

    def step(self, step: int, loss: float, lr: float, samples: int, extra: dict | None = None) -> dict:
        """Log one optimizer step; ``extra`` fields (e.g. loader counters) join the ``log.jsonl`` row."""
        self.samples += samples
        elapsed = time.perf_counter() - self.t0
        done = step - self.start
        rate = self.samples / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        row = {"step": step, "loss": round(loss, 6), "lr": lr, "samples_per_s": round(rate, 3),
               "eta_s": round(eta, 1), **(extra or {})}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.1f}")
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if self.show and (step % self.every == 0 or step == self.total):
            log.info("step %d/%d loss %.4f lr %.3g %.2f samples/s ETA %.0fs", step, self.total, loss,
                     lr, rate, eta)
        return row

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
