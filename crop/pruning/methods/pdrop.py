"""PyramidDrop (Xing et al., CVPR 2025): visual tokens dropped in stages, ranked by the attention of
the last instruction token.

Paper Sec. 3.2-3.3: the LLM is split into stages; at the end of each stage the image tokens are
ranked by the attention the last instruction token pays them, and the top fraction is kept. The
official code (github.com/Cooperx521/PyramidDrop, ``llava/model/modeling_llama_pdrop.py``,
``pdrop_rank_drop``) ranks "after" layers ``layer_list = [8, 16, 24]`` (LLaVA-1.5-7B, 32 layers)
with the *next* layer's own ``input_layernorm`` / ``q_proj`` / ``k_proj`` and rotary embedding
applied to the hidden states entering it, the query being the last prompt token, heads averaged,
and keeps ``int(n * ratio)`` with ``image_token_ratio_list = [0.5, 0.25, 0.125]`` of the ``n``
visual tokens (``scripts/v1_5/pdrop_eval/*.sh``): 576 -> 288 -> 144 -> 72.

The repo ships no 64/128/192-token configuration. Here R is the count after the last stage and
the stages keep a geometric pyramid ``n * (R/n) ** (s/3)`` at the official layers scaled to the
model's depth (L/4, L/2, 3L/4): for LLaVA-1.5-7B and R = 64: 576 -> 277 -> 133 -> 64 at layers
8 / 16 / 24 (layer-averaged 262.5). ``options``:

* ``layers``: first layer of each stage (default: 8/16/24 of 32, scaled);
* ``ratios``: fraction of ``n`` kept by each stage (the official list ``[0.5, 0.25, 0.125]``
  reproduces the repo: ``int(n * ratio)``; then R is not needed);
* ``counts``: visual tokens kept by each stage (overrides both);
* ``freeze``: keep the first prefill's selection (uncached generate).

Difference from the code, kept on purpose (docs/baselines.md): kept tokens keep their original
positions (the official code renumbers the kept sequence 0..M-1 after each drop and shifts decode
positions accordingly); ranking uses those original positions too.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from crop.pruning.registry import PruneRequest

OFFICIAL_LAYERS = (8, 16, 24)          # layer_list of the official LLaVA-1.5 scripts
OFFICIAL_RATIOS = (0.5, 0.25, 0.125)   # image_token_ratio_list (after the leading 1.0)
OPTIONS = ("layers", "ratios", "counts", "freeze")


class PDropSelector:
    """Top ``counts[b][s]`` candidates by the last token's attention at the stage's first layer."""

    capture_layers: tuple[int, ...] = ()

    def __init__(self, counts: list[list[int]]):
        self.counts = counts  # per layout row, per stage

    def select(self, ctx):
        from crop.pruning.fastv import last_token_attention
        from crop.pruning.staged import top_k_rows

        layer = ctx.handle._layers[ctx.layer]
        kw = ctx.slot_kwargs()
        scores = last_token_attention(layer, ctx.hidden, kw["position_embeddings"], kw["attention_mask"])  # (B, M)
        rep = scores.shape[0] // len(self.counts)
        return top_k_rows(scores, ctx, [self.counts[b // rep][ctx.stage] for b in range(scores.shape[0])])


def stage_counts(n: int, budget: int | None, stages: int, options: dict) -> list[int]:
    """Visual tokens kept by each stage for an image of ``n`` tokens."""
    from crop.pruning.staged import geometric_counts

    if "counts" in options:
        counts = [int(c) for c in options["counts"]]
    elif "ratios" in options:
        counts = [int(n * float(r)) for r in options["ratios"]]  # the official int(n * ratio)
    else:
        if budget is None:
            raise ValueError("pdrop needs a budget R (or options.ratios / options.counts)")
        return geometric_counts(n, budget, stages)
    if len(counts) != stages:
        raise ValueError(f"pdrop: {len(counts)} per-stage counts for {stages} stages")
    return [min(max(c, 0), n) for c in counts]


@contextmanager
def attach(model: Any, inputs: dict, req: PruneRequest) -> Iterator[Any]:
    from crop.pruning import token_layout
    from crop.pruning.methods.builtin import Run, num_decoder_layers
    from crop.pruning.staged import StagedHandle, check_options, scaled_layers, staged_rows

    opts = dict(req.options)
    check_options(opts, OPTIONS, "pdrop")
    layers_n = num_decoder_layers(model)
    stages = [int(x) for x in opts["layers"]] if "layers" in opts else scaled_layers(OFFICIAL_LAYERS, layers_n)
    layouts = token_layout(model, inputs)
    counts = [stage_counts(lay.num_visual, req.budget, len(stages), opts) for lay in layouts]
    handle = StagedHandle(model, layouts, stages, PDropSelector(counts), freeze=bool(opts.get("freeze", False)),
                          name="PDrop")
    with handle:
        yield Run(inputs, lambda: staged_rows(handle, layouts, layers_n))
