"""The before-the-LLM methods (random_tokens, downsample, visionzip, divprune, cdpruner).

Each selection rule is checked against a small numpy reference written from the paper / official
code description (cited in the method modules), on tiny random-weight models built from the real
transformers classes: the vectors that stand for the image are exactly the reference's. Then the
properties every method must hold, on every family it supports: R kept per row (both budget
conventions), text tokens untouched (embeddings and Qwen2-VL M-RoPE ids), the model unchanged
after the with-block, cached ``generate`` equal to uncached, and a ragged batch (left padding,
different image sizes) equal to each row run alone.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from crop.pruning.methods.before_llm import capture, image_chunks
from crop.pruning.registry import METHODS, PruneRequest, get_method

from pruning_tiny import FAMILIES, build_inputs, build_model

torch.set_num_threads(1)
R = 5
APPLIES = {
    "random_tokens": FAMILIES, "downsample": FAMILIES, "divprune": FAMILIES, "cdpruner": FAMILIES,
    "visionzip": ("llava",),
}
CASES = [(m, f) for m, fams in APPLIES.items() for f in fams]
_MODELS: dict = {}


def model_of(family: str, attn: str = "sdpa"):
    if (family, attn) not in _MODELS:
        _MODELS[family, attn] = build_model(family, attn)
    return _MODELS[family, attn]


def run_method(name, model, x, budget=R, keys=None, **options):
    with torch.no_grad(), get_method(name).load()(model, x, PruneRequest(budget=budget, keys=keys, options=options)) as run:
        return run.inputs, run.rows()


def image_vectors(cap, inputs, row=0):
    """The vectors between the row's text before and after its (single) image."""
    lay = cap.layouts[row]
    real = cap.attention_mask[row].bool().numpy()
    vis = np.zeros(real.size, bool)
    vis[lay.visual_positions] = True
    text = np.flatnonzero(real & ~vis)
    before = int((text < lay.visual_positions.min()).sum())
    after = int((text > lay.visual_positions.max()).sum())
    emb = inputs["inputs_embeds"][row][inputs["attention_mask"][row].bool()]
    return emb[before: emb.shape[0] - after].numpy()


# ----------------------------------------------------------------------------- references
def ref_random(n, r, seed, key):
    s = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")
    return np.sort(np.random.default_rng(s).choice(n, size=r, replace=False))


def ref_divprune(feats, r):
    f = feats.astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    d = 1.0 - f @ f.T
    chosen = [int(np.argmax(np.sort(d, axis=0)[1]))]  # farthest nearest neighbour
    while len(chosen) < r:
        chosen.append(int(np.argmax(d[chosen].min(axis=0))))  # max of min distance to the chosen
    return np.sort(chosen)


def ref_cdpruner(img, txt, r):
    i = img.astype(np.float64) / np.linalg.norm(img, axis=1, keepdims=True)
    t = txt.astype(np.float64) / np.linalg.norm(txt, axis=1, keepdims=True)
    rel = -(i @ t.T).mean(axis=1)  # the official code's sign
    rel = (rel - rel.min() + 1e-6) / (rel.max() - rel.min())
    k = rel[:, None] * (i @ i.T) * rel[None, :]
    chosen: list[int] = []
    for _ in range(r):  # greedy MAP by explicit determinants (no Cholesky updates)
        gains = [np.linalg.det(k[np.ix_(chosen + [j], chosen + [j])]) if j not in chosen else -np.inf
                 for j in range(len(k))]
        chosen.append(int(np.argmax(gains)))
    return np.sort(chosen)


def ref_pool(grid, hp, wp):
    h, w, _ = grid.shape
    out = np.zeros((hp, wp, grid.shape[-1]))
    for i in range(hp):
        for j in range(wp):
            r0, r1 = (i * h) // hp, -((-(i + 1) * h) // hp)
            c0, c1 = (j * w) // wp, -((-(j + 1) * w) // wp)
            out[i, j] = grid[r0:r1, c0:c1].reshape(-1, grid.shape[-1]).mean(axis=0)
    return out


