"""K numbering (issue 17): K = number of decoder layers means "no pruning in the LLM".

The paper's Table 8 runs K = 1..32 on the 32-layer LLaVA-1.5-7B; our K is the number of decoder
layers that run on the full sequence (K = 2: layers 0 and 1 full, pruned from layer 2 on), so the
paper's K = 32 row is ours with K = 32 and must run, giving the unpruned model's outputs.
"""

from __future__ import annotations

import pytest
import torch

from crop.geometry import Region
from crop.pruning import attach_fastv, attach_ilp, region_keep_plan, token_layout
from crop.pruning.plugin import decoder_layers

from pruning_tiny import build_inputs, build_model

torch.set_num_threads(1)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_k_equal_to_layer_count_is_no_pruning(family):
    model = build_model(family, "sdpa")
    x = build_inputs(family)
    n_layers = len(decoder_layers(model)[1])
    lay = token_layout(model, x)
    plan = region_keep_plan(lay, [Region(0, 0, 3, 3)], llava_geometry="resize")
    assert plan.visual_kept[0] < plan.visual_total[0]  # the plan does drop tokens
    kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        base_logits = model(**x).logits
        base = model.generate(**x, **kw)
        with attach_ilp(model, plan, layer=n_layers) as handle:
            logits = model(**x).logits
            gen = model.generate(**x, **kw)
            assert handle.kept_counts == plan.visual_kept  # reported as the plan's count
        with attach_fastv(model, lay, budget=3, layer=n_layers):
            fast = model.generate(**x, **kw)
        with attach_ilp(model, plan, layer=n_layers - 1):  # one layer earlier: pruned, shorter logits
            assert model(**x).logits.shape[1] == x["input_ids"].shape[1] - len(plan.drop[0])
    assert torch.equal(logits, base_logits)
    assert torch.equal(gen.sequences, base.sequences) and torch.equal(fast.sequences, base.sequences)
    for a, b in zip(gen.logits, base.logits):
        assert torch.equal(a, b)


def test_k_beyond_layer_count_raises():
    model = build_model("llava", "sdpa")
    n_layers = len(decoder_layers(model)[1])
    plan = region_keep_plan(token_layout(model, build_inputs("llava")), [Region(0, 0, 3, 3)],
                            llava_geometry="resize")
    with pytest.raises(ValueError, match=f"K={n_layers + 1} must be <= the number of decoder layers"):
        attach_ilp(model, plan, layer=n_layers + 1)
