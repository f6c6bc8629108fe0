"""The one method registry: builtin entries equal the direct handles; reports; layer-averaged counts."""

from __future__ import annotations

import pytest
import torch

from crop.geometry import Region
from crop.pruning import attach_fastv, attach_ilp, region_keep_plan, token_layout
from crop.pruning.registry import METHODS, PruneRequest, get_method, layer_averaged

from pruning_tiny import FAMILIES, build_inputs, build_model

torch.set_num_threads(1)
K, R = 2, 5


def test_layer_averaged_counts_every_layer():
    # ILP at K=2 of 32 layers keeping 64 of 576: (2*576 + 30*64) / 32
    assert layer_averaged(576, [(2, 64)], 32) == pytest.approx((2 * 576 + 30 * 64) / 32)
    assert layer_averaged(576, [(0, 64)], 32) == 64          # before the LLM
    assert layer_averaged(576, [], 32) == 576                # nothing pruned
    # a pyramid: 576 for layers 0-7, 288 for 8-15, 144 for 16-23, 72 for 24-31
    assert layer_averaged(576, [(8, 288), (16, 144), (24, 72)], 32) == pytest.approx((576 + 288 + 144 + 72) / 4)
    with pytest.raises(ValueError):
        layer_averaged(576, [(2, 64)], 0)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(KeyError, match="known: .*fastv"):
        get_method("nope")


def test_registry_is_torch_free_to_import():
    import subprocess
    import sys

    code = "import sys, crop.pruning.registry, crop.eval.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _regions(x, family):
    n = x["input_ids"].shape[0]
    return [Region(1, 2, 5, 7)] * n, [(40, 30)] * n


@pytest.mark.parametrize("family", FAMILIES)
def test_builtin_ilp_equals_attach_ilp(family):
    model = build_model(family)
    x = build_inputs(family, batch=1)
    regions, sizes = _regions(x, family)
    req = PruneRequest(budget=R, layer=K, regions=regions, image_sizes_wh=sizes, llava_geometry="pad_square")
    plan = region_keep_plan(token_layout(model, x), regions, image_sizes_wh=sizes, llava_geometry="pad_square", budget=R)
    with torch.no_grad():
        with attach_ilp(model, plan, layer=K):
            ref = model(**x).logits
        with get_method("ilp").load()(model, x, req) as run:
            got = model(**run.inputs).logits
        after = model(**x).logits
        plain = model(**x)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    row = run.rows()[0]
    assert row["visual_tokens_kept"] == plan.visual_kept[0] and row["visual_tokens_in"] == plan.visual_total[0]
    layers = model.config.get_text_config().num_hidden_layers
    assert row["visual_tokens_layer_avg"] == pytest.approx(layer_averaged(plan.visual_total[0], [(K, plan.visual_kept[0])], layers))
    torch.testing.assert_close(after, plain.logits, rtol=0, atol=0)  # the with-block removed every hook


@pytest.mark.parametrize("family", FAMILIES)
def test_builtin_fastv_and_none_report_rows(family):
    model = build_model(family)
    x = build_inputs(family, batch=1)
    lay = token_layout(model, x)
    with torch.no_grad():
        with attach_fastv(model, lay, budget=R, layer=K):
            ref = model(**x).logits
        with get_method("fastv").load()(model, x, PruneRequest(budget=R, layer=K)) as run:
            got = model(**run.inputs).logits
        with get_method("none").load()(model, x, PruneRequest()) as none:
            full = model(**none.inputs).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert run.rows()[0]["visual_tokens_kept"] == R
    assert none.rows()[0]["visual_tokens_kept"] == lay[0].num_visual == none.rows()[0]["visual_tokens_layer_avg"]
    assert full.shape[1] == x["input_ids"].shape[1]


def test_every_registry_line_names_a_stage_and_summary():
    from crop.pruning.registry import STAGES

    for name, spec in METHODS.items():
        assert spec.name == name and spec.stage in STAGES and spec.summary, name
