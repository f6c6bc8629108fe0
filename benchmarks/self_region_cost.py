"""What reading the region from the VLM's own attention costs: ``self`` vs FastV vs ILP, one run.

    nice python benchmarks/self_region_cost.py                        # CPU fp32, 4 layers, ~3 min
    python benchmarks/self_region_cost.py --device cuda --layers 32    # full depth on a GPU
    python benchmarks/self_region_cost.py --tiny                       # seconds: the default test
    python benchmarks/self_region_cost.py --flops-only                 # the FLOPs table only

Model and prompt: ``benchmarks/methods_speed.py``'s (LLaVA-1.5-7B shapes through the real config
classes, random weights, ``--layers`` decoder layers, ``--vision-layers`` CLIP layers; 5 text
tokens, 576 image tokens, ``--text`` text tokens). Three pruned prefills at EQUAL kept tokens:

* ``self``: region chosen at layer S (= K - 1) from the last token's attention, budget mode
  with R = ``--budget`` (the exact keep set of the best rectangle within R cells), ILP from K;
* ``ilp``: ILP from K with that same region given (what a localizer would have produced);
* ``fastv``: FastV's top tokens by the layer K-1 row, as many as ``self`` kept;

plus ``none``. Times run from entering the method's ``with`` block (ILP's keep plan of the
given region, the hooks' selection work included) to the end of the prefill forward
(``model(**inputs)``: vision encoder, projector, decoder, LM head), warmed up once, measured
``--reps`` interleaved rounds in a fresh seeded order, medians reported; ratios are medians of
per-round paired ratios. ``self - ilp`` is what finding the region in-model costs over being
handed it; on a loaded CPU it drowns in noise, so ``select ms`` also times the selection hook
itself (self: attention row, block scores, rectangle search, keep plan; FastV: attention row,
top-R plan) in separate prefills. The localizer's own cost (not run here) is in the FLOPs table.

FLOPs table (``flops_table``; 2 FLOPs per multiply-add, matmuls and attention only): unpruned
LLaVA-1.5-7B (CLIP ViT-L/14-336 + projector + 32 layers), ILP at K with R tokens, the same plus
the Qwen2-VL-2B localizer (ViT 32 x 1280 on 4 x 1024 patches, merger, 28-layer 1536-wide LLM on
1024 image + 60 text tokens, 12 decoded tokens), and ``self`` (ILP + one attention row per head
at layer S). Real localization quality needs real weights: nothing here measures accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


# ----------------------------------------------------------------------------- FLOPs arithmetic
def decoder_flops(n: int, d: int, ff: int, kv_dim: int, layers: int, gated: bool = True, causal: bool = True) -> float:
    """Matmul FLOPs of ``layers`` transformer layers over ``n`` tokens.

    Per token: q and o projections ``2 * 2 d^2``, k and v ``2 * 2 d kv_dim``, MLP ``2 * 3 d ff``
    (gated) or ``2 * 2 d ff``; attention scores and values ``2 * 2 d`` per (query, key) pair,
    ``n (n + 1) / 2`` pairs when causal, ``n^2`` otherwise.
    """
    proj = 4 * d * d + 4 * d * kv_dim + (6 if gated else 4) * d * ff
    pairs = n * (n + 1) / 2 if causal else n * n
    return layers * (n * proj + 4 * d * pairs)


LLAVA = dict(d=4096, ff=11008, layers=32, vocab=32064, vis_tokens=576)
CLIP_L336 = dict(d=1024, ff=4096, layers=24, tokens=577)
QWEN2VL_2B = dict(vit_d=1280, vit_ff=5120, vit_layers=32, patches=4096, merged=1024,
                  d=1536, ff=8960, kv_dim=256, layers=28, vocab=151936, text=60, new_tokens=12)


def llava_vision_flops() -> float:
    c = CLIP_L336
    vit = decoder_flops(c["tokens"], c["d"], c["ff"], c["d"], c["layers"], gated=False, causal=False)
    projector = 2 * LLAVA["vis_tokens"] * (c["d"] * LLAVA["d"] + LLAVA["d"] * LLAVA["d"])
    return vit + projector


def llava_prefill_flops(n_text: int, kept: int | None, k: int) -> float:
    """Decoder prefill FLOPs: K layers on every token, the rest on text + ``kept`` visual tokens."""
    d, ff, L = LLAVA["d"], LLAVA["ff"], LLAVA["layers"]
    n = n_text + LLAVA["vis_tokens"]
    head = 2 * d * LLAVA["vocab"]  # last token only
    if kept is None:
        return decoder_flops(n, d, ff, d, L) + head
    return decoder_flops(n, d, ff, d, k) + decoder_flops(n_text + kept, d, ff, d, L - k) + head


def localizer_flops() -> float:
    q = QWEN2VL_2B
    vit = decoder_flops(q["patches"], q["vit_d"], q["vit_ff"], q["vit_d"], q["vit_layers"], gated=False, causal=False)
    merger = 2 * q["merged"] * (4 * q["vit_d"] * 4 * q["vit_d"] + 4 * q["vit_d"] * q["d"])
    n = q["merged"] + q["text"]
    llm = decoder_flops(n, q["d"], q["ff"], q["kv_dim"], q["layers"])
    per_new = q["layers"] * (4 * q["d"] ** 2 + 4 * q["d"] * q["kv_dim"] + 6 * q["d"] * q["ff"]) + 2 * q["d"] * q["vocab"]
    decode = q["new_tokens"] * per_new + q["layers"] * 4 * q["d"] * sum(n + i for i in range(q["new_tokens"]))
    return vit + merger + llm + 2 * q["d"] * q["vocab"] + decode


def self_row_flops(n_text: int, query_rows: int = 1) -> float:
    """The extra work of ``self`` at layer S: q of the query rows and their scores over every key
    (the keys are the layer's own cache entries); the block mapping and the 1,296 rectangle sums
    are a few thousand scalar operations."""
    d = LLAVA["d"]
    return query_rows * (2 * d * d + 2 * d * (n_text + LLAVA["vis_tokens"]))


def flops_table(n_text: int, kept: int, k: int) -> list[dict]:
    """Rows of the end-to-end table; S = K - 1, so option ``relative``'s generic pass runs the
    vision encoder and K decoder layers once per new image (then cached)."""
    vision = llava_vision_flops()
    none = vision + llava_prefill_flops(n_text, None, k)
    ilp = vision + llava_prefill_flops(n_text, kept, k)
    rows = [("unpruned LLaVA-1.5-7B", none), (f"ILP K={k}, {kept} visual tokens, region given", ilp),
            ("ILP + Qwen2-VL-2B localizer", ilp + localizer_flops()),
            ("self (region from layer S attention) + ILP", ilp + self_row_flops(n_text)),
            ("self + relative (new image: generic pass to S)", ilp + 2 * self_row_flops(n_text) + vision
             + decoder_flops(n_text + LLAVA["vis_tokens"], LLAVA["d"], LLAVA["ff"], LLAVA["d"], k))]
    return [{"config": name, "tflops": f / 1e12, "x_unpruned": f / none} for name, f in rows]


# ----------------------------------------------------------------------------- timing
def prefill_ms(model, spec, inputs, req, device: str) -> tuple[float, dict]:
    from methods_speed import sync

    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad(), spec.load()(model, inputs, req) as run:
        model(**run.inputs, use_cache=True)
        sync(device)
        ms = (time.perf_counter() - t0) * 1e3
    return ms, run.rows()[0]


def selection_ms(model, spec, inputs, req, device: str, reps: int) -> float:
    """Median time inside the selection hook per prefill (self: attention row, block scores,
    rectangle search, keep plan; FastV: attention row, top-R plan), in separate untimed prefills."""
    from crop.pruning.fastv import FastVHandle
    from crop.pruning.methods.self_region import SelfRegionHandle
    from methods_speed import sync

    cls, attr = (SelfRegionHandle, "_post_read") if spec.name == "self" else (FastVHandle, "_post_select")
    original = getattr(cls, attr)
    spent: list[float] = []

    def timed(handle, *a, **k):
        sync(device)
        t0 = time.perf_counter()
        out = original(handle, *a, **k)
        sync(device)
        spent.append((time.perf_counter() - t0) * 1e3)
        return out

    setattr(cls, attr, timed)  # bound at attach time: only the handles made below use it
    try:
        for _ in range(reps):
            prefill_ms(model, spec, inputs, req, device)
    finally:
        setattr(cls, attr, original)
    return statistics.median(spent)


def run(args: argparse.Namespace) -> dict:
    from crop.geometry import Region
    from crop.pruning.registry import PruneRequest, get_method
    from methods_speed import build_model, make_inputs

    torch.set_num_threads(args.threads)
    model = build_model(args)
    inputs = make_inputs(model, args)
    common = dict(layer=args.layer, image_sizes_wh=[(336, 336)], llava_geometry="center_crop")
    self_req = PruneRequest(budget=args.budget, options={"self_layer": args.self_layer}, **common)
    _, first = prefill_ms(model, get_method("self"), inputs, self_req, args.device)  # warm-up + the region
    region, kept = Region(*first["region_used"]), first["visual_tokens_kept"]
    configs = {
        "none": (get_method("none"), PruneRequest(**common)),
        "self": (get_method("self"), self_req),
        "ilp": (get_method("ilp"), PruneRequest(regions=[region], **common)),
        "fastv": (get_method("fastv"), PruneRequest(budget=kept, **common)),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    rows: dict[str, dict] = {}
    for name, (spec, req) in configs.items():  # warm-up, and the kept counts
        _, rows[name] = prefill_ms(model, spec, inputs, req, args.device)
    order = list(configs)
    rng = random.Random(args.seed)
    for _ in range(args.reps):
        rng.shuffle(order)
        for name in order:
            spec, req = configs[name]
            ms, _ = prefill_ms(model, spec, inputs, req, args.device)
            times[name].append(ms)
    kept_by = {name: rows[name]["visual_tokens_kept"] for name in configs}
    if not kept_by["self"] == kept_by["ilp"] == kept_by["fastv"] == kept:
        raise RuntimeError(f"kept visual tokens differ: {kept_by}")

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    select = {name: selection_ms(model, configs[name][0], inputs, configs[name][1], args.device, args.reps)
              for name in ("self", "fastv")}
    result_rows = [{"config": name, "kept": kept_by[name], "prefill_ms": statistics.median(times[name]),
                    "x_none": paired(name, "none"), "x_ilp": paired(name, "ilp"), "select_ms": select.get(name)}
                   for name in configs]
    return {"config": {k: v for k, v in vars(args).items()}, "region": list(region),
            "attention_share": first["attention_share"], "rows": result_rows,
            "self_minus_ilp_ms": statistics.median(s - i for s, i in zip(times["self"], times["ilp"])),
            "flops": flops_table(args.text + 5, kept, args.layer)}


def table(result: dict) -> str:
    c = result["config"]
    lines = [f"self vs FastV vs ILP (region given) at equal kept tokens; {c['device']} {c['dtype']}, "
             f"{c['layers']} decoder layers, K={c['layer']}, S={c['self_layer']}, R={c['budget']}, "
             f"{c['reps']} rounds (medians; ratios: medians of per-round pairs)",
             f"self's region {result['region']} (attention share {result['attention_share']:.3f}; random weights)",
             f"{'config':8} {'kept':>5} {'prefill ms':>11} {'x none':>7} {'x ilp':>7} {'select ms':>10}"]
    for r in result["rows"]:
        sel = "" if r["select_ms"] is None else f"{r['select_ms']:.2f}"
        lines.append(f"{r['config']:8} {r['kept']:>5} {r['prefill_ms']:>11.1f} {r['x_none']:>7.3f} "
                     f"{r['x_ilp']:>7.3f} {sel:>10}")
    lines.append(f"self - ilp: {result['self_minus_ilp_ms']:+.2f} ms per prefill (median of round pairs)")
    lines.append("")
    lines.append(flops_text(result["flops"]))
    return "\n".join(lines)


def flops_text(rows: list[dict]) -> str:
    out = [f"{'end-to-end FLOPs (LLaVA-1.5-7B prefill, 32 layers)':52} {'TFLOPs':>7} {'x unpruned':>10}"]
    for r in rows:
        out.append(f"{r['config']:52} {r['tflops']:>7.2f} {r['x_unpruned']:>10.3f}")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default 4; tiny 4; 32 = full depth)")
    p.add_argument("--vision-layers", type=int, default=None, help="CLIP layers (default 2 on CPU, 24 on CUDA)")
    p.add_argument("--layer", type=int, default=2, help="K, the first pruned layer")
    p.add_argument("--self-layer", type=int, default=None, help="S < K (default K - 1)")
    p.add_argument("--budget", type=int, default=None, help="R visual tokens (default 64; tiny 4)")
    p.add_argument("--text", type=int, default=40, help="text tokens after the image")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 5; tiny 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seed of the per-round order")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, seconds (the default test suite runs this)")
    p.add_argument("--flops-only", action="store_true", help="print the FLOPs table and exit (no model)")
    p.add_argument("--json", default=None, help="write the result here")
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    a.layers = a.layers or 4
    a.vision_layers = a.vision_layers or (24 if cuda else 2)
    a.self_layer = a.layer - 1 if a.self_layer is None else a.self_layer
    a.budget = a.budget or (4 if a.tiny else 64)
    a.reps = a.reps or (1 if a.tiny else 5)
    a.batch = 1
    if a.tiny:
        a.text = min(a.text, 8)
    if not 0 <= a.self_layer < a.layer < a.layers:
        p.error(f"need 0 <= S < K < layers, got S={a.self_layer}, K={a.layer}, layers={a.layers}")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.flops_only:
        print(flops_text(flops_table(args.text + 5, args.budget, args.layer)))
        return 0
    result = run(args)
    print(table(result), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
