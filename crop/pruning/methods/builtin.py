"""Registry entry points of the methods that predate the registry: none, ILP, prune, FastV.

Thin: the work stays in :mod:`crop.pruning.plugin`, :mod:`crop.pruning.fastv` and
:mod:`crop.pruning.prune`; these functions only give them the registry's calling convention
(:mod:`crop.pruning.registry`) and its per-row report.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from crop.pruning.registry import PruneRequest, layer_averaged


@dataclass
class Run:
    """A :class:`crop.pruning.registry.MethodRun` whose rows are computed when read (after generate)."""

    inputs: dict
    rows_fn: Callable[[], list[dict]]
    output_has_prompt: bool = True
    extra: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return self.rows_fn()


def num_decoder_layers(model: Any) -> int:
    from crop.pruning.plugin import decoder_layers

    return len(decoder_layers(model)[1])


def visual_counts(model: Any, inputs: dict) -> list[int]:
    """Image tokens per batch row of the prompt."""
    from crop.pruning.guards import image_token_id_of

    ids = inputs["input_ids"]
    return [int(v) for v in (ids == image_token_id_of(model)).sum(dim=1).tolist()]


def stage_rows(n_in: list[int], kept: list[int], layer: int, num_layers: int, **extra: Any) -> list[dict]:
    """Report rows for a method that keeps ``kept[b]`` of ``n_in[b]`` tokens from ``layer`` on."""
    return [{"visual_tokens_in": i, "visual_tokens_kept": k,
             "visual_tokens_layer_avg": layer_averaged(i, [(layer, k)], num_layers),
             "stages": [[layer, k]], **extra} for i, k in zip(n_in, kept)]


def region_plan(model: Any, inputs: dict, req: PruneRequest):
    """The keep plan of ``req.regions`` (one per row) with ``req.budget`` (THE region mapping).

    ``req.regions[b]`` is a ``Region`` or a list of them (issue 21): the row keeps the union of
    their tokens, a budget spread over them by area (:func:`crop.pruning.region_map.region_keep_plan`).
    """
    from crop.pruning import region_keep_plan, token_layout

    if req.regions is None:
        raise ValueError("this method needs one region per row (request.regions)")
    layouts = token_layout(model, inputs)
    return region_keep_plan(layouts, list(req.regions), image_sizes_wh=req.image_sizes_wh,
                            llava_geometry=req.llava_geometry or "center_crop", budget=req.budget)


@contextmanager
def attach_none(model: Any, inputs: dict, req: PruneRequest) -> Iterator[Run]:
    n = visual_counts(model, inputs)
    yield Run(inputs, lambda: stage_rows(n, n, 0, num_decoder_layers(model)))


@contextmanager
def attach_ilp_method(model: Any, inputs: dict, req: PruneRequest) -> Iterator[Run]:
    from crop.pruning import attach_ilp

    plan = region_plan(model, inputs, req)
    layers = num_decoder_layers(model)
    with attach_ilp(model, plan, layer=req.layer):
        yield Run(inputs, lambda: stage_rows(list(plan.visual_total), list(plan.visual_kept), req.layer, layers))


@contextmanager
def attach_prune(model: Any, inputs: dict, req: PruneRequest) -> Iterator[Run]:
    from crop.pruning import prune_inputs

    plan = region_plan(model, inputs, req)
    layers = num_decoder_layers(model)
    yield Run(prune_inputs(model, inputs, plan),
              lambda: stage_rows(list(plan.visual_total), list(plan.visual_kept), 0, layers),
              output_has_prompt=False)


@contextmanager
def attach_fastv_method(model: Any, inputs: dict, req: PruneRequest) -> Iterator[Run]:
    from crop.pruning import attach_fastv, token_layout

    if req.budget is None:
        raise ValueError("fastv needs a budget R")
    layouts = token_layout(model, inputs)
    layers = num_decoder_layers(model)
    n_in = [lay.num_visual for lay in layouts]
    with attach_fastv(model, layouts, budget=req.budget, layer=req.layer) as handle:
        def rows() -> list[dict]:
            kept = list(handle.kept_counts or [min(req.budget, n) for n in n_in])
            return stage_rows(n_in, kept, req.layer, layers)
        yield Run(inputs, rows)
