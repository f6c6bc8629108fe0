"""PDrop, SparseVLM and DART (crop.pruning.staged) against hand-written references, plus the
properties every in-LLM method must hold.

References are written here independently of the method modules: a plain layer-by-layer loop over
the decoder (the model's own layer / attention modules, eager attention maps from
``self_attn``), the model's own KV cache and hidden states, and numpy selection rules written from
the papers / official code (cited in the method modules).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crop.compat import cache_of_output
from crop.pruning import token_layout
from crop.pruning.plugin import decoder_layers
from crop.pruning.registry import PruneRequest, get_method, layer_averaged

from pruning_tiny import FAMILIES, IMG, build_inputs, build_model, decoder_kwargs

torch.set_num_threads(1)
STAGES = [1, 2, 3]  # the tiny models have 4 decoder layers
LOGIT_ATOL = 1e-5
GEN = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)

# method -> (budget R, options) used by the property tests
CASES = {
    "pdrop": (5, {"layers": STAGES}),
    "sparsevlm": (5, {"layers": STAGES}),
    "dart": (8, {}),
}


def _batch(family):
    return 1 if family == "llava_next" else 2


def _attach(name, model, x, budget=None, **opts):
    b, o = CASES[name]
    return get_method(name).load()(model, x, PruneRequest(budget=b if budget is None else budget, layer=2,
                                                          options={**o, **opts}))


# ----------------------------------------------------------------------------- reference loop
def _reference(model, x, stages, choose):
    """Run the decoder layer by layer; at each stage layer ``choose(stage, i, h, pe, mask, slots, prev)``
    (``h``: input of layer i, ``prev``: input of layer i - 1, both over the current slots) returns
    per row (kept visual positions, {slot position: member positions to average}).

    Returns (per stage, per row: kept visual positions) and the final logits (B, M, V).
    """
    got = decoder_kwargs(model, x)
    stack, layers = decoder_layers(model)
    h = got["inputs_embeds"]  # (B, N, D)
    b, n = h.shape[:2]
    pos = got.get("position_ids")
    cos, sin = stack.rotary_emb(h, pos if pos is not None else torch.arange(n)[None].expand(b, -1))  # (B|1, N, Dh)
    cos, sin = cos.expand(b, -1, -1), sin.expand(b, -1, -1)
    mask = torch.full((n, n), torch.finfo(h.dtype).min).triu(1)[None, None].expand(b, 1, n, n)
    slots = torch.arange(n)[None].expand(b, -1)  # (B, N) absolute positions
    ids = x["input_ids"]
    log, prev = [], None
    with torch.no_grad():
        for i, layer in enumerate(layers):
            if i in stages:
                chosen = choose(stages.index(i), i, h, (cos, sin), mask, slots, prev)
                log.append([c[0] for c in chosen])
                keep = []
                for r in range(b):
                    s = slots[r].numpy()
                    vis = ids[r, s].numpy() == IMG
                    keep.append(torch.as_tensor(np.flatnonzero(~vis | np.isin(s, chosen[r][0]))))
                keep = torch.stack(keep)  # (B, M) into the current slots (equal counts in these tests)
                rows = torch.arange(b)[:, None]
                new_h = h[rows, keep].clone()
                for r in range(b):
                    s = slots[r].numpy()
                    for p, members in chosen[r][1].items():
                        dst = int(np.flatnonzero(s[keep[r].numpy()] == p)[0])
                        new_h[r, dst] = h[r, torch.as_tensor(np.flatnonzero(np.isin(s, members)))].mean(0)
                h, cos, sin, slots = new_h, cos[rows, keep], sin[rows, keep], slots[rows, keep]
                mask = torch.stack([mask[r][:, keep[r]][:, :, keep[r]] for r in range(b)])
            prev = h
            h = layer(h, attention_mask=mask, position_embeddings=(cos, sin))
        return log, model.lm_head(stack.norm(h))


def _eager_map(layer, h, pe, mask):
    """The layer's own eager attention probabilities (B, H, M, M) on input ``h``."""
    return layer.self_attn(hidden_states=layer.input_layernorm(h), position_embeddings=pe, attention_mask=mask)[1]


