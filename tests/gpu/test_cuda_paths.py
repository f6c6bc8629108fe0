"""CUDA-only paths (issue 19): device placement of the pruning plug-ins, bf16, the fused SDPA
kernels under ILP, the localizer on its own CUDA stream (alone and in ``crop eval --ahead-of-time``),
CUDA-event timing in crop eval's probe, PLC in bf16.

Marked ``gpu``: the default suite deselects them; ``benchmarks/gpu_suite.py`` runs them on the
device with ``-m gpu --noconftest`` (these tests need no fixture from a conftest, and the
repository's conftest imports Beam, which the device does not have). Without CUDA they skip.
``CROP_GPU_TEST_DEVICE=cpu`` runs them on the CPU instead -- only to check the tests themselves;
the CUDA-specific parts (streams, events, fused kernels) then degrade to their CPU forms.

References: the same model on the CPU in fp32 (device-independence), fp32 for bf16, the math
SDPA kernel for the fused ones (PyTorch documents ``SDPBackend.MATH`` as the reference
implementation), the localizer called directly for the stream path, hand-computed KV bytes.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

DEVICE = os.environ.get("CROP_GPU_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")]

IMG = 200  # image token id of the tiny models (inside their 256-token vocabulary)
HIDDEN, LAYERS, HEADS = 64, 4, 4


def _llama(dtype=torch.float32, device="cpu"):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=HEADS, vocab_size=256, max_position_embeddings=1024,
                      attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval().to(device, dtype)
    model.config.image_token_id = IMG
    return model


def _prompt(batch: int = 1):
    """5 text tokens, a 24x24 LLaVA-1.5 grid of image tokens, 20 text tokens; its layouts."""
    from transformers import CLIPVisionConfig, LlavaConfig

    from crop.pruning.layout import token_layout

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 190, (batch, 5 + 576 + 20), generator=g)  # (B, N)
    ids[:, 5:581] = IMG
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(image_size=336, patch_size=14), image_token_id=IMG,
                      vision_feature_select_strategy="default")
    return ids, token_layout(cfg, {"input_ids": ids})


def _prefill(model, ids, method: str, layouts, budget: int = 64):
    """Last-token logits (float32, CPU) and the KV bytes after one pruned prefill."""
    from crop.compat import cache_of_output
    from crop.eval.efficiency import cache_bytes
    from crop.pruning import attach_fastv, attach_ilp, region_keep_plan

    if method == "ilp":
        b = len(layouts)
        plan = region_keep_plan(layouts, [(0.3, 0.3, 0.7, 0.7)] * b, image_sizes_wh=[(336, 336)] * b,
                                llava_geometry="resize", budget=budget)
        handle = attach_ilp(model, plan, layer=2)
    else:
        handle = attach_fastv(model, layouts, budget=budget, layer=2)
    device = next(model.parameters()).device
    with torch.inference_mode(), handle:
        out = model(input_ids=ids.to(device), use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].float().cpu(), cache_bytes(cache_of_output(out))


def _cos(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("method", ["ilp", "fastv"])
def test_pruning_on_the_device_matches_cpu(method):
    """Index tensors, masks and the cache on the device: fp32 results equal the CPU's."""
    ids, layouts = _prompt(batch=2)
    ref, ref_kv = _prefill(_llama(), ids, method, layouts)
    got, kv = _prefill(_llama(device=DEVICE), ids, method, layouts)
    assert kv == ref_kv
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)


def test_bf16_ilp_follows_fp32_and_halves_the_cache():
    ids, layouts = _prompt()
    ref, ref_kv = _prefill(_llama(device=DEVICE), ids, "ilp", layouts)
    got, kv = _prefill(_llama(torch.bfloat16, DEVICE), ids, "ilp", layouts)
    assert kv * 2 == ref_kv  # same positions kept, 2-byte elements
    assert _cos(got, ref) > 0.99


