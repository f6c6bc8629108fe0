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

See docs/pruning.md for the rules (geometry, budget rectangle, batches, errors).
"""

from crop.pruning.baselines import center_region, random_region
from crop.pruning.fastv import FastVHandle, attach_fastv
from crop.pruning.layout import SampleLayout, ViewGrid, token_layout
from crop.pruning.plugin import PruneHandle, attach_ilp
from crop.pruning.prune import prune_inputs
from crop.pruning.average import AverageSample, ScaleChoice, calibrate_scale, scale_box
from crop.pruning.region_map import (KeepPlan, budget_rect, content_mask, keep_all_plan, llava_geometry_of,
                                     llava_region_mask, region_keep_plan, view_keep_mask)

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
