"""Dataset recipes: YAML -> typed, validated config, resolved once at start.

A recipe says which Visual-CoT sources to take and how many of each, how many LLaVA instruction
samples to mix in, and how the samples are rendered and sharded. Errors name the field
(``recipe.sources.gqa.cap: must be a positive integer or null, got -3``).

Relative input paths are resolved against the recipe file's folder, so a recipe and its corpus can
move together.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

# Visual-CoT metadata tags (formats.md section 1) -> image folders tried in order under image_root.
VISUAL_COT_SOURCES: dict[str, tuple[str, ...]] = {
    "cub": ("cot/cub",),
    "docvqa": ("cot/docvqa",),
    "dude": ("cot/dude",),
    "flickr30k": ("cot/flickr30k",),
    "gqa": ("cot/gqa",),
    "infographicsvqa": ("cot/infographicsvqa",),
    "openimages": ("cot/openimages",),
    "sroie": ("cot/sroie",),
    "textcap": ("cot/textvqa",),  # TextCaps questions use the TextVQA images
    "textvqa": ("cot/textvqa",),
    "v7w": ("cot/v7w", "cot/visual7w"),  # both spellings occur in published files
    "vsr": ("cot/vsr",),
}
# Metadata file stems tried in order (``<stem>_cot_train.jsonl``): Visual-CoT names the Visual7W
# file after the dataset (``visual7w``) while its records and our recipes use the tag ``v7w``.
METADATA_FILE_STEMS: dict[str, tuple[str, ...]] = {"v7w": ("visual7w", "v7w")}


def metadata_file_names(source: str) -> tuple[str, ...]:
    """Candidate ``<stem>_cot_train.jsonl`` names of one Visual-CoT source, preferred first."""
    return tuple(f"{stem}_cot_train.jsonl" for stem in METADATA_FILE_STEMS.get(source, (source,)))


MULTI_BOX_POLICIES = ("union", "first", "largest", "regions")  # regions: up to max_regions rectangles (issue 21)
IMAGE_CHECKS = ("header", "full")


class RecipeError(ValueError):
    """A recipe field is missing or wrong; the message names it."""


@dataclass(frozen=True)
class SourceSpec:
    """How many records of one source to take: ``cap`` (absolute) or ``fraction`` (of the valid
    records), neither = all. A cap above what the source has takes everything; the shortfall is
    logged and recorded in ``stats.json`` (``shortfall``), or fails the build if
    ``strict_caps`` is set."""

    cap: int | None = None
    fraction: float | None = None

    def resolve(self, available: int) -> int:
        if self.cap is not None:
            return min(self.cap, available)
        if self.fraction is not None:
            return int(round(self.fraction * available))
        return available


@dataclass(frozen=True)
class Inputs:
    visual_cot_dir: str | None = None  # folder of <source>_cot_train.jsonl files (metadata_file_names)
    visual_cot_llava_json: str | None = None  # alternative: viscot_363k.json
    llava_json: str | None = None  # llava_v1_5_mix665k.json
    image_root: str = "."


@dataclass(frozen=True)
class Recipe:
    name: str
    inputs: Inputs
    sources: dict[str, SourceSpec]
    llava: SourceSpec = field(default_factory=SourceSpec)
    seed: int = 0
    grid_size: int = 8
    shard_name: str = "crop"
    shard_max_samples: int = 4000  # ~0.4-0.8 GB at Visual-CoT/COCO image sizes
    trailing_period: bool = True
    multi_box: str = "union"
    max_regions: int = 4  # multi_box: regions keeps up to this many disjoint rectangles per question
    image_check: str = "header"
    strict_caps: bool = False
    max_reject_fraction: float = 0.5   # a source rejecting more fails the build (wrong image root, format)
    warn_reject_fraction: float = 0.1  # above this a source's reject rate is a warning

    def to_dict(self) -> dict:
        d = json.loads(json.dumps(dataclasses.asdict(self), sort_keys=True))
        if self.multi_box != "regions":
            d.pop("max_regions")  # only the regions policy reads it: other recipes keep their fingerprint
        return d

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _req(d: Mapping, key: str, where: str) -> Any:
    if key not in d:
        raise RecipeError(f"{where}.{key}: required field is missing")
    return d[key]


def _check_keys(d: Any, allowed: set[str], where: str) -> Mapping:
    if not isinstance(d, Mapping):
        raise RecipeError(f"{where}: must be a mapping, got {type(d).__name__}")
    unknown = set(d) - allowed
    if unknown:
        raise RecipeError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return d


def _int(v: Any, where: str, minimum: int = 0, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        kind = f"an integer >= {minimum}" + (" or null" if allow_none else "")
        raise RecipeError(f"{where}: must be {kind}, got {v!r}")
    return v


def _source_spec(d: Any, where: str) -> SourceSpec:
    if d is None:
        return SourceSpec()
    d = _check_keys(d, {"cap", "fraction"}, where)
    cap = _int(d.get("cap"), f"{where}.cap", 1, allow_none=True)
    frac = d.get("fraction")
    if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1):
        raise RecipeError(f"{where}.fraction: must be a number in (0, 1], got {frac!r}")
    if cap is not None and frac is not None:
        raise RecipeError(f"{where}: set cap or fraction, not both")
    return SourceSpec(cap=cap, fraction=None if frac is None else float(frac))


def _path(v: Any, base: str, where: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise RecipeError(f"{where}: must be a path string, got {v!r}")
    if "://" in v or os.path.isabs(v):
        return v
    return os.path.normpath(os.path.join(base, v))


def parse_recipe(data: Mapping, base_dir: str = ".") -> Recipe:
    """Validate a recipe mapping (already parsed YAML) into a :class:`Recipe`."""
    top = {"name", "inputs", "sources", "llava", "seed", "grid_size", "shards", "template",
           "multi_box", "max_regions", "image_check", "strict_caps", "reject_limits", "notes"}
    d = _check_keys(data, top, "recipe")
    name = _req(d, "name", "recipe")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise RecipeError(f"recipe.name: must be letters, digits, '-' or '_', got {name!r}")

    ins = _check_keys(_req(d, "inputs", "recipe"), {f.name for f in dataclasses.fields(Inputs)},
                      "recipe.inputs")
    inputs = Inputs(
        visual_cot_dir=_path(ins.get("visual_cot_dir"), base_dir, "recipe.inputs.visual_cot_dir"),
        visual_cot_llava_json=_path(ins.get("visual_cot_llava_json"), base_dir,
                                    "recipe.inputs.visual_cot_llava_json"),
        llava_json=_path(ins.get("llava_json"), base_dir, "recipe.inputs.llava_json"),
        image_root=_path(ins.get("image_root", "."), base_dir, "recipe.inputs.image_root"),
    )
    if inputs.visual_cot_dir and inputs.visual_cot_llava_json:
        raise RecipeError("recipe.inputs: set visual_cot_dir or visual_cot_llava_json, not both")

    srcs = _req(d, "sources", "recipe")
    if not isinstance(srcs, Mapping):
        raise RecipeError("recipe.sources: must be a mapping of source name -> {cap|fraction}")
    sources = {}
    for s, spec in srcs.items():
        if s not in VISUAL_COT_SOURCES:
            raise RecipeError(f"recipe.sources.{s}: unknown source; known: {sorted(VISUAL_COT_SOURCES)}")
        sources[s] = _source_spec(spec, f"recipe.sources.{s}")
    if isinstance(d.get("llava"), Mapping) and "count" in d["llava"]:
        raise RecipeError("recipe.llava.count: use 'cap' for the number of LLaVA samples")
    llava = _source_spec(d.get("llava"), "recipe.llava")

    shards = _check_keys(d.get("shards", {}), {"name", "max_samples"}, "recipe.shards")
    shard_name = shards.get("name", "crop")
    if not isinstance(shard_name, str) or not shard_name.replace("-", "").replace("_", "").isalnum():
        raise RecipeError(f"recipe.shards.name: must be letters, digits, '-' or '_', got {shard_name!r}")
    template = _check_keys(d.get("template", {}), {"trailing_period"}, "recipe.template")
    trailing = template.get("trailing_period", True)
    if not isinstance(trailing, bool):
        raise RecipeError(f"recipe.template.trailing_period: must be true or false, got {trailing!r}")
    multi_box = d.get("multi_box", "union")
    if multi_box not in MULTI_BOX_POLICIES:
        raise RecipeError(f"recipe.multi_box: must be one of {MULTI_BOX_POLICIES}, got {multi_box!r}")
    max_regions = _int(d.get("max_regions", 4), "recipe.max_regions", 1)
    if "max_regions" in d and multi_box != "regions":
        raise RecipeError(f"recipe.max_regions: only read by multi_box: regions (this recipe says {multi_box!r})")
    image_check = d.get("image_check", "header")
    if image_check not in IMAGE_CHECKS:
        raise RecipeError(f"recipe.image_check: must be one of {IMAGE_CHECKS}, got {image_check!r}")
    strict = d.get("strict_caps", False)
    if not isinstance(strict, bool):
        raise RecipeError(f"recipe.strict_caps: must be true or false, got {strict!r}")
    grid = _int(d.get("grid_size", 8), "recipe.grid_size", 1)
    limits = _check_keys(d.get("reject_limits", {}), {"max_fraction", "warn_fraction"}, "recipe.reject_limits")
    max_rej = _share(limits.get("max_fraction", 0.5), "recipe.reject_limits.max_fraction")
    warn_rej = _share(limits.get("warn_fraction", min(0.1, max_rej)), "recipe.reject_limits.warn_fraction")
    if warn_rej > max_rej:
        raise RecipeError(f"recipe.reject_limits: warn_fraction {warn_rej} is above max_fraction {max_rej}")
    return Recipe(
        name=name, inputs=inputs, sources=sources, llava=llava,
        seed=_int(d.get("seed", 0), "recipe.seed", 0), grid_size=grid, shard_name=shard_name,
        shard_max_samples=_int(shards.get("max_samples", 4000), "recipe.shards.max_samples", 1),
        trailing_period=trailing, multi_box=multi_box, max_regions=max_regions, image_check=image_check,
        strict_caps=strict,
        max_reject_fraction=max_rej, warn_reject_fraction=warn_rej,
    )


def _share(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise RecipeError(f"{where}: must be a number between 0 and 1, got {value!r}")
    return float(value)


VISUAL_COT_INPUTS = ("visual_cot_dir", "visual_cot_llava_json")  # alternatives: one per recipe


def apply_overrides(data: Mapping, inputs: Mapping[str, str] | None = None,
                    shard_max_samples: int | None = None) -> dict:
    """The recipe mapping with command-line overrides applied, before validation.

    ``inputs`` maps ``Inputs`` field names to paths (made absolute here: a flag's relative path is
    relative to the working directory, not to the recipe file). Setting one of the two Visual-CoT
    inputs replaces the other one the recipe had, since they are alternatives; giving both is left
    to :func:`parse_recipe` to refuse.
    """
    data = dict(data)
    ins = dict(data.get("inputs") or {})
    inputs = {k: v for k, v in (inputs or {}).items() if v is not None}
    if len(set(inputs) & set(VISUAL_COT_INPUTS)) == 1:
        for k in VISUAL_COT_INPUTS:
            ins.pop(k, None)
    for k, v in inputs.items():
        ins[k] = v if "://" in v else os.path.abspath(v)
    data["inputs"] = ins
    if shard_max_samples is not None:
        data["shards"] = {**(data.get("shards") or {}), "max_samples": shard_max_samples}
    return data


def load_recipe(path: str, inputs: Mapping[str, str] | None = None,
                shard_max_samples: int | None = None) -> Recipe:
    """Read a recipe YAML file (local path), apply command-line overrides, validate."""
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if data is not None and not isinstance(data, Mapping):
        raise RecipeError(f"{path}: a recipe is a YAML mapping, got {type(data).__name__}")
    try:
        data = apply_overrides(data or {}, inputs, shard_max_samples)
        return parse_recipe(data, base_dir=os.path.dirname(os.path.abspath(path)))
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None
