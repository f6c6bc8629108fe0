"""Typed ``crop eval`` configuration: YAML -> frozen dataclasses, errors that name the field.

A run is one model x one method x one budget over several benchmarks. ``EvalConfig.from_dict``
checks every field (unknown or missing names, types, ranges, method/family combinations) and
fills the defaults, so what ``config.yaml`` in a run folder records is exactly what ran.

Budgets (``method.budget``, the paper's R):

* an integer ``R``: visual tokens kept per image (Tables 2, 5, 8, 10);
* a fraction in (0, 1), or a percentage string such as ``"33.3%"``: that share of each image's
  visual tokens, resolved per image at run time (Qwen2-VL's dynamic token count, Table 7:
  50%, 40%, 33.3%, 22.2%). Stored as the float fraction.

How R is met (``method.budget_mode``, region methods ilp / center / random / prune):

* ``rect`` (default): every image keeps a rectangle of about R tokens centred on its region
  (``crop.pruning.region_map.budget_rect``);
* ``average``: the paper's "retain averaged R tokens": every region is kept as a region, all
  scaled by one factor per benchmark chosen so the mean kept count (or share) over the
  benchmark's images is R (``crop.pruning.average``); the run writes the achieved mean and
  spread to ``<benchmark>/budget.json``. FastV keeps R per image in both modes.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

FAMILIES = ("llava", "llava_next", "qwen2_vl")
from crop.pruning.registry import METHODS as _REGISTRY  # torch-free

# crop eval's own adapters (crop.eval.methods) first, then every other method of the one registry
EVAL_ADAPTERS = ("none", "ilp", "center", "random", "prune", "fastv", "plc")
METHOD_NAMES = EVAL_ADAPTERS + tuple(n for n in _REGISTRY if n not in EVAL_ADAPTERS)
REGION_METHODS = ("ilp", "center", "random", "prune", "plc") + tuple(
    n for n, s in _REGISTRY.items() if s.needs_region and n not in EVAL_ADAPTERS)
BUDGET_METHODS = ("fastv",) + tuple(n for n, s in _REGISTRY.items() if s.needs_budget and n not in EVAL_ADAPTERS)
BUDGET_MODES = ("rect", "average")
AVERAGE_METHODS = ("ilp", "center", "random", "prune")  # methods whose kept count follows the region
DEFAULT_MAX_NEW_TOKENS = {"scienceqa": 1024}  # LLaVA's model_vqa_science.py; 128 elsewhere


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field."""