def _visual(x, r, slots):
    s = slots[r].numpy()
    return s[x["input_ids"][r, s].numpy() == IMG]


def _top(values, candidates, k):
    """Hand-written top-k: the k largest values, ties to the lower position."""
    pairs = sorted(zip(values.tolist(), candidates.tolist()), key=lambda t: (-t[0], t[1]))
    return np.sort(np.array([p for _, p in pairs[:k]], dtype=np.int64))


# ----------------------------------------------------------------------------- PDrop
def _pdrop_counts(n, r):
    return [int(round(n * (r / n) ** (s / 3))) for s in (1, 2)] + [r]


@pytest.mark.parametrize("family", FAMILIES)
def test_pdrop_matches_reference(family):
    """Each stage keeps the top-k visual tokens by the last token's head-mean attention at the
    stage's first layer, computed on the tokens the previous stage left."""
    model = build_model(family, "eager")
    x = build_inputs(family, batch=_batch(family))
    layers = decoder_layers(model)[1]
    r = CASES["pdrop"][0]

    def choose(stage, i, h, pe, mask, slots, prev):
        att = _eager_map(layers[i], h, pe, mask)[:, :, -1].mean(1)  # (B, M) last token, heads averaged
        out = []
        for row in range(h.shape[0]):
            vis = _visual(x, row, slots)
            n0 = int((x["input_ids"][row] == IMG).sum())
            col = np.isin(slots[row].numpy(), vis)
            out.append((_top(att[row].numpy()[col], vis, _pdrop_counts(n0, r)[stage]), {}))
        return out

    ref_log, ref_logits = _reference(model, x, STAGES, choose)
    with torch.no_grad(), _attach("pdrop", model, x) as run:
        logits = model(**run.inputs).logits
    handle_sel = _handle_selections(model)
    for s, stage_rows in enumerate(ref_log):
        for row, kept in enumerate(stage_rows):
            np.testing.assert_array_equal(handle_sel[s][row], kept)
    torch.testing.assert_close(logits, ref_logits, atol=LOGIT_ATOL, rtol=0)


_LAST: dict = {}


@pytest.fixture(autouse=True)
def _record_selections(monkeypatch):
    """Keep the last staged handle's selections readable after its with-block."""
    from crop.pruning import staged

    orig = staged.StagedHandle.remove

    def remove(self):
        if self.selections is not None:
            _LAST["sel"] = [[sel.keep.copy() for sel in stage] for stage in self.selections]
            _LAST["merged"] = [[dict(sel.merged) for sel in stage] for stage in self.selections]
        orig(self)

    monkeypatch.setattr(staged.StagedHandle, "remove", remove)
    _LAST.clear()
    yield


def _handle_selections(model):
    return _LAST["sel"]


# ----------------------------------------------------------------------------- DART
def _dart_reference(key_l1, states, image, text, budget, pi=4, pt=4):
    """DART's greedy rule written out with Python lists (slot coordinates)."""
    img_piv = sorted(sorted(image.tolist(), key=lambda p: (-key_l1[p], p))[:pi])
    txt_piv = sorted(sorted(text.tolist(), key=lambda p: (-key_l1[p], p))[:pt])
    per = budget // (pi + pt)
    kept, valid = set(img_piv), [p for p in image.tolist() if p not in img_piv]
    for piv in sorted(set(img_piv) | set(txt_piv)):
        a = states[piv]
        sims = []
        for p in valid:
            v = states[p]
            sims.append((float(a @ v / (np.linalg.norm(a) * np.linalg.norm(v))), p))
        picked = [p for _, p in sorted(sims)[:per]]  # least similar first, ties to the lower position
        kept.update(picked)
        valid = [p for p in valid if p not in picked]
    return np.array(sorted(kept))


