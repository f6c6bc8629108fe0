"""Inner-LLM Pruning (paper Sec. 3.3) and its baselines, attached to one loaded model.

Public surface::

    token_layout(model_or_config, processor_outputs) -> list[SampleLayout]
    region_keep_plan(layouts, regions, image_sizes_wh=..., llava_geometry=..., budget=R) -> KeepPlan
    view_keep_mask(box, view, image_wh, llava_geometry, budget) -> (rows, cols) bool   (THE mapping)
    llava_region_mask(region, image_wh, llava_geometry, grid_hw, tile_px) -> (rows, cols) (PLC's masks)
    calibrate_scale(samples, R) -> ScaleChoice   ("retain averaged R": one region scale per run)
    llava_geometry_of(image_processor) -> "center_crop" | "pad_square" | "resize"
    keep_all_plan(layouts) -> KeepPlan
    attach_ilp(model, plan, layer=2) -> PruneHandle         (handle.remove() / with-block; K = #layers: no pruning)
    attach_fastv(model, layouts, budget, layer=2) -> FastVHandle
    prune_inputs(model, processor_outputs, plan) -> dict     ("prune": removed before the LLM)
    center_region(region), random_region(region, seed)      (Table 10 baselines)

Methods as plug-ins: crop.pruning.registry (one registry for crop eval, benchmarks, lmms-eval).
See docs/pruning.md for the rules (geometry, budget rectangle, batches, errors).
"""

import importlib
from typing import Any

# Loaded on first use (PEP 562) so that torch-free modules such as crop.pruning.registry and
# crop.pruning.average can be imported without torch (``crop --help``, config validation).
_EXPORTS = {
    "center_region": "baselines", "random_region": "baselines",
    "FastVHandle": "fastv", "attach_fastv": "fastv",
    "SampleLayout": "layout", "ViewGrid": "layout", "token_layout": "layout",
    "PruneHandle": "plugin", "attach_ilp": "plugin",
    "prune_inputs": "prune",
    "AverageSample": "average", "ScaleChoice": "average", "calibrate_scale": "average", "scale_box": "average",
    "KeepPlan": "region_map", "budget_rect": "region_map", "content_mask": "region_map",
    "keep_all_plan": "region_map", "llava_geometry_of": "region_map", "llava_region_mask": "region_map",
    "region_keep_plan": "region_map", "view_keep_mask": "region_map",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'crop.pruning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"crop.pruning.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "AverageSample",
    "FastVHandle",
    "KeepPlan",
    "PruneHandle",
    "SampleLayout",
    "ScaleChoice",
    "ViewGrid",
    "attach_fastv",
    "attach_ilp",
    "budget_rect",
    "calibrate_scale",
    "center_region",
    "content_mask",
    "keep_all_plan",
    "llava_geometry_of",
    "llava_region_mask",
    "prune_inputs",
    "random_region",
    "region_keep_plan",
    "scale_box",
    "token_layout",
    "view_keep_mask",
]