# ----------------------------------------------------------------------------- reference tests
@pytest.mark.parametrize("family", FAMILIES)
def test_random_tokens_reference(family):
    model, x = model_of(family), build_inputs(family)
    cap = capture(model, x)
    inputs, rows = run_method("random_tokens", model, x, keys=["q7"])
    chunk = image_chunks(cap.layouts[0])[0]
    want = cap.embeds[0, chunk[ref_random(chunk.size, R, 0, "q7")]].numpy()
    np.testing.assert_array_equal(image_vectors(cap, inputs), want)
    other, _ = run_method("random_tokens", model, x, keys=["q8"])
    assert not np.array_equal(image_vectors(cap, other), want)  # the key seeds the draw


@pytest.mark.parametrize("family", FAMILIES)
def test_divprune_reference(family):
    model, x = model_of(family), build_inputs(family)
    cap = capture(model, x)
    chunk = image_chunks(cap.layouts[0])[0]
    feats = cap.embeds[0, chunk].numpy()
    inputs, _ = run_method("divprune", model, x)
    np.testing.assert_array_equal(image_vectors(cap, inputs), feats[ref_divprune(feats, R)])


@pytest.mark.parametrize("family", FAMILIES)
def test_cdpruner_reference(family):
    model, x = model_of(family), build_inputs(family)
    cap = capture(model, x)
    lay = cap.layouts[0]
    chunk = image_chunks(lay)[0]
    n = x["input_ids"].shape[1]
    vis = set(lay.visual_positions.tolist())
    question = [p for p in range(int(lay.visual_positions.max()) + 1, n) if p not in vis]
    img, txt = cap.embeds[0, chunk].numpy(), cap.embeds[0, question].numpy()
    inputs, _ = run_method("cdpruner", model, x)
    np.testing.assert_array_equal(image_vectors(cap, inputs), img[ref_cdpruner(img, txt, R)])
    # the relevance sign matters: the paper's sign picks another set on this input
    flipped = ref_cdpruner(img, -txt, R)
    assert not np.array_equal(flipped, ref_cdpruner(img, txt, R))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_downsample_reference(family):
    model, x = model_of(family), build_inputs(family)
    cap = capture(model, x)
    view = cap.layouts[0].views[0]
    grid = cap.embeds[0][torch.as_tensor(view.positions)].numpy()  # (h, w, D)
    budget = 4 if family == "llava" else R
    hp, wp = (2, 2)  # 4x4 grid at R=4; 3x4 grid at R=5: h' = round(sqrt(5*3/4)) = 2, w' = 5 // 2
    inputs, rows = run_method("downsample", model, x, budget=budget)
    np.testing.assert_allclose(image_vectors(cap, inputs), ref_pool(grid, hp, wp).reshape(hp * wp, -1), atol=1e-6)
    assert rows[0]["visual_tokens_kept"] == hp * wp
    if family == "qwen2_vl":  # a resized image's M-RoPE ids, starting where the grid started
        pid = inputs["position_ids"][:, 0]
        start = int(np.flatnonzero(inputs["attention_mask"][0].numpy())[0]) + 4  # 3 text + vision-start
        origin = cap.position_ids[:, 0, int(view.positions[0, 0])]
        for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            assert pid[:, start + k].tolist() == (origin + torch.tensor([0, i, j])).tolist()