@pytest.mark.parametrize("family", FAMILIES)
def test_dart_matches_reference(family):
    """Pivots by the L1 norm of layer K-1's cached keys; least-duplicated tokens by cosine of the
    normed hidden states entering layer K (both read from the unpruned model's own outputs)."""
    model = build_model(family, "eager")
    x = build_inputs(family, batch=_batch(family))
    k, r = 2, CASES["dart"][0]
    stack, _ = decoder_layers(model)
    with torch.no_grad():
        out = model(**x, use_cache=True, output_hidden_states=True)
        keys = cache_of_output(out).layers[k - 1].keys  # (B, Hkv, N, Dh)
        key_l1 = keys.transpose(1, 2).flatten(2).abs().sum(-1).numpy()  # (B, N)
        states = stack.norm(out.hidden_states[k]).numpy()  # (B, N, D) entering layer K
    with torch.no_grad(), _attach("dart", model, x) as run:
        logits = model(**run.inputs).logits
        rows = run.rows()
    kept = _LAST["sel"][0]
    for row in range(x["input_ids"].shape[0]):
        image = np.flatnonzero(x["input_ids"][row].numpy() == IMG)
        text = np.arange(image.max() + 1, x["input_ids"].shape[1])
        ref = _dart_reference(key_l1[row], states[row], image, text, r)
        np.testing.assert_array_equal(kept[row], ref)
        assert rows[row]["visual_tokens_kept"] == ref.size == min(image.size, 4 + 8 * (r // 8))

    def choose(stage, i, h, pe, mask, slots, prev):
        return [(kept[row], {}) for row in range(h.shape[0])]

    _, ref_logits = _reference(model, x, [k], choose)
    torch.testing.assert_close(logits, ref_logits, atol=LOGIT_ATOL, rtol=0)


def test_dart_sixty_four_keeps_sixty_eight():
    from crop.pruning.methods.dart import dart_kept

    assert dart_kept(64, 576) == 68 and dart_kept(128, 576) == 132 and dart_kept(192, 576) == 196


# ----------------------------------------------------------------------------- SparseVLM
def _clusters(deleted):
    return 0 if deleted == 0 else int((int(0.3 * deleted) + 1) / 10) + 1


def _dpc(x, k):
    """Density peaks with kNN density, written with torch ops (official ``cluster_and_merge``)."""
    d = torch.cdist(x[None], x[None])[0] / x.shape[1] ** 0.5  # (m, m)
    density = (-(d.topk(k, dim=-1, largest=False).values ** 2).mean(-1)).exp()
    parent = torch.stack([d[i][density > density[i]].min() if (density > density[i]).any() else d.max()
                          for i in range(len(x))])
    score = (parent * density).numpy()
    centres = np.array(sorted(range(len(x)), key=lambda i: (-score[i], i))[:k])
    labels = d[torch.as_tensor(centres)].argmin(0).numpy()
    labels[centres] = np.arange(k)
    return centres, labels


@pytest.mark.parametrize("family", FAMILIES)
def test_sparsevlm_matches_reference(family):
    """Raters from the embeddings; each stage ranks by the raters' head-mean attention at the layer
    before it; the top 30 % (+1) of the deleted tokens are clustered and merged at their centres."""
    model = build_model(family, "eager")
    x = build_inputs(family, batch=_batch(family))
    layers = decoder_layers(model)[1]
    r = CASES["sparsevlm"][0]
    emb = decoder_kwargs(model, x)["inputs_embeds"]  # (B, N, D)
    raters = []
    for row in range(emb.shape[0]):
        image = np.flatnonzero(x["input_ids"][row].numpy() == IMG)
        text = np.arange(image.max() + 1, emb.shape[1])
        m = torch.softmax(emb[row, image] @ emb[row, text].T, dim=1).mean(0)  # (T,)
        raters.append(text[(m > m.mean()).numpy()])

    def choose(stage, i, h, pe, mask, slots, prev):
        att = _eager_map(layers[i - 1], prev, pe, mask).mean(1)  # layer p = i - 1 on the current tokens
        out = []
        for row in range(h.shape[0]):
            s = slots[row].numpy()
            vis = _visual(x, row, slots)
            n0 = int((x["input_ids"][row] == IMG).sum())
            target = _pdrop_counts(n0, r)[stage]  # the same geometric targets, recycled tokens included
            rel = att[row][np.isin(s, raters[row])][:, np.isin(s, vis)].mean(0).numpy()
            if target >= vis.size:
                out.append((vis, {}))
                continue
            topk = next(k for k in range(target, -1, -1) if k + _clusters(vis.size - k) <= target)
            order = sorted(range(vis.size), key=lambda j: (-rel[j], vis[j]))
            keep, deleted = vis[order[:topk]], vis[order[topk:]]
            pool = deleted[: int(0.3 * deleted.size) + 1]
            feats = h[row, torch.as_tensor(np.flatnonzero(np.isin(s, pool)))]
            pool_sorted = s[np.isin(s, pool)]
            centres, labels = _dpc(feats, min(target - topk, pool.size))
            merged = {int(pool_sorted[c]): pool_sorted[labels == j] for j, c in enumerate(centres)}
            out.append((np.sort(np.concatenate([keep, list(merged)])).astype(np.int64), merged))
        return out

    ref_log, ref_logits = _reference(model, x, STAGES, choose)
    with torch.no_grad(), _attach("sparsevlm", model, x) as run:
        logits = model(**run.inputs).logits
    for s, stage_rows in enumerate(ref_log):
        for row, kept in enumerate(stage_rows):
            np.testing.assert_array_equal(_LAST["sel"][s][row], kept)
    assert any(m for stage in _LAST["merged"] for m in stage), "no token was recycled: the test checks nothing"
    torch.testing.assert_close(logits, ref_logits, atol=LOGIT_ATOL, rtol=0)


def test_sparsevlm_official_schedule_counts():
    """schedule 'official': the v1.0 top-k lists (scaled by n / 576) plus the code's clusters."""
    from crop.pruning.methods.sparsevlm import n_clusters

    model = build_model("llava", "sdpa")
    x = build_inputs("llava", batch=1)
    req = PruneRequest(budget=192, options={"layers": STAGES, "schedule": "official"})
    with torch.no_grad(), get_method("sparsevlm").load()(model, x, req) as run:
        model(**run.inputs)
        stages = run.rows()[0]["stages"]
    present = 16
    for (layer, kept), k in zip(stages, (300, 200, 110)):
        topk = min(max(1, round(k * 16 / 576)), present - 1)
        assert kept == topk + n_clusters(present - topk)
        present = kept


# ----------------------------------------------------------------------------- properties
METHODS = list(CASES)


def _expected_kept(name, n):
    b = CASES[name][0]
    return min(n, 4 + 8 * (b // 8)) if name == "dart" else min(b, n)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_rows_counts_text_untouched_and_remove(name, family):
    model = build_model(family, "sdpa")
    x = build_inputs(family, batch=_batch(family))
    lay = token_layout(model, x)
    n_layers = model.config.get_text_config().num_hidden_layers
    with torch.no_grad():
        plain = model(**x).logits
        with _attach(name, model, x) as run:
            pruned = model(**run.inputs).logits
        after = model(**x).logits
    torch.testing.assert_close(after, plain, rtol=0, atol=0)  # remove() restored the model
    for row, (r, l) in enumerate(zip(run.rows(), lay)):
        assert r["visual_tokens_in"] == l.num_visual
        assert r["visual_tokens_kept"] == _expected_kept(name, l.num_visual) == r["stages"][-1][1]
        counts = [k for _, k in r["stages"]]
        assert counts == sorted(counts, reverse=True)
        assert r["visual_tokens_layer_avg"] == pytest.approx(layer_averaged(l.num_visual, r["stages"], n_layers))
        for kept in (stage[row] for stage in _LAST["sel"]):
            assert np.isin(kept, l.visual_positions).all()  # only visual positions are ever selected
    n_text = x["input_ids"].shape[1] - lay[0].num_visual
    assert pruned.shape[1] == n_text + run.rows()[0]["visual_tokens_kept"]  # every text token still there


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("family,attn", [(f, a) for f in FAMILIES for a in ("sdpa", "eager")])
def test_cached_generate_equals_frozen_uncached(name, family, attn):
    model = build_model(family, attn)
    x = build_inputs(family, batch=_batch(family))
    with torch.no_grad():
        with _attach(name, model, x) as run:
            c = model.generate(**run.inputs, **GEN)
        sel = _LAST["sel"]
        with _attach(name, model, x, freeze=True):
            model(**x)  # selects once
            u = model.generate(**x, use_cache=False, **GEN)
    assert all(np.array_equal(a, b) for sa, sb in zip(sel, _LAST["sel"]) for a, b in zip(sa, sb))
    assert torch.equal(c.sequences, u.sequences)
    for a, b in zip(c.logits, u.logits):
        torch.testing.assert_close(a, b, atol=LOGIT_ATOL, rtol=0)


def _left_pad(a, b, family):
    pad = a["input_ids"].shape[1] - b["input_ids"].shape[1]
    z = torch.zeros(1, pad, dtype=torch.long)
    x = {"input_ids": torch.cat([a["input_ids"], torch.cat([z, b["input_ids"]], 1)]),
         "attention_mask": torch.cat([a["attention_mask"], torch.cat([z, b["attention_mask"]], 1)]),
         "pixel_values": torch.cat([a["pixel_values"], b["pixel_values"]])}
    if family == "qwen2_vl":
        x["image_grid_thw"] = torch.cat([a["image_grid_thw"], b["image_grid_thw"]])
        x["mm_token_type_ids"] = (x["input_ids"] == IMG).int()
    return x


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_ragged_batch_equals_single_rows(name, family):
    """Left-padded rows of different lengths, each selecting its own positions, equal batch 1."""
    model = build_model(family, "sdpa")
    a = build_inputs(family, batch=1, seed=3, prefix=6)
    b = build_inputs(family, batch=1, seed=4, prefix=3)
    x = _left_pad(a, b, family)
    with torch.no_grad():
        gen = dict(GEN, min_new_tokens=4)  # no early end-of-sequence in one row only
        with _attach(name, model, x) as run:
            both = model.generate(**run.inputs, **gen)
        rows = run.rows()
        both_sel = _LAST["sel"]
        for r, single in enumerate((a, b)):
            with _attach(name, model, single) as run1:
                one = model.generate(**run1.inputs, **gen)
            shift = x["input_ids"].shape[1] - single["input_ids"].shape[1]
            for s, stage in enumerate(_LAST["sel"]):
                np.testing.assert_array_equal(both_sel[s][r], stage[0] + shift)
            assert rows[r]["stages"] == run1.rows()[0]["stages"]
            assert torch.equal(both.sequences[r, -4:], one.sequences[0, -4:])
            for lb, l1 in zip(both.logits, one.logits):
                torch.testing.assert_close(lb[r : r + 1], l1, atol=1e-4, rtol=0)


def test_unknown_option_and_missing_budget_raise():
    model = build_model("llava", "sdpa")
    x = build_inputs("llava", batch=1)
    for name in METHODS:
        with pytest.raises(ValueError, match="unknown option"):
            with get_method(name).load()(model, x, PruneRequest(budget=4, options={"nope": 1})):
                pass
        with pytest.raises(ValueError, match="budget"):
            with get_method(name).load()(model, x, PruneRequest(budget=None, options=CASES[name][1])):
                pass
    # the attach failure left no hooks behind: another method attaches cleanly
    with _attach("pdrop", model, x) as run, torch.no_grad():
        model(**run.inputs)


def test_default_schedules_scale_to_the_model_depth():
    from crop.pruning.staged import geometric_counts, scaled_layers

    assert scaled_layers([8, 16, 24], 32) == [8, 16, 24]            # PDrop's official layer_list
    assert scaled_layers([3, 7, 16], 32) == [3, 7, 16]              # SparseVLM: after layers 2 / 6 / 15
    assert scaled_layers([8, 16, 24], 40) == [10, 20, 30]           # LLaVA-1.5-13B
    assert scaled_layers([3, 7, 16], 4) == [1, 2]                   # coinciding stages merge
    assert geometric_counts(576, 64, 3) == [277, 133, 64]
    assert layer_averaged(576, list(zip([8, 16, 24], geometric_counts(576, 64, 3))), 32) == 262.5


def test_bad_stage_layers_raise():
    from crop.pruning.methods.pdrop import PDropSelector
    from crop.pruning.staged import StagedHandle

    model = build_model("llava", "sdpa")
    x = build_inputs("llava", batch=1)
    lay = token_layout(model, x)
    for stages, msg in (([2, 1], "increasing"), ([1, 4], "must be <"), ([0, 2], "K must be >= 1")):
        with pytest.raises(ValueError, match=msg):
            StagedHandle(model, lay, stages, PDropSelector([[4, 4]]))
    with _attach("pdrop", model, x) as run, torch.no_grad():  # nothing was left attached
        model(**run.inputs)


@pytest.mark.parametrize("name", METHODS)
def test_rows_with_different_image_token_counts_equal_single_rows(name):
    """LLaVA-NeXT images of different shapes (different visual counts per row, left-padded):
    each row's stages and answer equal its own batch-1 run."""
    model = build_model("llava_next", "sdpa")
    a = build_inputs("llava_next", batch=1, seed=3, sizes_hw=[(10, 19)])
    b = build_inputs("llava_next", batch=1, seed=4, sizes_hw=[(12, 12)])
    if a["input_ids"].shape[1] < b["input_ids"].shape[1]:
        a, b = b, a
    pad = a["input_ids"].shape[1] - b["input_ids"].shape[1]
    z = torch.zeros(1, pad, dtype=torch.long)
    pa, pb = a["pixel_values"], b["pixel_values"]
    extra = pa.shape[1] - pb.shape[1]
    if extra < 0:
        pa, extra = torch.cat([pa, torch.zeros(1, -extra, *pa.shape[2:])], 1), 0
    pb = torch.cat([pb, torch.zeros(1, extra, *pb.shape[2:])], 1)  # (1, P, 3, 8, 8): unused patches
    x = {"input_ids": torch.cat([a["input_ids"], torch.cat([z, b["input_ids"]], 1)]),
         "attention_mask": torch.cat([a["attention_mask"], torch.cat([z, b["attention_mask"]], 1)]),
         "pixel_values": torch.cat([pa, pb]), "image_sizes": torch.cat([a["image_sizes"], b["image_sizes"]])}
    n = [int((t["input_ids"] == IMG).sum()) for t in (a, b)]
    assert n[0] != n[1]
    gen = dict(GEN, min_new_tokens=4)
    with torch.no_grad():
        with _attach(name, model, x) as run:
            both = model.generate(**run.inputs, **gen)
        rows = run.rows()
        for r, single in enumerate((a, b)):
            with _attach(name, model, single) as run1:
                one = model.generate(**run1.inputs, **gen)
            assert rows[r]["visual_tokens_in"] == n[r] and rows[r]["stages"] == run1.rows()[0]["stages"]
            assert torch.equal(both.sequences[r, -4:], one.sequences[0, -4:])
            for lb, l1 in zip(both.logits, one.logits):
                torch.testing.assert_close(lb[r : r + 1], l1, atol=1e-4, rtol=0)
