"""benchmarks/self_region_cost.py: the --tiny run (seconds) and its FLOPs arithmetic.

The arithmetic is checked against ``torch.utils.flop_counter.FlopCounterMode`` run on the real
transformers layers (Llama decoder with a gated MLP; CLIP encoder with a plain MLP and full
attention): the counter sees every matmul, including the n x n attention products.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_self_region_cost_tiny(tmp_path, monkeypatch):
    out = tmp_path / "cost.json"
    monkeypatch.setattr(sys, "argv", ["self_region_cost.py", "--tiny", "--json", str(out)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "benchmarks" / "self_region_cost.py"), run_name="__main__")
    assert done.value.code == 0
    result = json.loads(out.read_text())
    rows = {r["config"]: r for r in result["rows"]}
    assert set(rows) == {"none", "self", "ilp", "fastv"}
    assert rows["none"]["kept"] == 16 and rows["none"]["x_none"] == 1.0 and rows["ilp"]["x_ilp"] == 1.0
    kept = rows["self"]["kept"]
    assert 0 < kept <= result["config"]["budget"] and rows["ilp"]["kept"] == rows["fastv"]["kept"] == kept
    assert all(r["prefill_ms"] > 0 for r in rows.values())
    assert rows["self"]["select_ms"] > 0 and rows["fastv"]["select_ms"] > 0 and rows["ilp"]["select_ms"] is None
    unpruned, ilp, localizer, self_row, relative = (r["tflops"] for r in result["flops"])
    assert result["flops"][0]["x_unpruned"] == 1.0 and "localizer" in result["flops"][2]["config"]
    assert ilp < self_row < relative < unpruned < localizer
    assert self_row - ilp < 1e-3  # one attention row per head: ~0.04 GFLOPs at 7B shapes


def test_decoder_flops_equal_the_torch_flop_counter_on_llama_and_clip():
    import transformers as tf
    from torch.utils.flop_counter import FlopCounterMode

    from self_region_cost import decoder_flops

    torch.manual_seed(0)
    n = 11
    cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50)
    cfg._attn_implementation = "eager"
    llama = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        llama(torch.arange(n)[None], logits_to_keep=1)
    head = 2 * 64 * 50
    assert fc.get_total_flops() == decoder_flops(n, 64, 96, 32, 3, causal=False) + head

    vc = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                             image_size=12, patch_size=4)
    vc._attn_implementation = "eager"
    clip = tf.CLIPVisionModel(vc).eval()
    tokens = (12 // 4) ** 2 + 1
    patch_embed = 2 * 9 * (3 * 4 * 4) * 32  # the conv patch embedding: 9 patches x (3*4*4 -> 32)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        clip(pixel_values=torch.randn(1, 3, 12, 12))
    assert fc.get_total_flops() == decoder_flops(tokens, 32, 80, 32, 2, gated=False, causal=False) + patch_embed


def test_causal_pairs_halve_the_attention_term():
    from self_region_cost import decoder_flops

    n, d = 100, 8
    full = decoder_flops(n, d, 0, d, 1, causal=False)
    causal = decoder_flops(n, d, 0, d, 1)
    proj = n * (8 * d * d)
    assert full - proj == 4 * d * n * n and causal - proj == 4 * d * n * (n + 1) / 2