def _fields_from(cls: type, data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    missing = [n for n, f in known.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required field(s) {missing}")
    return dict(data)


def _check_int(value: Any, where: str, minimum: int) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")


def parse_budget(value: Any, where: str = "method.budget") -> int | float | None:
    """``None``, an integer token count >= 0, a fraction in (0, 1) or ``"<p>%"`` with 0 < p < 100."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        percent = text.endswith("%")
        try:
            number = text[:-1] if percent else text
            value = float(number) if (percent or any(c in number for c in ".eE")) else int(number)
        except ValueError:
            raise ConfigError(f"{where} must be an integer, a fraction in (0, 1) or a percentage like "
                              f"'33.3%', got {text!r}") from None
        if percent:
            if not 0.0 < value < 100.0:
                raise ConfigError(f"{where}: a percentage must lie strictly between 0% and 100%, got {text!r}")
            return value / 100.0
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if isinstance(value, float):
        if value.is_integer() and value >= 1:
            return int(value)
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{where}: a fractional budget must lie in (0, 1), got {value!r}")
        return value
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where} must be an integer >= 0, got {value!r}")
        return value
    raise ConfigError(f"{where} must be an integer, a fraction or a percentage, got {value!r}")


def budget_label(budget: int | float | None, mode: str = "rect") -> str:
    """``-R64`` / ``-R33.3%`` / ``-R64avg`` / ``""``: the budget part of default labels and sections."""
    if budget is None:
        return ""
    avg = "avg" if mode == "average" else ""
    if isinstance(budget, float):
        return f"-R{100 * budget:.4g}%{avg}"
    return f"-R{budget}{avg}"


def default_label(model: "ModelConfig", method: "MethodConfig") -> str:
    return f"{model.name}/{method.name}{budget_label(method.budget, method.budget_mode)}"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    path: str
    family: str = "llava"
    name: str | None = None          # shown in answer files and tables; default: folder name
    dtype: str = "float16"
    device: str | None = None        # default: cuda when available
    prompt_style: str = "auto"       # vicuna_v1 | chat_template | auto (vicuna_v1 for LLaVA families)
    image_aspect: str = "auto"       # pad | processor | auto (pad for LLaVA-1.5, as its eval)
    plc_weights: str | None = None   # PLC safetensors (method plc)
    min_pixels: int | None = None    # Qwen2-VL image processor pixel budget overrides
    max_pixels: int | None = None

    def validate(self) -> "ModelConfig":
        if self.family not in FAMILIES:
            raise ConfigError(f"model.family must be one of {FAMILIES}, got {self.family!r}")
        if self.prompt_style not in ("auto", "vicuna_v1", "chat_template"):
            raise ConfigError(f"model.prompt_style must be auto, vicuna_v1 or chat_template, got {self.prompt_style!r}")
        if self.family == "qwen2_vl" and self.prompt_style == "vicuna_v1":
            raise ConfigError("model.prompt_style vicuna_v1 is not available for qwen2_vl (it has no <image> "
                              "placeholder); use chat_template or auto")
        if self.image_aspect not in ("auto", "pad", "processor"):
            raise ConfigError(f"model.image_aspect must be auto, pad or processor, got {self.image_aspect!r}")
        if self.dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError(f"model.dtype must be float16, bfloat16 or float32, got {self.dtype!r}")
        _check_int(self.min_pixels, "model.min_pixels", 1)
        _check_int(self.max_pixels, "model.max_pixels", 1)
        if (self.min_pixels or self.max_pixels) and self.family != "qwen2_vl":
            raise ConfigError("model.min_pixels / model.max_pixels apply to family qwen2_vl only")
        return dataclasses.replace(self, name=self.name or Path(self.path.rstrip("/")).name)


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    name: str = "none"
    layer: int = 2                   # K: ILP / FastV prune after this many decoder layers
    budget: int | float | None = None  # R: tokens kept per image, or a fraction of them (see module doc)
    budget_mode: str = "rect"        # rect: ~R per image | average: regions scaled so the mean is R
    regions: str | None = None       # JSONL of {"key", "region_blocks"|"region"} (localizer output, GT)
    localizer: str | None = None     # localizer folder, used when no regions file is given
    seed: int = 0                    # method "random" (and seeded registry methods, e.g. random_tokens)
    options: dict = dataclasses.field(default_factory=dict)  # method-specific settings (docs/baselines.md)

    def validate(self, family: str = "llava") -> "MethodConfig":
        if self.name not in METHOD_NAMES:
            raise ConfigError(f"method.name must be one of {METHOD_NAMES}, got {self.name!r}")
        _check_int(self.layer, "method.layer", 0)
        budget = parse_budget(self.budget)
        if self.name in BUDGET_METHODS and budget is None:
            raise ConfigError(f"method.budget is required for {self.name}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"method.options must be a mapping, got {type(self.options).__name__}")
        if self.name in REGION_METHODS and not (self.regions or self.localizer):
            raise ConfigError(f"method {self.name} needs method.regions (JSONL) or method.localizer (folder)")
        if self.name == "plc" and family != "llava":
            raise ConfigError(f"method plc exists for family llava (LLaVA-1.5) only, got model.family {family!r}")
        if self.name == "plc" and budget is not None:
            raise ConfigError("method.budget does not apply to plc (its token count is fixed by the PLC weights)")
        if self.name == "none":
            budget = None  # the unpruned model keeps every token (`--method none` on a pruning config)
        if self.budget_mode not in BUDGET_MODES:
            raise ConfigError(f"method.budget_mode must be one of {BUDGET_MODES}, got {self.budget_mode!r}")
        if self.budget_mode == "average" and budget is None and self.name in AVERAGE_METHODS:
            raise ConfigError(f"method.budget_mode average needs method.budget (the mean R to reach) for {self.name}")
        if self.budget_mode == "average" and budget == 0:
            raise ConfigError("method.budget_mode average needs method.budget > 0")
        return dataclasses.replace(self, budget=budget)


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    name: str
    question_file: str
    image_folder: str = ""
    annotation_file: str | None = None
    annotation_dir: str | None = None
    base_dir: str | None = None
    mme_root: str | None = None
    test_split_file: str | None = None   # VQAv2: llava_vqav2_mscoco_test2015.jsonl -> submission.json
    split: str = "test"
    limit: int | None = None
    max_new_tokens: int | None = None
    score_options: dict = dataclasses.field(default_factory=dict)

    def validate(self, where: str) -> "BenchmarkConfig":
        from crop.eval.scorers import SCORERS

        if self.name not in SCORERS:
            raise ConfigError(f"{where}.name must be one of {tuple(SCORERS)}, got {self.name!r}")
        _check_int(self.limit, f"{where}.limit", 0)
        _check_int(self.max_new_tokens, f"{where}.max_new_tokens", 1)
        mnt = self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(self.name, 128)
        return dataclasses.replace(self, max_new_tokens=mnt)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    model: ModelConfig
    benchmarks: tuple[BenchmarkConfig, ...]
    method: MethodConfig = MethodConfig()
    output_dir: str = "runs/eval"
    label: str | None = None         # row name in tables; default "<model>/<method>[-R<budget>]"
    section: str | None = None       # table section, e.g. "Retain Averaged 64 Tokens"
    score: bool = True
    batch_size: int = 1              # questions per generate call (crop eval --batch-size; 1: one at a time)

    def validated(self) -> "EvalConfig":
        if not self.benchmarks:
            raise ConfigError("benchmarks: at least one benchmark is needed")
        if self.batch_size is None:
            raise ConfigError("batch_size must be an integer >= 1, got None")
        _check_int(self.batch_size, "batch_size", 1)
        model = self.model.validate()
        method = self.method.validate(model.family)
        benches = tuple(b.validate(f"benchmarks[{i}]") for i, b in enumerate(self.benchmarks))
        label = self.label or default_label(model, method)
        return dataclasses.replace(self, model=model, method=method, benchmarks=benches, label=label)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["method"]["budget_mode"] == "rect":  # the default, left out: run folders written before
            del d["method"]["budget_mode"]       # budget_mode existed still resume (same `method`)
        d["benchmarks"] = list(d["benchmarks"])
        if d["batch_size"] == 1:  # the default, left out: config.yaml of a batch-1 run is as before
            del d["batch_size"]
        d["generation"] = {"do_sample": False, "num_beams": 1}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalConfig":
        data = _fields_from(cls, {k: v for k, v in data.items() if k != "generation"}, "config")
        benches = data.get("benchmarks")
        if not isinstance(benches, list):
            raise ConfigError("benchmarks: expected a list of benchmark mappings")
        data["model"] = ModelConfig(**_fields_from(ModelConfig, data["model"], "model"))
        data["method"] = MethodConfig(**_fields_from(MethodConfig, data.get("method", {}), "method"))
        data["benchmarks"] = tuple(BenchmarkConfig(**_fields_from(BenchmarkConfig, b, f"benchmarks[{i}]"))
                                   for i, b in enumerate(benches))
        return cls(**data).validated()


def load_config(path: str | Path) -> EvalConfig:
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    try:
        return EvalConfig.from_dict(data or {})
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def apply_overrides(cfg: EvalConfig, args: argparse.Namespace) -> EvalConfig:
    """Command-line flags (``--method``, ``--budget``, ``--layer``, ``--benchmarks``, ...) over a config."""
    method = cfg.method
    for flag, field in (("method", "name"), ("budget", "budget"), ("layer", "layer"), ("budget_mode", "budget_mode")):
        if getattr(args, flag, None) is not None:
            method = dataclasses.replace(method, **{field: getattr(args, flag)})
    benches = cfg.benchmarks
    if getattr(args, "benchmarks", None):
        unknown = set(args.benchmarks) - {b.name for b in benches}
        if unknown:
            raise SystemExit(f"--benchmarks: {sorted(unknown)} not in the config's benchmarks")
        benches = tuple(b for b in benches if b.name in args.benchmarks)
    if getattr(args, "limit", None) is not None:
        benches = tuple(dataclasses.replace(b, limit=args.limit) for b in benches)
    out = getattr(args, "output_dir", None) or cfg.output_dir
    label = cfg.label
    if label == default_label(cfg.model, cfg.method):
        label = None  # a derived label would name the old method/budget: derive it again
    return dataclasses.replace(cfg, method=method, benchmarks=benches, output_dir=out, label=label).validated()
