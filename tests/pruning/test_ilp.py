"""ILP plug-in vs the unmodified model, a hand-written reference, and its own uncached runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crop.geometry import Region, full_region
from crop.pruning import attach_ilp, keep_all_plan, region_keep_plan, token_layout
from crop.pruning.plugin import decoder_layers

from pruning_tiny import FAMILIES, build_inputs, build_model

torch.set_num_threads(1)
CASES = [(f, a) for f in FAMILIES for a in ("sdpa", "eager")]
K = 2
LOGIT_ATOL = 1e-5  # fp32 on CPU: sdpa/eager kernels on different shapes agree to ~1e-7


def _batch(family):
    return 1 if family == "llava_next" else 2


def _plan(model, x, region=Region(2, 1, 5, 4)):
    lay = token_layout(model, x)
    return lay, region_keep_plan(lay, [region] * len(lay), image_sizes_wh=[(16, 12)] * len(lay))


def _capture(model, x):
    stack, _ = decoder_layers(model)
    got = {}

    def hook(mod, args, kwargs):
        got.update(kwargs)

    h = stack.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(**x, use_cache=False)
    h.remove()
    return got


def _reference_logits(model, x, plan, k):
    """Layers 0..k-1 on the full sequence, drop positions, layers k.. on the kept ones."""
    got = _capture(model, x)
    stack, layers = decoder_layers(model)
    h = got["inputs_embeds"]  # (B, N, D)
    b, n = h.shape[:2]
    pos = got.get("position_ids")
    if pos is None:
        pos = torch.arange(n)[None].expand(b, -1)  # (B, N)
    cos, sin = stack.rotary_emb(h, pos)  # (B, N, Dh) each
    mask = torch.full((n, n), torch.finfo(h.dtype).min).triu(1)[None, None].expand(b, 1, n, n)
    keep = []
    for r in range(b):
        m = np.ones(n, bool)
        m[plan.drop[r]] = False
        keep.append(torch.as_tensor(np.flatnonzero(m)))
    keep = torch.stack(keep)  # (B, N_keep)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            if i == k:
                rows = torch.arange(b)[:, None]
                h, cos, sin = h[rows, keep], cos[rows, keep], sin[rows, keep]  # (B, N_keep, .)
                mask = torch.stack([mask[r][:, keep[r]][:, :, keep[r]] for r in range(b)])  # (B, 1, N_keep, N_keep)
            h = layer(h, attention_mask=mask, position_embeddings=(cos, sin))
        return model.lm_head(stack.norm(h))


@pytest.mark.parametrize("family,attn", CASES)
def test_whole_image_region_is_identity(family, attn):
    model = build_model(family, attn)
    x = build_inputs(family, batch=_batch(family))
    lay, plan = _plan(model, x, full_region())
    assert plan.visual_kept == plan.visual_total
    with torch.no_grad():
        base = model(**x).logits
        gen0 = model.generate(**x, max_new_tokens=4, do_sample=False)
        with attach_ilp(model, plan, layer=K):
            out = model(**x).logits
            gen1 = model.generate(**x, max_new_tokens=4, do_sample=False)
    assert torch.equal(base, out)
    assert torch.equal(gen0, gen1)


@pytest.mark.parametrize("family,attn", CASES)
def test_pruned_logits_match_reference(family, attn):
    model = build_model(family, attn)
    x = build_inputs(family, batch=_batch(family))
    lay, plan = _plan(model, x)
    assert 0 < plan.visual_kept[0] < plan.visual_total[0]
    ref = _reference_logits(model, x, plan, K)
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        out = model(**x).logits
    n_keep = x["input_ids"].shape[1] - len(plan.drop[0])
    assert out.shape == (len(lay), n_keep, 100)
    torch.testing.assert_close(out, ref, atol=LOGIT_ATOL, rtol=0)
    with torch.no_grad():
        full = model(**x).logits
    assert not torch.allclose(full[:, -1], out[:, -1], atol=1e-3)  # pruning did change the result


@pytest.mark.parametrize("family,attn", CASES)
def test_cached_generation_equals_uncached(family, attn):
    model = build_model(family, attn)
    x = build_inputs(family, batch=_batch(family))
    _, plan = _plan(model, x)
    kw = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        c = model.generate(**x, **kw)
        u = model.generate(**x, use_cache=False, **kw)
    assert torch.equal(c.sequences, u.sequences)
    for a, b in zip(c.logits, u.logits):
        torch.testing.assert_close(a, b, atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_remove_restores_model(family):
    model = build_model(family, "sdpa")
    x = build_inputs(family, batch=1)
    _, plan = _plan(model, x)
    _, layers = decoder_layers(model)
    n_hooks = sum(len(l._forward_pre_hooks) for l in layers)
    with torch.no_grad():
        before = model(**x).logits
        gen_before = model.generate(**x, max_new_tokens=4, do_sample=False)
        h = attach_ilp(model, plan, layer=K)
        pruned = model(**x).logits
        h.remove()
        after = model(**x).logits
        gen_after = model.generate(**x, max_new_tokens=4, do_sample=False)
    assert pruned.shape[1] < before.shape[1]
    assert torch.equal(before, after) and torch.equal(gen_before, gen_after)
    assert sum(len(l._forward_pre_hooks) for l in layers) == n_hooks


def test_rows_with_different_positions_same_count():
    """Two rows keep equally many tokens at different places: each equals its single-row run."""
    model = build_model("llava", "eager")
    x = build_inputs("llava", batch=2)
    lay = token_layout(model, x)
    plan = region_keep_plan(lay, [Region(0, 0, 3, 3), Region(4, 4, 7, 7)], llava_geometry="resize")
    assert plan.visual_kept == (4, 4) and not np.array_equal(plan.drop[0], plan.drop[1])
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        both = model(**x).logits
    for r in range(2):
        xr = {k: v[r : r + 1] for k, v in x.items()}
        lr = token_layout(model, xr)
        pr = region_keep_plan(lr, [[Region(0, 0, 3, 3), Region(4, 4, 7, 7)][r]], llava_geometry="resize")
        with torch.no_grad(), attach_ilp(model, pr, layer=K):
            one = model(**xr).logits
        torch.testing.assert_close(both[r : r + 1], one, atol=LOGIT_ATOL, rtol=0)


def test_left_padded_batch_matches_single_rows():
    model = build_model("llava", "sdpa")
    a = build_inputs("llava", batch=1, seed=3, prefix=5)
    b = build_inputs("llava", batch=1, seed=4, prefix=3)
    pad = a["input_ids"].shape[1] - b["input_ids"].shape[1]
    x = {
        "input_ids": torch.cat([a["input_ids"], torch.cat([torch.zeros(1, pad, dtype=torch.long), b["input_ids"]], 1)]),
        "attention_mask": torch.cat([a["attention_mask"], torch.cat([torch.zeros(1, pad, dtype=torch.long), b["attention_mask"]], 1)]),
        "pixel_values": torch.cat([a["pixel_values"], b["pixel_values"]]),
    }
    reg = [Region(1, 1, 4, 6)]
    plan = region_keep_plan(token_layout(model, x), reg * 2, llava_geometry="resize")
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        gen = model.generate(**x, max_new_tokens=4, do_sample=False)
    for r, single in enumerate((a, b)):
        p1 = region_keep_plan(token_layout(model, single), reg, llava_geometry="resize")
        with torch.no_grad(), attach_ilp(model, p1, layer=K):
            g1 = model.generate(**single, max_new_tokens=4, do_sample=False)
        assert torch.equal(gen[r, -4:], g1[0, -4:])


RAGGED = [Region(0, 0, 3, 3), Region(0, 0, 5, 5)]  # half vs three quarters per axis: unequal counts


def _row(x, r):
    """Row r of a batch of tiny inputs (Qwen2-VL pixel rows split evenly per image)."""
    out = {k: v[r : r + 1] for k, v in x.items() if k != "pixel_values"}
    pv = x["pixel_values"]
    per = pv.shape[0] // x["input_ids"].shape[0] if "image_grid_thw" in x else 1
    out["pixel_values"] = pv[r * per : (r + 1) * per]
    return out


@pytest.mark.parametrize("family,attn", [("llava", "sdpa"), ("llava", "eager"), ("qwen2_vl", "sdpa"), ("qwen2_vl", "eager")])
def test_unequal_keep_counts_match_single_rows(family, attn):
    """Rows keeping different numbers of tokens (left-padded gather + mask) equal their own runs."""
    model = build_model(family, attn)
    x = build_inputs(family, batch=2)
    geo = dict(image_sizes_wh=[(16, 12)] * 2, llava_geometry="resize")
    plan = region_keep_plan(token_layout(model, x), RAGGED, **geo)
    assert plan.visual_kept[0] < plan.visual_kept[1] < plan.visual_total[1]
    kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        both = model(**x).logits  # (2, M, V), row 0 left-padded
        gen = model.generate(**x, **kw)
        gen_u = model.generate(**x, use_cache=False, **kw)
    n_keep = [x["input_ids"].shape[1] - len(d) for d in plan.drop]
    assert both.shape[1] == max(n_keep) and torch.isfinite(both).all()
    assert torch.equal(gen.sequences, gen_u.sequences)
    for r in range(2):
        xr = _row(x, r)
        pr = region_keep_plan(token_layout(model, xr), RAGGED[r : r + 1], image_sizes_wh=[(16, 12)], llava_geometry="resize")
        with torch.no_grad(), attach_ilp(model, pr, layer=K):
            one = model(**xr).logits  # (1, n_keep[r], V)
            g1 = model.generate(**xr, **kw)
        assert one.shape[1] == n_keep[r]
        torch.testing.assert_close(both[r : r + 1, -n_keep[r] :], one, atol=LOGIT_ATOL, rtol=0)
        assert torch.equal(gen.sequences[r : r + 1], g1.sequences)
        for a, b in zip(gen.logits, g1.logits):
            torch.testing.assert_close(a[r : r + 1], b, atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize(
    "layer,msg", [(0, "K must be >= 1"), (5, "must be <= the number of decoder layers"), (-1, "K must be >= 1")]
)
def test_bad_layer_raises(layer, msg):
    model = build_model("llava", "sdpa")
    plan = keep_all_plan(token_layout(model, build_inputs("llava")))
    with pytest.raises(ValueError, match=msg):
        attach_ilp(model, plan, layer=layer)


def test_unsupported_settings_raise():
    model = build_model("llava", "sdpa")
    x = build_inputs("llava")
    plan = keep_all_plan(token_layout(model, x))
    cfg = model.config.get_text_config()
    old = cfg._attn_implementation
    cfg._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="flex_attention.*not supported"):
        attach_ilp(model, plan, layer=K)
    cfg._attn_implementation = old
    with attach_ilp(model, plan, layer=K), pytest.raises(RuntimeError, match="StaticCache is not supported"):
        model.generate(**x, max_new_tokens=2, cache_implementation="static")
    model.generation_config.cache_implementation = "static"
    with pytest.raises(ValueError, match="cache_implementation"):
        attach_ilp(model, plan, layer=K)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_raises(backend):
    """Compiling a model with ILP attached gives the clear RuntimeError, not a silent run.

    A plain ``raise`` in the traced hook used to be swallowed: dynamo dropped the frame, re-ran
    it eagerly (``is_compiling()`` False there) and the call returned normally.
    """
    import torch._dynamo

    model = build_model("llava", "sdpa")
    x = build_inputs("llava")
    plan = region_keep_plan(token_layout(model, x), [Region(2, 1, 5, 4)], llava_geometry="resize")
    with torch.no_grad():
        base = model(**x).logits
    handle = attach_ilp(model, plan, layer=K)
    try:
        with torch.no_grad(), pytest.raises(RuntimeError, match="do not support torch.compile"):
            torch.compile(model, backend=backend)(**x)
    finally:
        handle.remove()
        torch._dynamo.reset()
    with torch.no_grad():
        assert torch.equal(model(**x).logits, base)  # detached and uncompiled: unchanged


def test_attach_to_compiled_model_raises():
    model = build_model("llava", "sdpa")
    plan = keep_all_plan(token_layout(model, build_inputs("llava")))
    with pytest.raises(RuntimeError, match="attach to the uncompiled model"):
        attach_ilp(torch.compile(model, backend="eager"), plan, layer=K)
    fwd = model.forward
    model.forward = torch.compile(fwd, backend="eager")
    with pytest.raises(RuntimeError, match="attach to the uncompiled model"):
        attach_ilp(model, plan, layer=K)
    model.forward = fwd
    model.compile(backend="eager")
    with pytest.raises(RuntimeError, match="attach to the uncompiled model"):
        attach_ilp(model, plan, layer=K)


def _accepted_cache_names(model) -> list[str]:
    """Cache keywords the running release's model forward accepts: the current one, and on 5.24+
    the deprecated ``past_key_values`` too (renamed by transformers before the forward body runs,
    but *after* our model-level pre-hook, which therefore sees the caller's spelling)."""
    from crop.compat import cache_kwarg

    return [cache_kwarg()] + (["past_key_values"] if cache_kwarg() == "cache" else [])


# Qwen2-VL is left out: its own forward cannot be driven by such a loop (a decode step given only
# input_ids + mask + cache computes 3-D positions over the whole mask and fails, hooks or not).
@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_hand_written_decode_loop_with_either_cache_keyword_matches_generate(family):
    """A user's own greedy loop, passing the cache back under each keyword the release accepts,
    decodes exactly what cached ``generate`` decodes (no decode step taken for a new prompt)."""
    import warnings

    from crop.compat import cache_of_output

    model = build_model(family, "sdpa")
    x = build_inputs(family, batch=1)
    _, plan = _plan(model, x)
    steps = 4
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        want = model.generate(**x, max_new_tokens=steps, do_sample=False)
        for name in _accepted_cache_names(model):
            out = model(**x, use_cache=True)
            ids, mask = x["input_ids"], x["attention_mask"]
            for _ in range(steps):
                nxt = out.logits[:, -1:].argmax(-1)  # (1, 1)
                ids = torch.cat([ids, nxt], 1)
                mask = torch.cat([mask, mask[:, :1]], 1)
                if ids.shape[1] == want.shape[1]:
                    break
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # the deprecated spelling, on purpose
                    out = model(input_ids=nxt, attention_mask=mask, use_cache=True, **{name: cache_of_output(out)})
            assert torch.equal(ids, want), name