def test_fused_sdpa_kernels_agree_with_math_under_ilp():
    """Prefill + 3 decode steps under ILP with each SDPA backend alone. The math kernel must run;
    of the fused ones at least one must run (flash cannot take an explicit mask, the
    memory-efficient kernel can) and agree with math to bf16 precision."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from crop.compat import cache_kwarg, cache_of_output
    from crop.pruning import attach_ilp, region_keep_plan

    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    model = _llama(dtype, DEVICE)
    ids, layouts = _prompt()
    ids = ids.to(DEVICE)
    plan = region_keep_plan(layouts, [(0.3, 0.3, 0.7, 0.7)], image_sizes_wh=[(336, 336)], llava_geometry="resize",
                            budget=64)

    def run(backend):
        with sdpa_kernel([backend]), torch.inference_mode(), attach_ilp(model, plan, layer=2):
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache, logits = cache_of_output(out), [out.logits[:, -1].float().cpu()]
            mask = torch.ones_like(ids)
            nxt = out.logits[:, -1:].argmax(-1)
            for _ in range(3):
                mask = torch.cat([mask, mask[:, :1]], 1)  # (1, N + step)
                out = model(input_ids=nxt, attention_mask=mask, use_cache=True, logits_to_keep=1,
                            **{cache_kwarg(): cache})
                logits.append(out.logits[:, -1].float().cpu())
                nxt = out.logits[:, -1:].argmax(-1)
        return torch.stack(logits)

    ref = run(SDPBackend.MATH)
    ran = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            ran[backend.name] = run(backend)
        except RuntimeError as err:  # "No available kernel": this backend cannot serve these inputs
            if "kernel" not in str(err).lower():
                raise
    if DEVICE != "cuda":
        pytest.skip(f"fused SDPA kernels are CUDA kernels; on {DEVICE} ran: {sorted(ran)}")
    assert ran, "neither the flash nor the memory-efficient SDPA kernel could run under ILP"
    for name, got in ran.items():
        assert _cos(got, ref) > 0.99, name


def test_predict_ahead_on_its_own_stream_gives_the_direct_regions():
    from PIL import Image

    from crop.models.ahead import predict_ahead
    from crop.models.localizer import TinySpec, build_tiny_localizer

    loc = build_tiny_localizer(TinySpec(seed=3))
    loc.model.to(DEVICE)
    images = [Image.new("RGB", (112, 112), (30 * i, 90, 200 - 30 * i)) for i in range(6)]
    questions = [f"Where is the object {i}?" for i in range(6)]
    batches = [(images[i:i + 2], questions[i:i + 2]) for i in range(0, 6, 2)]
    want = [p.raw for p in loc.predict_detailed(images, questions, batch_size=2)]
    got = [p.raw for _, preds in predict_ahead(loc, batches, depth=1, cuda_stream=True, detailed=True) for p in preds]
    assert got == want


def test_latency_probe_reads_cuda_events():
    """crop eval's probe on the device: encoder and cache spans from CUDA events, KV bytes by hand."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from crop.eval.efficiency import LatencyProbe

    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, image_size=16, patch_size=4),
                      text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                              num_attention_heads=4, num_key_value_heads=4, vocab_size=256,
                                              max_position_embeddings=512),
                      image_token_id=IMG, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval().to(DEVICE)
    ids = torch.randint(1, 190, (1, 3 + 16 + 4))  # (1, N): 4x4 image grid
    ids[0, 3:19] = IMG
    pixels = torch.randn(1, 3, 16, 16)
    with LatencyProbe(model) as probe, torch.inference_mode():
        probe.start()
        model.generate(input_ids=ids.to(DEVICE), pixel_values=pixels.to(DEVICE), max_new_tokens=4, min_new_tokens=4,
                       do_sample=False, pad_token_id=0)
        row = probe.stop()
    assert row["forward_calls"] == 4
    assert 0 < row["encode_s"] < row["prefill_s"] and 0 < row["kv_cache_s"] < row["total_s"]
    # layers x (K, V) x hidden x fp32 bytes x positions (prompt + new - 1: the last token is never fed)
    assert row["kv_cache_bytes"] == 3 * 2 * 32 * 4 * (ids.shape[1] + 4 - 1)


def test_plc_in_bf16_on_the_device_follows_fp32_cpu():
    from crop.models.plc import PLC, PLCConfig

    torch.manual_seed(0)
    plc = PLC(PLCConfig(dim=64)).eval()
    x = torch.randn(2, 576, 64)  # (B, 576, D)
    masks = plc.masks_from_regions(torch.tensor([[2, 1, 5, 6], [0, 0, 3, 3]]))
    with torch.inference_mode():
        ref = plc(x, masks)
        dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
        got = plc.to(DEVICE, dtype)(x.to(DEVICE, dtype), masks.to(DEVICE)).float().cpu()
    assert got.shape == ref.shape == (2, plc.config.num_output_tokens, 64)
    assert _cos(got, ref) > 0.99


def test_crop_eval_ahead_of_time_on_the_device(tmp_path):
    """``crop eval --ahead-of-time`` on the device: the localizer on its own CUDA stream gives the
    same regions and answers as the serial run, and every row has its CUDA-event phase figures."""
    import dataclasses
    import importlib.util
    import json
    from pathlib import Path

    from PIL import Image

    from crop.eval.runner import EvalConfig, run_eval
    from crop.eval.scorers.common import read_jsonl
    from crop.models.localizer import TinySpec, build_tiny_localizer

    spec = importlib.util.spec_from_file_location(  # tests/eval's tiny LLaVA builder, without its fixtures' conftest
        "eval_tiny_models", Path(__file__).resolve().parents[1] / "eval" / "conftest.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    llava = tiny.build_tiny_llava(tmp_path / "llava")
    build_tiny_localizer(TinySpec(seed=3)).save_pretrained(str(tmp_path / "loc"))
    (tmp_path / "img").mkdir()
    rows = []
    for i, (w, h) in enumerate([(160, 96), (48, 80), (128, 128)]):
        Image.new("RGB", (w, h), (60 * i, 100, 200 - 60 * i)).save(tmp_path / "img" / f"im{i}.jpg")
        rows.append({"question_id": f"q{i}", "image": f"im{i}.jpg", "text": f"What is left of {i}?"})
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(out, ahead):
        cfg = EvalConfig.from_dict({
            "model": {"path": str(llava), "dtype": "float32", "device": DEVICE},
            "method": {"name": "ilp", "layer": 1, "budget": 4, "localizer": str(tmp_path / "loc")},
            "output_dir": str(tmp_path / out),
            "benchmarks": [{"name": "gqa", "question_file": str(tmp_path / "q.jsonl"),
                            "image_folder": str(tmp_path / "img"), "max_new_tokens": 3}]})
        run_eval(dataclasses.replace(cfg, score=False), ahead_of_time=ahead)
        folder = tmp_path / out / "gqa"
        return read_jsonl(folder / "answers.jsonl"), read_jsonl(folder / "efficiency.jsonl")

    (serial_ans, serial), (ahead_ans, ahead) = run("serial", False), run("ahead", True)
    assert [r["text"] for r in ahead_ans] == [r["text"] for r in serial_ans]
    assert [r["region"] for r in ahead] == [r["region"] for r in serial]
    for row in ahead:
        assert row["localizer_s"] > 0 and row["localizer_wait_s"] >= 0
        assert 0 < row["encode_s"] < row["prefill_s"] and 0 < row["kv_cache_s"] < row["total_s"]
