"""One registry of token-pruning methods, shared by ``crop eval``, the benchmarks and the lmms-eval plug-in.

A method is one module plus one line in :data:`METHODS`. Its entry point has the signature::

    attach(model, inputs, request: PruneRequest) -> ContextManager[MethodRun]

and is used the same way by every caller::

    spec = get_method("visionzip")
    with spec.load()(model, inputs, request) as run:
        out = model.generate(**run.inputs, **generation_kwargs)
    rows = run.rows()           # one dict per batch row (see MethodRun.rows)

``inputs`` are the processor outputs on the model's device (``input_ids``, ``attention_mask``,
pixel inputs; a batch may be ragged: left padding, rows keeping different regions). A method
that changes what enters the LLM (VisionZip, DivPrune, CDPruner, prune, downsample) returns new
``run.inputs`` (typically ``inputs_embeds`` + ``attention_mask``; then ``generate`` returns the new
tokens only and ``run.output_has_prompt`` is False); a method that prunes inside the LLM (ILP,
FastV, PDrop, SparseVLM, DART, self) attaches hooks and returns ``inputs`` unchanged. Leaving the
``with`` block removes every hook: the model is exactly as before.

Budget conventions (docs/baselines.md): every row reports ``visual_tokens_kept`` (visual tokens
present after the last pruning stage) and ``visual_tokens_layer_avg`` (visual tokens averaged
over all decoder layers, :func:`layer_averaged`): a method that keeps 576 tokens for K layers and
64 after is not "64 tokens" on the layer-averaged basis.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Mapping, Protocol, Sequence

# where a method acts: nothing pruned | before the LLM (what enters the decoder) | inside the LLM
# (hooks on decoder layers) | another model class (PLC's compressed projector)
STAGES = ("none", "before_llm", "in_llm", "model")
FAMILIES = ("llava", "llava_next", "qwen2_vl")


@dataclass(frozen=True)
class PruneRequest:
    """What a caller asks of a method for one batch.

    ``budget``: visual tokens to keep per image (already resolved from a fraction; None keeps all).
    ``layer``: K, the first decoder layer that runs pruned (in-LLM methods).
    ``regions``: one region (8x8 blocks on the original image, :class:`crop.geometry.Region`) per
    row, or None for methods that need none. ``image_sizes_wh``: original image sizes per row.
    ``llava_geometry``: how the processor fits an image (``crop.pruning.llava_geometry_of``).
    ``keys``: one stable id per row (seeds per-sample randomness, e.g. ``random_tokens``).
    ``options``: method-specific settings (each method documents and validates its own keys).
    ``processor``: the model's processor / frontend, for methods that re-encode the image.
    """

    budget: int | None = None
    layer: int = 2
    regions: Sequence[Any] | None = None
    image_sizes_wh: Sequence[tuple[int, int]] | None = None
    llava_geometry: str | None = None
    seed: int = 0
    keys: Sequence[str] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    processor: Any = None


class MethodRun(Protocol):
    """What ``attach`` yields. ``inputs`` go to ``generate``; ``rows()`` is read after it."""

    inputs: dict
    output_has_prompt: bool

    def rows(self) -> list[dict]:
        """Per batch row: ``visual_tokens_in``, ``visual_tokens_kept``, ``visual_tokens_layer_avg``
        (+ optional method fields, e.g. ``region_used``, ``stages``: [[layer, kept], ...])."""
        ...


@dataclass(frozen=True)
class MethodSpec:
    """One registry line: the name users type, where its code lives, and what it needs."""

    name: str
    target: str                 # "module:attribute" of the attach function, imported lazily
    stage: str                  # one of STAGES
    needs_region: bool = False  # a regions file / localizer / region source must be configured
    needs_budget: bool = True   # R must be given
    families: tuple[str, ...] = FAMILIES
    summary: str = ""           # one line for `crop methods` / docs (where it prunes, what it scores)

    def load(self) -> Callable[..., ContextManager[MethodRun]]:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


def layer_averaged(visual_in: int, stages: Sequence[tuple[int, int]], num_layers: int) -> float:
    """Visual tokens averaged over the ``num_layers`` decoder layers.

    ``stages``: (first layer that sees ``kept`` tokens, kept) in layer order; layers before the
    first stage see ``visual_in`` tokens. A before-LLM method is ``[(0, kept)]``; ILP / FastV at K
    is ``[(K, kept)]``; PDrop's pyramid has one pair per stage.
    """
    if num_layers <= 0:
        raise ValueError(f"num_layers must be > 0, got {num_layers}")
    total, count, at = 0.0, visual_in, 0
    for layer, kept in stages:
        layer = min(max(int(layer), 0), num_layers)
        total += count * (layer - at)
        count, at = kept, layer
    total += count * (num_layers - at)
    return total / num_layers


_M = "crop.pruning.methods"
METHODS: dict[str, MethodSpec] = {s.name: s for s in (
    # -- built in (crop.pruning.methods.builtin) --
    MethodSpec("none", f"{_M}.builtin:attach_none", "none", needs_budget=False,
               summary="the unpruned model"),
    MethodSpec("ilp", f"{_M}.builtin:attach_ilp_method", "in_llm", needs_region=True, needs_budget=False,
               summary="CROP-ILP (Sec. 3.3): from layer K keep the region's tokens (budget rectangle when R is set)"),
    MethodSpec("prune", f"{_M}.builtin:attach_prune", "before_llm", needs_region=True, needs_budget=False,
               summary="Table 5's prune: the region's tokens only enter the LLM"),
    MethodSpec("fastv", f"{_M}.builtin:attach_fastv_method", "in_llm",
               summary="FastV: top-R by the last token's attention at layer K-1"),
    # -- the paper's Table 2 and later baselines (issue 23) --
    MethodSpec("random_tokens", f"{_M}.random_tokens:attach", "before_llm",
               summary="R visual tokens drawn uniformly (seeded per sample) before the LLM"),
    MethodSpec("downsample", f"{_M}.downsample:attach", "before_llm",
               summary="the image's visual tokens pooled to about R before the LLM"),
    MethodSpec("visionzip", f"{_M}.visionzip:attach", "before_llm", families=("llava",),
               summary="VisionZip: dominant tokens by encoder [CLS] attention + merged contextual tokens"),
    MethodSpec("divprune", f"{_M}.divprune:attach", "before_llm",
               summary="DivPrune: max-min diversity selection of visual tokens before the LLM"),
    MethodSpec("cdpruner", f"{_M}.cdpruner:attach", "before_llm",
               summary="CDPruner: question-conditioned DPP over visual tokens before the LLM"),
    MethodSpec("pdrop", f"{_M}.pdrop:attach", "in_llm",
               summary="PyramidDrop: staged drops at several layers by last-instruction-token attention"),
    MethodSpec("sparsevlm", f"{_M}.sparsevlm:attach", "in_llm",
               summary="SparseVLM: text raters choose visual tokens at several layers, with recycling"),
    MethodSpec("dart", f"{_M}.dart:attach", "in_llm",
               summary="DART: duplication-aware pruning against pivot tokens after layer K"),
    # -- beyond the paper (issue 25) --
    MethodSpec("self", f"{_M}.self_region:attach", "in_llm", needs_budget=False,
               summary="CROP with the region read from the VLM's own attention at layer S < K, then ILP"),
)}


def get_method(name: str) -> MethodSpec:
    """The registry line of ``name``; one-line ``KeyError`` naming the known methods otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown pruning method {name!r}; known: {', '.join(sorted(METHODS))}") from None


def available_methods() -> list[str]:
    """Registered methods whose module imports (a method still being written is left out)."""
    names = []
    for name, spec in METHODS.items():
        try:
            spec.load()
        except (ImportError, AttributeError):
            continue
        names.append(name)
    return names