def test_visionzip_reference():
    model = model_of("llava", "eager")  # eager CLIP returns its attention weights: an independent source
    x = build_inputs("llava")
    tower = model.model.vision_tower
    with torch.no_grad():
        out = tower(x["pixel_values"], output_hidden_states=True, output_attentions=True)
    layer = len(out.attentions) - 2  # vision_feature_layer -2: hidden_states[-2] is layer L-2's output
    hid = out.hidden_states[-2][0].numpy().astype(np.float64)  # (17, Dv): [CLS] + 16 patches
    cls_attn = out.attentions[layer][0, :, 0].sum(0).numpy()  # [CLS] row, summed over heads
    enc = getattr(tower, "vision_model", tower).encoder.layers[layer]
    with torch.no_grad():
        keys = enc.self_attn.k_proj(enc.layer_norm1(out.hidden_states[layer]))[0].numpy()  # layer input -> keys
    heads = model.config.vision_config.num_attention_heads
    metric = keys.reshape(keys.shape[0], heads, -1).mean(axis=1)
    dominant, contextual = 4, 1  # R = 5: round(5 * 27 / 32) = 4 incl. [CLS]
    dom = np.sort(np.concatenate([[0], np.argsort(-cls_attn[1:], kind="stable")[: dominant - 1] + 1]))
    rest = np.array([i for i in range(hid.shape[0]) if i not in set(dom)])
    m = metric[rest] / np.linalg.norm(metric[rest], axis=1, keepdims=True)
    step = max(1, rest.size // contextual)
    tgt = np.arange(0, rest.size, step)[:contextual]
    others = np.array([i for i in range(rest.size) if i not in set(tgt)])
    assign = np.argmax(m[others] @ m[tgt].T, axis=1)
    merged = [(hid[rest[t]] + hid[rest[others[assign == c]]].sum(0)) / (1 + (assign == c).sum())
              for c, t in enumerate(tgt)]
    feats = torch.tensor(np.concatenate([hid[dom], np.stack(merged)]), dtype=torch.float32)
    with torch.no_grad():
        want = model.model.multi_modal_projector(feats[None])[0].numpy()
    inputs, rows = run_method("visionzip", model, x)
    np.testing.assert_allclose(image_vectors(capture(model, x), inputs), want, atol=1e-5)
    assert rows[0]["visual_tokens_kept"] == R and rows[0]["dominant"] == 4 and rows[0]["contextual"] == 1


def test_visionzip_default_splits_match_the_official_ones():
    from crop.pruning.methods.visionzip import split_budget

    assert [split_budget(r) for r in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]


def test_visionzip_refuses_other_families_and_bad_options():
    with pytest.raises(ValueError, match="llava"):
        run_method("visionzip", model_of("qwen2_vl"), build_inputs("qwen2_vl"))
    with pytest.raises(ValueError, match="must equal R"):
        run_method("visionzip", model_of("llava"), build_inputs("llava"), dominant=3, contextual=3)
    with pytest.raises(ValueError, match="unknown option"):
        run_method("divprune", model_of("llava"), build_inputs("llava"), nope=1)


# ----------------------------------------------------------------------------- properties
@pytest.mark.parametrize("method, family", CASES)
def test_properties(method, family):
    model, x = model_of(family), build_inputs(family)
    with torch.no_grad():
        before = model(**x).logits
    cap = capture(model, x)
    with torch.no_grad(), get_method(method).load()(model, x, PruneRequest(budget=R, keys=["k"])) as run:
        inputs = run.inputs
        cached = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False)
    with torch.no_grad():
        after = model(**x).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # nothing left on the model
    assert torch.equal(cached, uncached) and cached.shape == (1, 3)
    row = run.rows()[0]
    kept = image_vectors(cap, inputs).shape[0]
    assert row["visual_tokens_in"] == cap.layouts[0].num_visual
    assert row["visual_tokens_kept"] == kept == row["visual_tokens_layer_avg"] and row["stages"] == [[0, kept]]
    assert kept == R if method != "downsample" else 1 <= kept <= R
    assert run.output_has_prompt is False
    # text tokens: same embeddings (and M-RoPE ids) in the same order
    lay = cap.layouts[0]
    text = [p for p in range(x["input_ids"].shape[1]) if p not in set(lay.visual_positions.tolist())]
    pre = [p for p in text if p < lay.visual_positions.min()]
    post = [p for p in text if p > lay.visual_positions.max()]
    got = inputs["inputs_embeds"][0]
    assert got.shape[0] == len(text) + kept
    torch.testing.assert_close(got[: len(pre)], cap.embeds[0, pre], rtol=0, atol=0)
    torch.testing.assert_close(got[got.shape[0] - len(post):], cap.embeds[0, post], rtol=0, atol=0)
    if family == "qwen2_vl":
        pid = inputs["position_ids"][:, 0]
        assert torch.equal(pid[:, : len(pre)], cap.position_ids[:, 0, pre])
        assert torch.equal(pid[:, pid.shape[1] - len(post):], cap.position_ids[:, 0, post])


