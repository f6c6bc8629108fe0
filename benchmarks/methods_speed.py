"""Every registered pruning method at LLaVA-1.5-7B shapes: prefill, decode, KV cache, peak memory.

    nice python benchmarks/methods_speed.py --layers 2                 # CPU fp32, random weights
    python benchmarks/methods_speed.py --device cuda                   # 32 layers: the GPU suite's run
    python benchmarks/methods_speed.py --tiny                          # seconds: the default test
    python benchmarks/methods_speed.py --layers 2 --json runs/methods_speed.json

Methods: every name of ``crop.pruning.registry.available_methods()`` (a method whose module is
not written yet is left out, so new methods appear when they land), each at every ``--budgets``
R, through the registry's calling convention exactly as ``crop eval`` uses it
(``with spec.load()(model, inputs, request) as run: model.generate(**run.inputs)``); ``none`` is
measured in the same run and every ratio is against it. Region methods (``ilp``, ``prune``) get
a fixed centre region (blocks 2..5 of 8) with the budget rectangle of R.

Model: ``LlavaForConditionalGeneration`` from the real config classes, random weights: LLaVA-1.5-7B's
language model (Llama, d = 4096, 32 heads, FFN 11008, vocabulary 32064) cut to ``--layers``
decoder layers, CLIP ViT-L/14-336 (576 visual tokens; ``--vision-layers`` encoder layers, 24 in
the real model; 2 by default on CPU, where the encoder otherwise dominates every time). One
prompt: 5 text tokens, the 576 image tokens, ``--text`` text tokens; batch ``--batch``.

Figures (one row per method and R):

- ``prefill_ms``: from entering the method's ``with`` block (its selection, e.g. the extra
  encoder pass of the before-the-LLM methods, included) to the first generated token's logits;
- ``decode_ms``: per generated token after that (``--new-tokens`` tokens, forced: no EOS);
  both read by a logits processor that stamps the time at every step of one ``generate``;
  median over ``--reps`` interleaved rounds after one warm-up per configuration;
- ``kv_bytes``: the KV cache after the prefill (all layers, keys + values). Methods that drop
  tokens at layer K keep the full-length cache of layers 0..K-1: counted as it is;
- ``peak_bytes``: CUDA ``torch.cuda.max_memory_allocated`` above the memory allocated before the
  call; CPU: peak RSS above the RSS before the call (``benchmarks/ilp_speed.py``'s ``RssPeak``
  sampler, with its limits: run with ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment for
  CPU memory figures, so that freed tensors leave the RSS; the table header says which mode ran),
  both over one untimed prefill + decode;
- ``kept`` / ``layer_avg``: the method's own report rows (the two budget conventions).

On a shared CPU compare rows of one run, never runs; the ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

IMAGE_ID = 32000  # LLaVA-1.5's <image> id (vocabulary 32064 with padding)


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    if args.tiny:
        text = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=args.layers,
                              num_attention_heads=4, num_key_value_heads=4, vocab_size=IMAGE_ID + 64,
                              max_position_embeddings=4096)
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=56, patch_size=14, projection_dim=32)
    else:
        text = tf.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.layers,
                              num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                              max_position_embeddings=4096, rms_norm_eps=1e-5)
        vision = tf.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=args.vision_layers,
                                     num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    cfg = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_ID,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = tf.LlavaForConditionalGeneration(cfg).to(device=args.device, dtype=getattr(torch, args.dtype))
    model.set_attn_implementation("sdpa")
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model.eval()


def make_inputs(model: torch.nn.Module, args: argparse.Namespace) -> dict:
    vc = model.config.vision_config
    n_vis = (vc.image_size // vc.patch_size) ** 2
    g = torch.Generator().manual_seed(1)
    text = torch.randint(3, 32000, (args.batch, 5 + args.text), generator=g)
    image = torch.full((args.batch, n_vis), IMAGE_ID)
    ids = torch.cat([text[:, :5], image, text[:, 5:]], dim=1)
    pixels = torch.randn(args.batch, 3, vc.image_size, vc.image_size, generator=g)
    return {"input_ids": ids.to(args.device), "attention_mask": torch.ones_like(ids).to(args.device),
            "pixel_values": pixels.to(args.device, getattr(torch, args.dtype))}


def request(spec: Any, budget: int | None, args: argparse.Namespace, batch: int):
    from crop.geometry.regions import Region
    from crop.pruning.registry import PruneRequest

    regions = [Region(2, 2, 5, 5)] * batch if spec.needs_region else None
    return PruneRequest(budget=budget, layer=args.layer, regions=regions,
                        image_sizes_wh=[(336, 336)] * batch, llava_geometry="center_crop",
                        seed=0, keys=[f"s{b}" for b in range(batch)])


class StepClock:
    """A logits processor that stamps the time of every decoding step (after each forward)."""

    def __init__(self, device: str):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cache_bytes(cache: Any) -> int:
    """Keys + values of every layer of a DynamicCache (layer objects or the older key/value lists)."""
    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for lyr in layers:
            for t in (getattr(lyr, "keys", None), getattr(lyr, "values", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total
    for t in list(getattr(cache, "key_cache", [])) + list(getattr(cache, "value_cache", [])):
        total += t.numel() * t.element_size()
    return total


def timed_generate(model, spec, inputs, req, args) -> dict:
    from transformers import LogitsProcessorList

    clock = StepClock(args.device)
    n = args.new_tokens
    sync(args.device)
    t0 = time.perf_counter()
    with torch.no_grad(), spec.load()(model, inputs, req) as run:
        model.generate(**run.inputs, max_new_tokens=n + 1, min_new_tokens=n + 1, do_sample=False,
                       logits_processor=LogitsProcessorList([clock]))
    rows = run.rows()
    s = clock.stamps
    return {"prefill_ms": (s[0] - t0) * 1e3, "decode_ms": (s[-1] - s[0]) * 1e3 / max(1, len(s) - 1), "rows": rows}


def memory_pass(model, spec, inputs, req, args) -> dict:
    """KV bytes after the prefill, and the peak memory of one prefill + decode (untimed)."""
    from crop.compat import cache_of_output

    with torch.no_grad(), spec.load()(model, inputs, req) as run:
        out = model.generate(**run.inputs, max_new_tokens=1, do_sample=False, return_dict_in_generate=True)
    kv = cache_bytes(cache_of_output(out))
    n = args.new_tokens + 1
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad(), spec.load()(model, inputs, req) as run:
            model.generate(**run.inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        from benchmarks.ilp_speed import RssPeak

        with RssPeak() as rss:
            with torch.no_grad(), spec.load()(model, inputs, req) as run:
                model.generate(**run.inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        peak = rss.above
    return {"kv_bytes": kv, "peak_bytes": int(peak)}


def configurations(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    from crop.pruning.registry import available_methods

    names = [m for m in available_methods() if m != "none"]
    if args.methods:
        names = [m for m in names if m in args.methods]
    return [("none", None)] + [(m, r) for m in names for r in args.budgets]


def run(args: argparse.Namespace) -> dict:
    from crop.pruning.registry import get_method

    torch.set_num_threads(args.threads)
    model = build_model(args)
    inputs = make_inputs(model, args)
    configs = configurations(args)
    results: dict[tuple, dict] = {}
    for name, r in configs:  # warm-up, and weed out methods that fail here
        spec = get_method(name)
        try:
            timed_generate(model, spec, inputs, request(spec, r, args, args.batch), args)
            results[name, r] = {"prefill": [], "decode": []}
        except Exception as exc:  # a method that cannot run at these shapes: reported, not fatal
            results[name, r] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    live = [c for c in configs if "error" not in results[c]]
    for rep in range(args.reps):
        order = live[rep % len(live):] + live[: rep % len(live)] if live else []  # rotate the order per round
        for name, r in order:
            spec = get_method(name)
            got = timed_generate(model, spec, inputs, request(spec, r, args, args.batch), args)
            results[name, r]["prefill"].append(got["prefill_ms"])
            results[name, r]["decode"].append(got["decode_ms"])
            results[name, r]["rows"] = got["rows"]
    for name, r in live:
        spec = get_method(name)
        results[name, r].update(memory_pass(model, spec, inputs, request(spec, r, args, args.batch), args))
    rows = []
    for name, r in configs:
        res = results[name, r]
        row: dict[str, Any] = {"method": name, "R": r}
        if "error" in res:
            rows.append({**row, "error": res["error"]})
            continue
        rep0 = res["rows"][0]
        row.update(kept=rep0.get("visual_tokens_kept"), layer_avg=rep0.get("visual_tokens_layer_avg"),
                   prefill_ms=statistics.median(res["prefill"]), decode_ms=statistics.median(res["decode"]),
                   kv_bytes=res["kv_bytes"], peak_bytes=res["peak_bytes"])
        rows.append(row)
    base = rows[0] if "error" not in rows[0] else None
    for row in rows:
        if base is None or "error" in row:
            continue
        for key, ratio in (("prefill_ms", "prefill_x"), ("decode_ms", "decode_x"), ("kv_bytes", "kv_x"),
                           ("peak_bytes", "peak_x")):
            row[ratio] = row[key] / base[key] if base[key] else None
    shapes = "tiny" if args.tiny else f"LLaVA-1.5-7B text, {args.layers} layers; CLIP-L/14-336, {args.vision_layers} layers"
    return {"config": {**vars(args), "shapes": shapes, "visual_tokens": int((inputs["input_ids"] == IMAGE_ID).sum(1)[0]),
                       "torch": torch.__version__, "device_name": device_name(args.device),
                       "peak_mode": peak_mode(args.device)}, "rows": rows}


def peak_mode(device: str) -> str:
    if device.startswith("cuda"):
        return "torch.cuda.max_memory_allocated above the call's start"
    threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    return (f"RSS above the call's start, MALLOC_MMAP_THRESHOLD_={threshold}" if threshold
            else "RSS above the call's start (glibc's dynamic mmap threshold: figures may be low)")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def table(result: dict) -> str:
    cols = ["method", "R", "kept", "layer_avg", "prefill_ms", "decode_ms", "kv_mib", "peak_mib",
            "prefill_x", "decode_x", "kv_x", "peak_x"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['method']} | {row['R']} | error: {row['error']} |")
            continue
        cells = []
        for c in cols:
            v = row.get(c.replace("_mib", "_bytes"))
            if c.endswith("_mib") and v is not None:
                v = v / 2**20
            cells.append("-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    c = result["config"]
    head = (f"methods_speed: {c['shapes']}; {c['visual_tokens']} visual + {5 + c['text']} text tokens, batch {c['batch']}, "
            f"{c['new_tokens']} decode tokens, K={c['layer']}, {c['dtype']} on {c['device_name']}; "
            f"median of {c['reps']} rounds; ratios vs none in this run; peak: {c['peak_mode']}")
    return head + "\n" + "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers of the 7B-shaped language model (default: 2 on CPU, 32 on CUDA; tiny 8)")
    p.add_argument("--vision-layers", type=int, default=None, help="CLIP encoder layers (24 real; default 2 on CPU, 24 on CUDA)")
    p.add_argument("--layer", type=int, default=None, help="K for in-LLM methods (default min(2, layers - 1))")
    p.add_argument("--budgets", type=int, nargs="+", default=None, help="R values (default 64 128 192)")
    p.add_argument("--methods", nargs="+", default=None, help="only these registry methods (none always runs)")
    p.add_argument("--text", type=int, default=40, help="text tokens after the image")
    p.add_argument("--batch", type=int, default=1, help="rows per batch (identical prompts)")
    p.add_argument("--new-tokens", type=int, default=None, help="decoded tokens (default 8; tiny 3)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 3; tiny 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, seconds (the default test suite runs this)")
    p.add_argument("--json", default=None, help="write the rows and the configuration to this path")
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    a.layers = a.layers or (8 if a.tiny else 32 if cuda else 2)  # tiny 8: PDrop / SparseVLM stages fit
    a.vision_layers = a.vision_layers or (24 if cuda else 2)
    a.layer = a.layer if a.layer is not None else max(1, min(2, a.layers - 1))
    a.budgets = a.budgets or ([4, 8] if a.tiny else [64, 128, 192])
    a.new_tokens = a.new_tokens or (3 if a.tiny else 8)
    a.reps = a.reps or (1 if a.tiny else 3)
    if a.tiny:
        a.text = min(a.text, 8)
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(table(result), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
