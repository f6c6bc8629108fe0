"""Method adapters for ``crop eval``: none, ILP (+ centre / random regions), prune, FastV, PLC, and
every other method of :mod:`crop.pruning.registry` through one generic adapter (:func:`method_registry`).

Every adapter has the signature ``(engine, inputs, ctx) -> (output_ids, info)``:

* ``inputs``: the encoded prompt on the device (``input_ids (1, N)``, pixel inputs);
* ``ctx``: ``key``, ``region`` (a ``Region`` of 8x8 blocks on the original image, or None; a
  localizer is shown the original image), ``size_wh`` (original image size), ``image`` (as the
  VLM's processor sees it, e.g. padded to a square), ``message``;
* ``info``: ``visual_tokens_in`` / ``visual_tokens_kept`` for the efficiency table (region
  methods add ``visual_tokens_kept_image`` / ``visual_tokens_kept_padding``), plus
  ``prompt_len`` when the output's prompt part differs from ``inputs`` and
  ``output_has_prompt: False`` when ``generate`` returned new tokens only (embeds input), and
  ``region_used`` when the pruned region is not the given one (Table 10's centre / random).

The adapters are thin: the work is in :mod:`crop.pruning` and :mod:`crop.models.llava_plc`.
Regions come from a JSONL file (ground truth, ``crop predict-regions`` output) or a localizer
loaded in-process (:class:`RegionSource`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from crop.eval.config import MethodConfig
from crop.eval.keys import row_keys
from crop.eval.scorers.common import read_jsonl

if TYPE_CHECKING:
    from crop.eval.engine import Engine


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


def parse_regions_value(value: Any, where: str) -> Any:
    """Several regions from a regions-file ``regions_blocks`` value (issue 21): a list of region
    values, or ``"x0 y0 x1 y1; x0 y0 x1 y1."``. One region comes back as that ``Region`` (so a
    one-region row prunes and reports exactly like ``region_blocks``), several as a list."""
    from crop.formatting import parse_regions_lenient

    if isinstance(value, str):
        regions = parse_regions_lenient(value)
        if not regions:
            raise ValueError(f"{where}: cannot parse regions {value!r}")
    elif isinstance(value, (list, tuple)) and value:
        regions = [parse_region_value(v, where) for v in value]
    else:
        raise ValueError(f"{where}: regions_blocks must be a non-empty list or a string, got {value!r}")
    return regions[0] if len(regions) == 1 else regions


class RegionSource:
    """Regions per question: a JSONL file (key -> region) or a localizer run on the fly.

    A row's ``regions_blocks`` (several regions, ``crop predict-regions`` of a multi-region
    localizer) takes precedence over its ``region_blocks``; a localizer with ``max_regions`` > 1
    gives several regions too. Several regions reach the methods as a list of ``Region``.
    """

    def __init__(self, method: MethodConfig):
        self.table: dict[tuple[str | None, str], Any] = {}   # (row's benchmark or None, key) -> region
        self.localizer = None
        if method.regions:
            rows = read_jsonl(method.regions)
            for i, (row, key) in enumerate(zip(rows, row_keys(rows, str(method.regions)))):  # crop.eval.keys
                if row.get("regions_blocks") is not None:
                    self.table[(row.get("benchmark"), key)] = parse_regions_value(row["regions_blocks"],
                                                                                 f"{method.regions}:{i + 1}")
                    continue
                value = row.get("region_blocks", row.get("region"))
                if value is None:
                    raise ValueError(f"{method.regions}:{i + 1}: row needs key and region_blocks (or region)")
                self.table[(row.get("benchmark"), key)] = parse_region_value(value, f"{method.regions}:{i + 1}")
        elif method.localizer:
            from crop.models.localizer import Localizer

            self.localizer = Localizer.from_pretrained(method.localizer)

    def region(self, item: Any, image: Any, benchmark: str | None = None) -> Any:
        if self.localizer is not None:
            found = self.localizer.predict([image], [item.question])[0]  # a Region, or a list (max_regions > 1)
            return found[0] if isinstance(found, list) and len(found) == 1 else found
        for scoped in ((benchmark, item.key), (None, item.key)):  # rows naming the benchmark first
            if scoped in self.table:
                return self.table[scoped]
        raise KeyError(f"regions file has no region for {benchmark or ''} question key {item.key!r}")


def grid_cells(layout: Any) -> int:
    """Visual tokens of one image that lie on a grid (LLaVA-NeXT newlines and a CLS excluded)."""
    return sum(v.grid_hw[0] * v.grid_hw[1] for v in layout.views)


def resolve_budget(budget: int | float | None, layout: Any) -> int | None:
    """Tokens to keep for one image: R as given, or ``round(fraction * cells)`` (half up, >= 1).

    A fraction (Table 7's 50 % / 40 % / 33.3 % / 22.2 % for Qwen2-VL) is taken of the image's
    own grid cells, so images with more tokens (Qwen2-VL's dynamic resolution) keep more.
    """
    if budget is None or isinstance(budget, int):
        return budget
    return max(1, math.floor(budget * grid_cells(layout) + 0.5))


def _visual_count(engine: "Engine", inputs: dict) -> int:
    ids = inputs.get("input_ids")
    return int((ids == engine.image_token_id).sum()) if ids is not None else 0


def with_layer_avg(engine: "Engine", info: dict, layer: int) -> dict:
    """Add ``stages`` and ``visual_tokens_layer_avg`` (the second budget convention,
    docs/baselines.md) to a row whose kept tokens are seen from decoder layer ``layer`` on."""
    from crop.pruning.methods.builtin import num_decoder_layers
    from crop.pruning.registry import layer_averaged

    n, k = info["visual_tokens_in"], info["visual_tokens_kept"]
    layers = num_decoder_layers(engine.model) if layer > 0 else 1  # before the LLM: k at every layer
    info.update(stages=[[layer, k]], visual_tokens_layer_avg=layer_averaged(n, [(layer, k)], layers))
    return info


def method_none(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    n = _visual_count(engine, inputs)
    return engine.generate(inputs), with_layer_avg(engine, {"visual_tokens_in": n, "visual_tokens_kept": n}, 0)


def keep_plan(engine: "Engine", inputs: dict, ctx: dict) -> Any:
    """The region's keep plan (``crop.pruning.region_keep_plan``) with the run's budget resolved.

    ``budget_mode: average``: the region itself, scaled by the benchmark's one factor
    (``ctx["budget_scale"]``, :mod:`crop.pruning.average`), kept exactly, padding never kept.
    """
    from crop.pruning import region_keep_plan, token_layout

    layouts = token_layout(engine.model, inputs)
    region, budget = ctx["region"], resolve_budget(engine.cfg.method.budget, layouts[0])
    if ctx.get("budget_scale") is not None:
        from crop.pruning.average import scale_box
        from crop.pruning.region_map import to_box_norm

        return region_keep_plan(layouts, [scale_box(to_box_norm(region), ctx["budget_scale"])],
                                image_sizes_wh=[ctx["size_wh"]], llava_geometry=engine.frontend.llava_geometry,
                                whole_is_identity=False)  # as calibrated: padding never kept
    return region_keep_plan(layouts, [region], image_sizes_wh=[ctx["size_wh"]],
                            llava_geometry=engine.frontend.llava_geometry, budget=budget)


def region_for_method(name: str, region: Any, seed: int, key: str) -> Any:
    """The region a method prunes with: Table 10's centre / random region of the same size, else
    the given one (the random placement is seeded by ``"<seed>:<key>"``)."""
    from crop.pruning import center_region, random_region

    if name == "center":
        return center_region(region)
    if name == "random":
        return random_region(region, f"{seed}:{key}")
    return region


def method_ilp(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    from crop.pruning import attach_ilp

    plan = keep_plan(engine, inputs, ctx)
    with attach_ilp(engine.model, plan, layer=engine.cfg.method.layer):
        out = engine.generate(inputs)
    return out, with_layer_avg(engine, plan_info(plan), engine.cfg.method.layer)


def plan_info(plan: Any) -> dict:
    """Efficiency-row fields of a keep plan: visual tokens in / kept, and of the kept ones how many
    show the image and how many are pure padding (LLaVA-1.5 pad-to-square bands, LLaVA-NeXT's
    letterbox; see docs/pruning.md)."""
    info = {"visual_tokens_in": plan.visual_total[0], "visual_tokens_kept": plan.visual_kept[0]}
    if plan.padding_kept is not None:
        info["visual_tokens_kept_image"] = plan.image_kept[0]
        info["visual_tokens_kept_padding"] = plan.padding_kept[0]
    return info


def method_prune(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    from crop.pruning import prune_inputs

    plan = keep_plan(engine, inputs, ctx)
    out = engine.generate(prune_inputs(engine.model, inputs, plan))  # (1, new): embeds-only input
    return out, {**with_layer_avg(engine, plan_info(plan), 0), "output_has_prompt": False}


def method_fastv(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    from crop.pruning import attach_fastv, token_layout

    layouts = token_layout(engine.model, inputs)
    budget = resolve_budget(engine.cfg.method.budget, layouts[0])
    with attach_fastv(engine.model, layouts, budget=budget, layer=engine.cfg.method.layer) as handle:
        out = engine.generate(inputs)
        kept = handle.kept_counts
    n = layouts[0].num_visual
    info = {"visual_tokens_in": n, "visual_tokens_kept": kept[0] if kept else min(budget, n)}
    return out, with_layer_avg(engine, info, engine.cfg.method.layer)


def method_plc(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    """LLaVA-1.5 + PLC: the prompt's ``<image>`` becomes the PLC token count (68 at 7B shapes)."""
    import torch

    from crop.models.llava_plc import context_masks, expand_image_tokens
    from crop.models.llava_view import plc_view

    plc, fe = engine.model, engine.frontend  # LlavaPLC
    view = plc_view(fe.image_processor, fe.padded)  # the same rule crop train-plc uses
    mask = context_masks([ctx["region"]], [ctx["size_wh"]], view, plc.grid_hw,  # ILP's mapping: (1, R*C)
                         tile_px=plc.tile_px).to(engine.device)
    ids = fe.tokenizer(ctx["prompt"], return_tensors=None)["input_ids"]
    ids = expand_image_tokens(ids, plc.image_token_id, plc.num_image_tokens)
    input_ids = torch.tensor([ids], device=engine.device)  # (1, N)
    pixels = fe.image_processor(images=ctx["image"], return_tensors="pt")["pixel_values"]  # (1, 3, H, W)
    out = plc.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       pixel_values=pixels.to(engine.device, engine.dtype), context_mask=mask,
                       **engine.gen_kwargs())
    n_in = plc.grid_hw[0] * plc.grid_hw[1]
    return out, {"visual_tokens_in": n_in, "visual_tokens_kept": plc.num_image_tokens,
                 "prompt_len": input_ids.shape[1]}


def method_center(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    region = region_for_method("center", ctx["region"], engine.cfg.method.seed, ctx["key"])
    out, info = method_ilp(engine, inputs, {**ctx, "region": region})
    return out, {**info, "region_used": list(region)}


def method_random(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    region = region_for_method("random", ctx["region"], engine.cfg.method.seed, ctx["key"])
    out, info = method_ilp(engine, inputs, {**ctx, "region": region})
    return out, {**info, "region_used": list(region)}


def method_registry(engine: "Engine", inputs: dict, ctx: dict) -> tuple[Any, dict]:
    """Any method of the one registry (:mod:`crop.pruning.registry`) at batch size 1."""
    from crop.pruning import token_layout
    from crop.pruning.registry import PruneRequest, get_method

    m = engine.cfg.method
    spec = get_method(m.name)
    layout = token_layout(engine.model, inputs)[0]
    req = PruneRequest(budget=resolve_budget(m.budget, layout), layer=m.layer,
                       regions=None if ctx.get("region") is None else [ctx["region"]],
                       image_sizes_wh=[ctx["size_wh"]], llava_geometry=engine.frontend.llava_geometry,
                       seed=m.seed, keys=[ctx["key"]], options=dict(m.options), processor=engine.frontend)
    with spec.load()(engine.model, inputs, req) as run:
        out = engine.generate(run.inputs)
    info = dict(run.rows()[0])
    if not run.output_has_prompt:
        info["output_has_prompt"] = False
    return out, info


class _Methods(dict):
    """crop eval's own adapters; any other name resolves to the registry's generic adapter."""

    def __missing__(self, name: str) -> Callable[["Engine", dict, dict], tuple[Any, dict]]:
        from crop.pruning.registry import get_method

        get_method(name)  # KeyError naming the known methods
        return method_registry


METHODS: dict[str, Callable[["Engine", dict, dict], tuple[Any, dict]]] = _Methods({
    "none": method_none, "ilp": method_ilp, "center": method_center, "random": method_random,
    "prune": method_prune, "fastv": method_fastv, "plc": method_plc})
