"""Typed config of ``crop train-localizer``: a dataclass, YAML loading with field=value overrides.

Kept apart from :mod:`crop.train.common`'s generic loader because this one checks scalar types
against the defaults (a YAML ``1e-3``, read as a string by YAML 1.1, becomes a float; any other
string in a float field is an error naming the field) and its messages are part of the tests.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Iterable


@dataclass
class LocalizerTrainConfig:
    """Every knob of a localizer run; defaults are the paper's (Sec. 4.1, Stage 1)."""

    model: str = "Qwen/Qwen2-VL-2B-Instruct"  # folder / Hub id, or "tiny" (random init, no download)
    tiny: dict = field(default_factory=dict)  # TinySpec fields when model == "tiny"
    shards: list = field(default_factory=list)  # tar paths, globs or dataset folders
    synthetic: int = 0  # > 0: train on this many generated synthetic samples instead of shards
    synthetic_spec: dict = field(default_factory=dict)  # SyntheticSpec fields
    samples_per_epoch: int = 0  # 0: the synthetic size, or the shards' count (manifest / stats)
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
    max_regions: int = 1  # > 1: targets list up to this many regions, "x0 y0 x1 y1; ..." (issue 21)
    shuffle_buffer: int = 1000  # block size of the shard stream's shuffle (samples)
    max_failure_fraction: float = 0.001  # stop (after a checkpoint) when more samples fail to load
    num_workers: int = 0  # DataLoader workers reading, decoding and encoding shard samples (crop.train.prefetch)
    prefetch_factor: int = 2  # samples each worker prepares ahead
    pin_memory: bool = True  # page-locked batches when training on CUDA
    seed: int = 0
    log_every: int = 10
    save_every: int = 500  # 0: only the final checkpoint
    keep_checkpoints: int = 3  # newest intermediate checkpoints kept (0 = all); final is always kept
    resume: str = ""  # "" / "auto": continue a run of this config in output_dir (crop.train.run_folder) | a checkpoint folder
    ddp_find_unused: bool = True  # text-only batches leave the merger unused
    progress: bool = True
    log_with: str = "none"  # none | tensorboard | wandb: accelerate's tracker, used when installed

    def __post_init__(self) -> None:
        choices = {"scheduler": ("cosine", "linear", "constant"), "precision": ("auto", "bf16", "fp32"),
                   "log_with": ("none", "tensorboard", "wandb")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config field {name!r}: {getattr(self, name)!r} not in {allowed}")
        if self.keep_checkpoints < 0:
            raise ValueError(f"config field 'keep_checkpoints' must be >= 0, got {self.keep_checkpoints}")
        for name in ("batch_size", "grad_accum", "log_every", "max_regions"):
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
        import difflib

        hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, probe, 1)) else repr(u)
                 for u in unknown]
        raise ValueError(f"unknown config field(s) {', '.join(hints)}; known: {', '.join(sorted(probe))}")
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


