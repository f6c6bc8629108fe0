"""``crop eval``: model x method x budget over benchmarks -> LLaVA answer files, scores, efficiency.

    crop eval --config configs/eval-llava15-7b-ilp64.yaml [--benchmarks gqa pope] [--limit 100]

Run folder (``output_dir``)::

    config.yaml               resolved configuration (a resume with a different one is refused)
    summary.json              label, model, method, budget, scores and efficiency per benchmark
    <benchmark>/answers.jsonl LLaVA-1.5 answer-file rows, appended as they are produced
    <benchmark>/efficiency.jsonl  per-question latency / visual-token rows
    <benchmark>/scores.json, efficiency.json (and submission.json for VQAv2)

Resumable: questions whose ``(question_id, prompt)`` is already in ``answers.jsonl`` are skipped.
Decoding is greedy, batch size 1, as LLaVA-1.5's evaluation. Methods are small adapters
(``METHODS``) around ``crop.pruning`` / ``crop.models``.

Layout of this module: typed configuration (YAML -> dataclasses, errors name the field), the
model engine and method adapters, the resumable loop and the CLI shell. (It is asking to be
split into config / methods modules; kept in one file while the file ownership is fixed.)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from crop.eval.scorers import BenchmarkFiles, score_answer_file
from crop.eval.scorers.common import read_jsonl

SUMMARY = "summary.json"

# ============================================================================ configuration
FAMILIES = ("llava", "llava_next", "qwen2_vl")
METHOD_NAMES = ("none", "ilp", "center", "random", "prune", "fastv", "plc")
REGION_METHODS = ("ilp", "center", "random", "prune", "plc")
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

    def validate(self) -> "ModelConfig":
        if self.family not in FAMILIES:
            raise ConfigError(f"model.family must be one of {FAMILIES}, got {self.family!r}")
        if self.prompt_style not in ("auto", "vicuna_v1", "chat_template"):
            raise ConfigError(f"model.prompt_style must be auto, vicuna_v1 or chat_template, got {self.prompt_style!r}")
        if self.image_aspect not in ("auto", "pad", "processor"):
            raise ConfigError(f"model.image_aspect must be auto, pad or processor, got {self.image_aspect!r}")
        if self.dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError(f"model.dtype must be float16, bfloat16 or float32, got {self.dtype!r}")
        return dataclasses.replace(self, name=self.name or Path(self.path.rstrip("/")).name)


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    name: str = "none"
    layer: int = 2                   # K: ILP / FastV prune after this many decoder layers
    budget: int | None = None        # R: visual tokens kept (None: the whole region)
    regions: str | None = None       # JSONL of {"key", "region_blocks"|"region"} (localizer output, GT)
    localizer: str | None = None     # localizer folder, used when no regions file is given
    seed: int = 0                    # method "random"

    def validate(self) -> "MethodConfig":
        if self.name not in METHOD_NAMES:
            raise ConfigError(f"method.name must be one of {METHOD_NAMES}, got {self.name!r}")
        _check_int(self.layer, "method.layer", 0)
        _check_int(self.budget, "method.budget", 0)
        if self.name == "fastv" and self.budget is None:
            raise ConfigError("method.budget is required for fastv")
        if self.name in REGION_METHODS and not (self.regions or self.localizer):
            raise ConfigError(f"method {self.name} needs method.regions (JSONL) or method.localizer (folder)")
        return self


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

    def validated(self) -> "EvalConfig":
        if not self.benchmarks:
            raise ConfigError("benchmarks: at least one benchmark is needed")
        model, method = self.model.validate(), self.method.validate()
        benches = tuple(b.validate(f"benchmarks[{i}]") for i, b in enumerate(self.benchmarks))
        budget = f"-R{method.budget}" if method.budget is not None else ""
        label = self.label or f"{model.name}/{method.name}{budget}"
        return dataclasses.replace(self, model=model, method=method, benchmarks=benches, label=label)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["benchmarks"] = list(d["benchmarks"])
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



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="eval YAML (see configs/eval-*.yaml)")
    parser.add_argument("--benchmarks", nargs="+", help="run only these benchmarks of the config")
    parser.add_argument("--limit", type=int, help="answer at most this many questions per benchmark")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--method", help="override method.name")
    parser.add_argument("--budget", type=int, help="override method.budget (visual tokens kept, R)")
    parser.add_argument("--layer", type=int, help="override method.layer (pruning layer K)")
    parser.add_argument("--no-score", action="store_true", help="write answers only")


def _apply_overrides(cfg: EvalConfig, args: argparse.Namespace) -> EvalConfig:
    method = cfg.method
    for flag, field in (("method", "name"), ("budget", "budget"), ("layer", "layer")):
        if getattr(args, flag, None) is not None:
            method = dataclasses.replace(method, **{field: getattr(args, flag)})
    benches = cfg.benchmarks
    if args.benchmarks:
        unknown = set(args.benchmarks) - {b.name for b in benches}
        if unknown:
            raise SystemExit(f"--benchmarks: {sorted(unknown)} not in the config's benchmarks")
        benches = [b for b in benches if b.name in args.benchmarks]
    if args.limit is not None:
        benches = [dataclasses.replace(b, limit=args.limit) for b in benches]
    out = args.output_dir or cfg.output_dir
    return dataclasses.replace(cfg, method=method, benchmarks=benches, output_dir=out).validated()


# ============================================================================ engine and methods
def expand2square(image: Any, background: tuple[int, int, int]) -> Any:
    """LLaVA-1.5's ``image_aspect_ratio=pad``: centre the image on a square of the mean colour."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def parse_region_value(value: Any, where: str) -> Any:
    """A region from a regions-file value: [x0, y0, x1, y1], {"x_min": ...}, or "x0 y0 x1 y1."."""
    from crop.formatting import parse_region_lenient
    from crop.geometry import Region

    if isinstance(value, str):
        region = parse_region_lenient(value)
        if region is None:
            raise ValueError(f"{where}: cannot parse region {value!r}")
        return region
    if isinstance(value, dict):
        return Region(**value).check(8)
    if isinstance(value, (list, tuple)) and len(value) == 4:
        return Region(*(int(v) for v in value)).check(8)
    raise ValueError(f"{where}: region must be 4 blocks, a mapping or a string, got {value!r}")