def merge_rows(rows: list[dict], family: str) -> dict:
    """Left-pad batch-1 inputs of different lengths (and image sizes) into one ragged batch."""
    n = max(r["input_ids"].shape[1] for r in rows)

    def left(t):
        return torch.cat([torch.zeros(1, n - t.shape[1], dtype=t.dtype), t], dim=1)

    out = {"input_ids": torch.cat([left(r["input_ids"]) for r in rows]),
           "attention_mask": torch.cat([left(r["attention_mask"]) for r in rows])}
    if family == "llava_next":
        p = max(r["pixel_values"].shape[1] for r in rows)
        out["pixel_values"] = torch.cat([torch.nn.functional.pad(r["pixel_values"], (0, 0, 0, 0, 0, 0, 0, p - r["pixel_values"].shape[1]))
                                         for r in rows])
        out["image_sizes"] = torch.cat([r["image_sizes"] for r in rows])
    else:
        out["pixel_values"] = torch.cat([r["pixel_values"] for r in rows])
    if family == "qwen2_vl":
        out["image_grid_thw"] = torch.cat([r["image_grid_thw"] for r in rows])
        out["mm_token_type_ids"] = torch.cat([left(r["mm_token_type_ids"]) for r in rows])
    return out


@pytest.mark.parametrize("method, family", CASES)
def test_ragged_batch_equals_rows_alone(method, family):
    model = model_of(family)
    sizes = [(10, 19), (12, 12)] if family == "llava_next" else [(12, 16), (16, 12)] if family == "qwen2_vl" else [None, None]
    rows = [build_inputs(family, seed=s, sizes_hw=None if hw is None else [hw], prefix=p)
            for s, hw, p in zip((1, 2), sizes, (3, 6))]
    batch = merge_rows(rows, family)
    req = dict(budget=R, keys=["a", "b"])
    with torch.no_grad(), get_method(method).load()(model, batch, PruneRequest(**req)) as run:
        logits = model(**run.inputs).logits[:, -1]
        tokens = model.generate(**run.inputs, max_new_tokens=3, do_sample=False)
    assert run.inputs["attention_mask"][0].sum() != run.inputs["attention_mask"][1].sum()  # really ragged
    for b, x in enumerate(rows):
        with torch.no_grad(), get_method(method).load()(model, x, PruneRequest(budget=R, keys=[req["keys"][b]])) as one:
            ref_logits = model(**one.inputs).logits[:, -1]
            ref_tokens = model.generate(**one.inputs, max_new_tokens=3, do_sample=False)
        torch.testing.assert_close(logits[b: b + 1], ref_logits, rtol=1e-4, atol=1e-4)
        assert torch.equal(tokens[b: b + 1], ref_tokens), (b, tokens, ref_tokens)
        assert run.rows()[b]["visual_tokens_kept"] == one.rows()[0]["visual_tokens_kept"]


def test_registry_lines_name_the_families():
    for name, fams in APPLIES.items():
        assert METHODS[name].families == tuple(fams), name
        assert METHODS[name].stage == "before_llm" and METHODS[name].needs_budget


def test_crop_eval_runs_random_tokens(tmp_path, monkeypatch):
    """``crop eval --method random_tokens`` through the registry adapter on the generated benchmark."""
    import json
    import shutil
    from pathlib import Path

    from crop.cli import main
    from crop.eval.tiny import write_tiny_eval

    root = Path(__file__).resolve().parents[2]
    (tmp_path / "configs").mkdir()
    shutil.copy(root / "configs" / "eval-tiny.yaml", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    write_tiny_eval()
    argv = ["eval", "--config", "configs/eval-tiny.yaml", "--method", "random_tokens", "--budget", "8",
            "--benchmarks", "pope", "--output-dir", "runs/rt"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "runs/rt/summary.json").read_text())
    assert summary["benchmarks"]["pope"]["complete"]
    eff = [json.loads(line) for line in open(tmp_path / "runs/rt/pope/efficiency.jsonl")]
    assert len(eff) == summary["benchmarks"]["pope"]["n_questions"] > 0
    for row in eff:
        assert row["visual_tokens_in"] == 64 and row["visual_tokens_kept"] == 8
        assert row["visual_tokens_layer_avg"] == 8
