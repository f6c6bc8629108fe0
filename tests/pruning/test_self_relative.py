"""``self`` with ViCrop's relative attention (option ``relative``): the question's layer-S attention
over the image tokens divided by the attention under a generic instruction about the same image.

Reference: eager attention maps of the real model classes on the question prompt and on a
generic prompt written here by hand (the row's tokens up to its image, then the template's
tokens after the image for the generic text), per family, on a ragged batch; and the cache: a
second request for the same image runs no extra pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crop.pruning import token_layout
from crop.pruning.plugin import decoder_layers
from crop.pruning.registry import PruneRequest, get_method

from pruning_tiny import FAMILIES, IMAGE_TOKENS, IMG, build_inputs, build_model, build_tokenizer

torch.set_num_threads(1)
K, S = 2, 1
GENERIC = "w5 w6 w7"


class Frontend:
    """The two things option ``relative`` reads from a frontend: the template and the tokenizer."""

    def __init__(self, family: str):
        self.placeholder = IMAGE_TOKENS[family]
        self.tokenizer = build_tokenizer(self.placeholder)

    def prompt(self, message: str, has_image: bool) -> str:
        return f"w1 w2 {self.placeholder if has_image else ''} {message} w3"


def _eager_row(model, x: dict) -> np.ndarray:
    with torch.no_grad():
        att = model(**x, output_attentions=True).attentions[S]  # (1, H, N, N)
    return att[0, :, -1].mean(0).double().numpy()  # (N,)


@pytest.mark.parametrize("family", FAMILIES)
def test_relative_scores_equal_the_ratio_of_eager_maps(family):
    model = build_model(family, "eager")
    x = build_inputs(family, 1)
    ids = x["input_ids"][0].tolist()
    last = max(i for i, t in enumerate(ids) if t == IMG)
    tail = [2 + 5, 2 + 6, 2 + 7, 2 + 3]  # w5 w6 w7 w3: word wi has id 2 + i
    gid = torch.tensor([ids[: last + 1] + tail])
    g = {**x, "input_ids": gid, "attention_mask": torch.ones_like(gid)}
    if "mm_token_type_ids" in x:
        g["mm_token_type_ids"] = (gid == IMG).int()
    vis_q = np.flatnonzero(np.array(ids) == IMG)
    want = _eager_row(model, x)[vis_q] / _eager_row(model, g)[vis_q]

    req = PruneRequest(layer=K, budget=4, image_sizes_wh=[(16, 12)], processor=Frontend(family),
                       options={"relative": GENERIC, "self_layer": S})
    with torch.no_grad(), get_method("self").load()(model, x, req) as run:
        model(**x)
    np.testing.assert_allclose(run_handle_scores(model, x, req), want, rtol=1e-4)
    row = run.rows()[0]
    assert 0 < row["visual_tokens_kept"] < row["visual_tokens_in"]  # budget 4 cells (+ NeXT newlines)


def run_handle_scores(model, x, req) -> np.ndarray:
    """The visual scores the handle fed to the block mapping (read through a fresh attach)."""
    from crop.pruning.methods import self_region

    seen = {}
    original = self_region.attach_self_region

    def spy(*a, **k):
        h = original(*a, **k)
        seen["h"] = h
        return h

    self_region.attach_self_region = spy
    try:
        with torch.no_grad(), get_method("self").load()(model, x, req):
            model(**x)
    finally:
        self_region.attach_self_region = original
    return seen["h"].visual_scores[0]


def test_generic_pass_is_cached_per_image_and_stops_at_layer_s():
    model = build_model("llava", "sdpa")
    x = build_inputs("llava", 1, seed=11)
    calls = {layer: 0 for layer in range(4)}
    _, layers = decoder_layers(model)
    hooks = [lyr.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, lyr in enumerate(layers)]
    req = PruneRequest(layer=K, budget=4, image_sizes_wh=[(16, 12)], processor=Frontend("llava"),
                       options={"relative": True})
    try:
        for _ in range(2):
            with torch.no_grad(), get_method("self").load()(model, x, req):
                model(**x)
    finally:
        for hk in hooks:
            hk.remove()
    # two question prefills reach every layer; the one generic pass (cached the second time) stops after S
    assert calls == {0: 3, 1: 3, 2: 2, 3: 2}


@pytest.mark.parametrize("family", FAMILIES)
def test_relative_on_a_ragged_batch_equals_rows_alone(family):
    from test_self_region import _ragged

    model = build_model(family, "sdpa")
    x, parts = _ragged(family)
    req = PruneRequest(layer=K, budget=5, image_sizes_wh=[(16, 12)] * 2, processor=Frontend(family),
                       options={"relative": GENERIC})
    with torch.no_grad(), get_method("self").load()(model, x, req) as run:
        model.generate(**x, max_new_tokens=2, do_sample=False)
    rows = run.rows()
    for b, p in enumerate(parts):
        one = PruneRequest(layer=K, budget=5, image_sizes_wh=[(16, 12)], processor=Frontend(family),
                           options={"relative": GENERIC})
        with torch.no_grad(), get_method("self").load()(model, p, one) as r1:
            model(**p)
        got = r1.rows()[0]
        assert got["region_used"] == rows[b]["region_used"]
        np.testing.assert_allclose(got["block_scores"], rows[b]["block_scores"], atol=1e-4)


def test_relative_needs_a_frontend():
    model = build_model("llava")
    x = build_inputs("llava", 1)
    with pytest.raises(ValueError, match="frontend"):
        with get_method("self").load()(model, x, PruneRequest(layer=K, options={"relative": True})):
            pass