class RegionSource:
    """Regions per question: a JSONL file (key -> region) or a localizer run on the fly."""

    def __init__(self, method: MethodConfig):
        self.table: dict[str, Any] = {}
        self.localizer = None
        if method.regions:
            for i, row in enumerate(read_jsonl(method.regions)):
                key = row.get("key", row.get("question_id"))
                value = row.get("region_blocks", row.get("region"))
                if key is None or value is None:
                    raise ValueError(f"{method.regions}:{i + 1}: row needs key and region_blocks (or region)")
                self.table[str(key)] = parse_region_value(value, f"{method.regions}:{i + 1}")
        elif method.localizer:
            from crop.models.localizer import Localizer

            self.localizer = Localizer.from_pretrained(method.localizer)

    def region(self, item: Any, image: Any) -> Any:
        if self.localizer is not None:
            return self.localizer.predict([image], [item.question])[0]
        if item.key not in self.table:
            raise KeyError(f"regions file has no region for question key {item.key!r}")
        return self.table[item.key]


def _visual_count(engine: "Engine", inputs: dict) -> int:
    ids = inputs.get("input_ids")
    return int((ids == engine.image_token_id).sum()) if ids is not None else 0


def _method_none(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    n = _visual_count(engine, inputs)
    return engine.generate(inputs), {"visual_tokens_in": n, "visual_tokens_kept": n}


def _keep_plan(engine: "Engine", inputs: dict, ctx: dict) -> Any:
    from crop.pruning import region_keep_plan, token_layout

    layouts = token_layout(engine.model, inputs)
    return region_keep_plan(layouts, [ctx["region"]], image_sizes_wh=[ctx["size_wh"]],
                            llava_geometry=engine.llava_geometry, budget=engine.cfg.method.budget)


def _method_ilp(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    from crop.pruning import attach_ilp

    plan = _keep_plan(engine, inputs, ctx)
    with attach_ilp(engine.model, plan, layer=engine.cfg.method.layer):
        out = engine.generate(inputs)
    return out, {"visual_tokens_in": plan.visual_total[0], "visual_tokens_kept": plan.visual_kept[0]}


def _method_prune(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    from crop.pruning import prune_inputs

    plan = _keep_plan(engine, inputs, ctx)
    out = engine.generate(prune_inputs(engine.model, inputs, plan))  # (1, new): embeds-only input
    return out, {"visual_tokens_in": plan.visual_total[0], "visual_tokens_kept": plan.visual_kept[0],
                 "output_has_prompt": False}


def _method_fastv(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    from crop.pruning import attach_fastv, token_layout

    layouts = token_layout(engine.model, inputs)
    budget = engine.cfg.method.budget
    with attach_fastv(engine.model, layouts, budget=budget, layer=engine.cfg.method.layer):
        out = engine.generate(inputs)
    n = layouts[0].num_visual
    return out, {"visual_tokens_in": n, "visual_tokens_kept": min(budget, n)}


def _method_plc(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    from crop.models.llava_plc import context_masks, expand_image_tokens, view_of

    plc = engine.model  # LlavaPLC
    view = "pad" if engine.padded else view_of(engine.processor.image_processor)
    mask = context_masks([ctx["region"]], [ctx["size_wh"]], view, plc.grid_hw).to(engine.device)
    ids = engine.processor.tokenizer(ctx["prompt"], return_tensors=None)["input_ids"]
    ids = expand_image_tokens(ids, plc.image_token_id, plc.num_image_tokens)
    import torch

    input_ids = torch.tensor([ids], device=engine.device)  # (1, N)
    pixels = engine.processor.image_processor(images=ctx["image"], return_tensors="pt")["pixel_values"]
    out = plc.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       pixel_values=pixels.to(engine.device, engine.dtype), context_mask=mask,
                       **engine.gen_kwargs())
    return out, {"visual_tokens_in": plc.num_image_tokens, "visual_tokens_kept": plc.num_image_tokens,
                 "prompt_len": input_ids.shape[1]}


def _method_center(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    from crop.pruning import center_region

    return _method_ilp(engine, inputs, {**ctx, "region": center_region(ctx["region"])})


def _method_random(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    from crop.pruning import random_region

    seed = f"{engine.cfg.method.seed}:{ctx['key']}"
    return _method_ilp(engine, inputs, {**ctx, "region": random_region(ctx["region"], seed)})


METHODS = {"none": _method_none, "ilp": _method_ilp, "center": _method_center, "random": _method_random,
           "prune": _method_prune, "fastv": _method_fastv, "plc": _method_plc}


class Engine:
    """A loaded model + processor that answers one question at a time with the configured method."""

    def __init__(self, cfg: EvalConfig, model: Any, processor: Any, device: Any, dtype: Any):
        self.cfg, self.model, self.processor, self.device, self.dtype = cfg, model, processor, device, dtype
        family = cfg.model.family
        style = cfg.model.prompt_style
        self.prompt_style = ("chat_template" if family == "qwen2_vl" else "vicuna_v1") if style == "auto" else style
        aspect = cfg.model.image_aspect
        self.padded = (family == "llava") if aspect == "auto" else aspect == "pad"
        crops = getattr(getattr(processor, "image_processor", None), "do_center_crop", False)
        self.llava_geometry = "pad_square" if self.padded else ("center_crop" if crops else "resize")
        self.image_token_id = getattr(getattr(model, "config", None), "image_token_id", None)
        if self.image_token_id is None and hasattr(model, "image_token_id"):
            self.image_token_id = model.image_token_id
        self.regions = RegionSource(cfg.method) if cfg.method.name in REGION_METHODS else None
        self.max_new_tokens = 128

    @classmethod
    def load(cls, cfg: EvalConfig) -> "Engine":
        """Thin ``from_pretrained`` loading; nothing else happens here."""
        import torch
        import transformers

        dtype = getattr(torch, cfg.model.dtype)
        device = torch.device(cfg.model.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        processor = transformers.AutoProcessor.from_pretrained(cfg.model.path)
        if cfg.method.name == "plc":
            from crop.models.llava_plc import LlavaPLC

            model = LlavaPLC.from_pretrained(cfg.model.path, plc_weights=cfg.model.plc_weights, dtype=dtype,
                                             device=device)
        else:
            cls_name = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
                        "qwen2_vl": "Qwen2VLForConditionalGeneration"}[cfg.model.family]
            model = getattr(transformers, cls_name).from_pretrained(cfg.model.path, dtype=dtype).to(device)
        model.eval()
        return cls(cfg, model, processor, device, dtype)

    def gen_kwargs(self) -> dict[str, Any]:
        tok = self.processor.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return {"do_sample": False, "num_beams": 1, "max_new_tokens": self.max_new_tokens, "pad_token_id": pad}

    def generate(self, inputs: dict) -> Any:
        import torch

        with torch.inference_mode():
            return self.model.generate(**inputs, **self.gen_kwargs())

    def build_prompt(self, message: str, has_image: bool) -> str:
        from crop.eval.prompts import chat_template_prompt, vicuna_v1_prompt

        if self.prompt_style == "chat_template":
            return chat_template_prompt(self.processor, message, has_image)
        return vicuna_v1_prompt(message, has_image, getattr(self.processor, "image_token", "<image>"))

    def answer(self, item: Any, bench: BenchmarkConfig) -> tuple[str, dict[str, Any]]:
        from PIL import Image

        from crop.eval.efficiency import LatencyProbe

        self.max_new_tokens = bench.max_new_tokens
        image = size_wh = None
        if item.image:
            image = Image.open(Path(bench.image_folder) / item.image).convert("RGB")
            size_wh = image.size
            if self.padded:
                mean = getattr(self.processor.image_processor, "image_mean", (0.5, 0.5, 0.5))
                image = expand2square(image, tuple(int(x * 255) for x in mean))
        prompt = self.build_prompt(item.message, image is not None)
        enc = self.processor(images=[image] if image is not None else None, text=prompt, return_tensors="pt")
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in enc.items() if hasattr(v, "to")}
        name = self.cfg.method.name if image is not None else "none"  # text-only: nothing to prune
        ctx = {"key": item.key, "size_wh": size_wh, "image": image, "prompt": prompt,
               "region": self.regions.region(item, image) if (self.regions and image is not None) else None}
        target = getattr(self.model, "llava", self.model)
        with LatencyProbe(target) as probe:
            probe.start()
            out, info = METHODS[name](self, inputs, ctx)
            timing = probe.stop()
        has_prompt = info.pop("output_has_prompt", True)
        start = info.pop("prompt_len", inputs["input_ids"].shape[1]) if has_prompt else 0
        new = out[0, start:]
        text = self.processor.tokenizer.decode(new, skip_special_tokens=True).strip()
        if ctx["region"] is not None:
            info["region"] = list(ctx["region"])
        return text, {**info, **timing, "new_tokens": int(new.numel())}



# ============================================================================ loop and CLI
def answer_id(label: str, key: str) -> str:
    return hashlib.sha1(f"{label}|{key}".encode()).hexdigest()[:22]


def done_keys(path: Path) -> set[tuple[str, str]]:
    """(question_id, prompt) pairs already answered (a torn last line is dropped and rewritten)."""
    if not path.exists():
        return set()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    good = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        good.append((line if line.endswith("\n") else line + "\n", row))
    path.write_text("".join(l for l, _ in good), encoding="utf-8")
    return {(str(r["question_id"]), r.get("prompt", "")) for _, r in good}


def _check_resume(out: Path, cfg: EvalConfig) -> None:
    saved = out / "config.yaml"
    if saved.exists():
        import yaml

        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
        new = cfg.to_dict()
        for part in ("model", "method", "generation"):
            if old.get(part) != new.get(part):
                raise SystemExit(f"{out} holds a run with a different `{part}` configuration "
                                 f"({old.get(part)} != {new.get(part)}); use another output_dir")


def run_benchmark(engine: Any, cfg: EvalConfig, bench: Any, out: Path) -> dict[str, Any]:
    """Answer one benchmark (resuming), then score it; returns its summary entry."""
    from tqdm import tqdm

    from crop.eval import efficiency
    from crop.eval.prompts import load_questions

    bdir = out / bench.name
    bdir.mkdir(parents=True, exist_ok=True)
    answers_path, eff_path = bdir / "answers.jsonl", bdir / "efficiency.jsonl"
    items = load_questions(bench.name, bench.question_file)
    if bench.limit is not None:
        items = items[: bench.limit]
    done = done_keys(answers_path)
    todo = [it for it in items if (str(it.question_id), it.prompt) not in done]
    efficiency.reset_peak_memory(engine.device)
    with open(answers_path, "a", encoding="utf-8") as fa, open(eff_path, "a", encoding="utf-8") as fe:
        for item in tqdm(todo, desc=f"{cfg.label}/{bench.name}", unit="q", initial=len(items) - len(todo),
                         total=len(items)):
            text, info = engine.answer(item, bench)
            fa.write(json.dumps({"question_id": item.question_id, "prompt": item.prompt, "text": text,
                                 "answer_id": answer_id(cfg.label, item.key), "model_id": cfg.model.name,
                                 "metadata": {"key": item.key, "method": cfg.method.name}}) + "\n")
            fa.flush()
            fe.write(json.dumps({"key": item.key, **info}) + "\n")
            fe.flush()
    eff_rows = read_jsonl(eff_path) if eff_path.exists() else []
    eff = efficiency.summarize(eff_rows, efficiency.peak_memory_bytes(engine.device), str(engine.device))
    eff["answered_this_session"] = len(todo)
    (bdir / "efficiency.json").write_text(json.dumps(eff, indent=2), encoding="utf-8")
    entry: dict[str, Any] = {"answers": str(answers_path), "efficiency": eff, "n_questions": len(items)}
    if not cfg.score:
        return entry
    entry.update(score_benchmark(bench, answers_path, bdir))
    return entry


def score_benchmark(bench: Any, answers_path: Path, bdir: Path) -> dict[str, Any]:
    files = BenchmarkFiles(question_file=bench.question_file, annotation_file=bench.annotation_file,
                           annotation_dir=bench.annotation_dir, base_dir=bench.base_dir,
                           mme_root=bench.mme_root, split=bench.split)
    out: dict[str, Any] = {}
    if bench.name == "vqav2" and bench.test_split_file:
        from crop.eval.scorers import vqav2

        rows = vqav2.submission(read_jsonl(answers_path), read_jsonl(bench.test_split_file))
        (bdir / "submission.json").write_text(json.dumps(rows), encoding="utf-8")
        out["submission"] = str(bdir / "submission.json")
    try:
        result = score_answer_file(bench.name, str(answers_path), files, **bench.score_options)
    except (ValueError, FileNotFoundError) as err:
        if "scoring needs" not in str(err):
            raise
        out["score_skipped"] = str(err)
        return out
    (bdir / "scores.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    out["score"] = result["score"]
    out["complete"] = result.get("complete", True)
    return out


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Run every benchmark of ``cfg``; writes and returns the run summary."""
    import yaml

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    summary_path = out / SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({"label": cfg.label, "model": cfg.model.name, "family": cfg.model.family,
                    "method": cfg.method.name, "budget": cfg.method.budget, "layer": cfg.method.layer,
                    "section": cfg.section})
    summary.setdefault("benchmarks", {})
    engine = Engine.load(cfg)
    for bench in cfg.benchmarks:
        summary["benchmarks"][bench.name] = run_benchmark(engine, cfg, bench, out)
        summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def run(args: argparse.Namespace) -> int:
    cfg = _apply_overrides(load_config(args.config), args)
    if args.no_score:
        cfg = dataclasses.replace(cfg, score=False)
    summary = run_eval(cfg)
    for name, entry in summary["benchmarks"].items():
        shown = f"{entry['score']:.2f}" if "score" in entry else entry.get("score_skipped", "not scored")
        print(f"{summary['label']}\t{name}\t{shown}")
    return 0
