"""PLC speed at LLaVA-1.5-7B shapes (random weights): module throughput, LLM prefill 68 vs 576 tokens.

    python benchmarks/plc_speed.py                     # CPU, 2 Llama-7B-shaped layers
    python benchmarks/plc_speed.py --layers 32 --device cuda --dtype bfloat16

Prints, in one run: PLC images/s on (B, 576, 4096) projector outputs, and the prefill time of a
Vicuna-7B-shaped decoder (hidden 4096, 32 heads, MLP 11008; ``--layers`` of them) on a prompt of
``--text-tokens`` text tokens plus 576 (LLaVA-1.5) or 68 (PLC) visual tokens, with their ratio.
Weights are random: only shapes matter for time. Fewer layers scale the prefill time roughly
linearly; the ratio is what to read.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (32 for the full 7B)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    from crop.models.plc import PLC, PLCConfig

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    d = 4096
    plc = PLC(PLCConfig(dim=d)).to(device, dtype).eval()
    x = torch.randn(args.batch, 576, d, device=device, dtype=dtype)
    regions = torch.tensor([[2, 1, 5, 6]] * args.batch, device=device)
    masks = plc.masks_from_regions(regions)
    with torch.no_grad():
        t_plc = timed(lambda: plc(x, masks), args.repeats, device)

    cfg = LlamaConfig(hidden_size=d, intermediate_size=11008, num_hidden_layers=args.layers,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                      max_position_embeddings=4096)
    with torch.device(device):
        llm = LlamaForCausalLM(cfg).to(dtype).eval()
    res = {}
    for n_vis in (576, 68):
        emb = torch.randn(args.batch, args.text_tokens + n_vis, d, device=device, dtype=dtype)
        with torch.no_grad():
            res[n_vis] = timed(lambda: llm(inputs_embeds=emb, use_cache=True, logits_to_keep=1),
                               args.repeats, device)

    print(f"device {device} dtype {args.dtype} batch {args.batch} threads {torch.get_num_threads()}")
    print(f"PLC module (B, 576, 4096) -> (B, 68, 4096): {t_plc * 1e3:8.2f} ms/batch, "
          f"{args.batch / t_plc:8.1f} images/s")
    print(f"LLM prefill, {args.layers} Vicuna-7B-shaped layers, {args.text_tokens} text tokens:")
    print(f"  576 visual tokens: {res[576] * 1e3:8.1f} ms")
    print(f"   68 visual tokens: {res[68] * 1e3:8.1f} ms")
    print(f"  prefill speed-up 576 -> 68: x{res[576] / res[68]:.2f}; "
          f"PLC cost / prefill saved: {t_plc / (res[576] - res[68]):.3f}")


if __name__ == "__main__":
    main()
