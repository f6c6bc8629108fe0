"""FastV selection vs eager attention maps; cached vs frozen-uncached; the "prune" baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crop.geometry import Region
from crop.pruning import attach_fastv, prune_inputs, region_keep_plan, token_layout
from crop.pruning.plugin import decoder_layers

from pruning_tiny import FAMILIES, build_inputs, build_model, decoder_kwargs

torch.set_num_threads(1)
K, R = 2, 5


@pytest.mark.parametrize("family", FAMILIES)
def test_fastv_selects_top_r_of_eager_attention(family):
    """The one-row score equals the head-mean of the eager attention map of layer K-1."""
    model = build_model(family, "eager")
    x = build_inputs(family, batch=1)
    lay = token_layout(model, x)
    with torch.no_grad():
        att = model(**x, output_attentions=True).attentions[K - 1]  # (B, H, N, N)
    row = att[0, :, -1].mean(0).numpy()  # (N,)
    vis = lay[0].visual_positions
    expected = np.sort(vis[np.argsort(-row[vis], kind="stable")[:R]])
    with torch.no_grad(), attach_fastv(model, lay, budget=R, layer=K) as h:
        out = model(**x).logits
    kept = np.setdiff1d(vis, h.plan.drop[0])
    np.testing.assert_array_equal(kept, expected)
    assert out.shape[1] == x["input_ids"].shape[1] - (vis.size - R)


@pytest.mark.parametrize("family,attn", [(f, a) for f in FAMILIES for a in ("sdpa", "eager")])
def test_fastv_cached_equals_frozen_uncached(family, attn):
    model = build_model(family, attn)
    x = build_inputs(family, batch=2 if family != "llava_next" else 1)
    lay = token_layout(model, x)
    kw = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        with attach_fastv(model, lay, budget=R, layer=K) as h:
            c = model.generate(**x, **kw)
            sel = h.plan
        with attach_fastv(model, lay, budget=R, layer=K, freeze=True) as h2:
            u = model.generate(**x, use_cache=False, **kw)
            assert all(np.array_equal(a, b) for a, b in zip(h2.plan.drop, sel.drop))
    assert torch.equal(c.sequences, u.sequences)
    for a, b in zip(c.logits, u.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_prune_inputs_equals_shorter_sequence(family):
    """'prune' = the LLM run on the kept embeddings only (positions renumbered)."""
    model = build_model(family, "sdpa")
    x = build_inputs(family, batch=1)
    lay = token_layout(model, x)
    plan = region_keep_plan(lay, [Region(0, 0, 3, 3)], image_sizes_wh=[(16, 12)])
    out = prune_inputs(model, x, plan)
    n_keep = x["input_ids"].shape[1] - plan.drop[0].size
    assert out["inputs_embeds"].shape[:2] == (1, n_keep)
    # independent reference: text embeddings of the kept text positions are the token embeddings
    keep = np.setdiff1d(np.arange(x["input_ids"].shape[1]), plan.drop[0])
    text = [i for i, p in enumerate(keep) if x["input_ids"][0, p] != 99]
    emb = model.get_input_embeddings()(x["input_ids"][0, keep[text]])
    torch.testing.assert_close(out["inputs_embeds"][0, text], emb)
    with torch.no_grad():
        logits = model(**out).logits
        gen = model.generate(**out, max_new_tokens=3, do_sample=False)
    assert logits.shape[1] == n_keep and gen.shape == (1, 3)
    assert torch.equal(gen[0, 0], logits[0, -1].argmax())


def test_prune_inputs_qwen_keeps_mrope_positions():
    model = build_model("qwen2_vl", "sdpa")
    x = build_inputs("qwen2_vl", batch=1)
    lay = token_layout(model, x)
    plan = region_keep_plan(lay, [Region(4, 4, 7, 7)])
    got = decoder_kwargs(model, x)
    out = prune_inputs(model, x, plan)
    keep = np.setdiff1d(np.arange(x["input_ids"].shape[1]), plan.drop[0])
    torch.testing.assert_close(out["position_ids"], got["position_ids"][:, :, keep])


def test_prune_generation_qwen_continues_original_mrope_positions():
    """'prune' + generate on Qwen2-VL: kept tokens keep their M-RoPE ids, new tokens continue them.

    Reference: a hand-written greedy loop of uncached forwards with explicit positions
    (each new token at last position + 1 on all three axes, as the unpruned model numbers text).
    """
    model = build_model("qwen2_vl", "sdpa")
    x = build_inputs("qwen2_vl", batch=1)
    plan = region_keep_plan(token_layout(model, x), [Region(4, 4, 7, 7)])
    out = prune_inputs(model, x, plan)
    stack, _ = decoder_layers(model)
    seen = []
    h = stack.register_forward_pre_hook(lambda m, a, k: seen.append(k["position_ids"].clone()), with_kwargs=True)
    steps = 4
    with torch.no_grad():
        gen = model.generate(**out, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True)
    h.remove()
    last = int(out["position_ids"][0, 0, -1])
    assert all(int(out["position_ids"][a, 0, -1]) == last for a in range(3))  # text: equal axes
    torch.testing.assert_close(seen[0][-3:], out["position_ids"])  # prefill used the kept M-RoPE ids
    for t, pid in enumerate(seen[1:], start=1):
        assert pid[-3:].flatten().tolist() == [last + t] * 3
    emb, pid = out["inputs_embeds"], out["position_ids"]  # (1, N, D), (3, 1, N)
    toks = []
    with torch.no_grad():
        for t in range(steps):
            logits = model(inputs_embeds=emb, position_ids=pid, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long)).logits[:, -1]
            torch.testing.assert_close(gen.logits[t], logits, atol=1e-5, rtol=0)
            tok = logits.argmax(-1)  # (1,)
            toks.append(int(tok))
            emb = torch.cat([emb, model.get_input_embeddings()(tok)[:, None]], 1)  # (1, N + 1, D)
            pid = torch.cat([pid, pid[:, :, -1:] + 1], 2)  # (3, 1, N + 1)
    assert gen.sequences[0].tolist() == toks
