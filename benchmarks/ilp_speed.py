"""ILP vs FastV vs no pruning at LLaVA-1.5-7B text shapes (random weights), one run, one table.

    python benchmarks/ilp_speed.py --layers 3 --device cpu --dtype float32      # CPU, minutes
    python benchmarks/ilp_speed.py --layers 32 --device cuda --dtype bfloat16   # full depth on a GPU

Sequence: ``--text`` text tokens with a 24x24 visual grid (576 tokens) after the first 5.
ILP keeps a ~R-token rectangle (crop.pruning budget rule) from layer K, FastV keeps the top-R by
layer K-1 attention. Columns: prefill and per-token decode time (median), KV-cache bytes after
prefill (measured from the cache and the analytical value), peak memory (CUDA only), and the
measured/ideal ratio: (time / no-pruning time) / (FLOPs / no-pruning FLOPs) for the prefill.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from crop.pruning import attach_fastv, attach_ilp, region_keep_plan
from crop.pruning.layout import SampleLayout, ViewGrid

D, HEADS, FF, VOCAB, SIDE = 4096, 32, 11008, 32000, 24


def build(layers: int, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=HEADS, intermediate_size=FF,
        num_hidden_layers=layers, vocab_size=VOCAB, max_position_embeddings=4096,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


def layout(n_text: int) -> SampleLayout:
    start = 5
    pos = np.arange(start, start + SIDE * SIDE)
    view = ViewGrid("llava", 0, pos.reshape(SIDE, SIDE), None, {"side": SIDE})
    return SampleLayout("llava", n_text + SIDE * SIDE, pos, (view,), np.zeros(0, np.int64), (0,))


def prefill_flops(n_full: int, n_keep: int, layers: int, k: int) -> float:
    """Matmul FLOPs of the prefill: projections + MLP per token, causal attention per pair."""
    per_tok = 2 * (4 * D * D + 3 * D * FF)

    def layer(n):
        return per_tok * n + 2 * n * n * D  # QK^T and AV over the causal half: 2 * (n^2/2) * D * 2

    return k * layer(n_full) + (layers - k) * layer(n_keep)


def kv_bytes(cache) -> int:
    return sum(l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size() for l in cache.layers)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(model, ids, device, reps: int, decode: int):
    pre, dec, kv, peak = [], [], 0, 0
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        sync(device)
        pre.append(time.perf_counter() - t)
        cache, kv = out.past_key_values, kv_bytes(out.past_key_values)
        nxt = out.logits[:, -1:].argmax(-1)
        mask = torch.ones(1, ids.shape[1], dtype=torch.long, device=ids.device)
        t = time.perf_counter()
        for _ in range(decode):
            mask = torch.cat([mask, mask[:, :1]], 1)
            out = model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1:].argmax(-1)
        sync(device)
        dec.append((time.perf_counter() - t) / decode)
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated()
    return statistics.median(pre), statistics.median(dec), kv, peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=3, help="decoder layers (32 = full LLaVA-1.5-7B depth)")
    ap.add_argument("--k", type=int, default=2, help="pruning layer K (paper: 2); must be < --layers")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--text", type=int, default=35, help="text tokens around the 576 visual tokens")
    ap.add_argument("--budgets", type=int, nargs="+", default=[192, 128, 64])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode", type=int, default=8, help="decode steps timed per repetition")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    a = ap.parse_args(argv)
    if not 1 <= a.k < a.layers:
        ap.error(f"--k must be in 1..{a.layers - 1}")
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    model = build(a.layers, a.device, dtype)
    lay = layout(a.text)
    n = lay.seq_len
    ids = torch.randint(10, VOCAB, (1, n), device=a.device)
    ids[0, lay.visual_positions] = 7  # placeholder id; the model is text-only here
    elem = torch.finfo(dtype).bits // 8
    rows = []
    with torch.no_grad():
        model(input_ids=ids[:, :16], use_cache=True)  # warm-up
        configs = [("none", None, None)]
        for r in a.budgets:
            configs += [(f"ILP R={r}", "ilp", r), (f"FastV R={r}", "fastv", r)]
        for name, kind, r in configs:
            handle = None
            if kind == "ilp":
                plan = region_keep_plan([lay], [(0.3, 0.3, 0.7, 0.7)], llava_geometry="resize", budget=r)
                handle = attach_ilp(model, plan, layer=a.k)
                kept = plan.visual_kept[0]
            elif kind == "fastv":
                handle = attach_fastv(model, [lay], budget=r, layer=a.k)
                kept = r
            else:
                kept = SIDE * SIDE
            try:
                pre, dec, kv, peak = measure(model, ids, a.device, a.reps, a.decode)
            finally:
                if handle is not None:
                    handle.remove()
            n_keep = n - (SIDE * SIDE - kept)
            k = a.k if kind else a.layers
            kv_ideal = 2 * D * elem * (k * n + (a.layers - k) * n_keep)
            rows.append((name, kept, pre, dec, kv, kv_ideal, peak, prefill_flops(n, n_keep, a.layers, k)))
    base_t, base_f = rows[0][2], rows[0][7]
    print(f"layers={a.layers} K={a.k} device={a.device} dtype={a.dtype} tokens={n} (576 visual)")
    hdr = f"{'config':<12}{'kept':>6}{'prefill ms':>12}{'decode ms/tok':>15}{'KV MiB':>9}{'KV ideal':>10}{'peak MiB':>10}{'t ratio':>9}{'FLOP ratio':>11}{'meas/ideal':>11}"
    print(hdr)
    for name, kept, pre, dec, kv, kvi, peak, fl in rows:
        tr, fr = pre / base_t, fl / base_f
        pk = f"{peak / 2**20:.0f}" if peak else "-"
        print(f"{name:<12}{kept:>6}{pre * 1e3:>12.1f}{dec * 1e3:>15.2f}{kv / 2**20:>9.2f}{kvi / 2**20:>10.2f}{pk:>10}{tr:>9.3f}{fr:>11.3f}{tr / fr:>11.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
