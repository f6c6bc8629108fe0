"""One prepared GPU run of the paper's efficiency claims (Table 4, Sec. 4.4; issue 19).

Random weights at real shapes: speed and memory only, never accuracy.

On the device (one H100/H200, no network; Python 3.12 with torch 2.11 and transformers 5.17 --
older than this project supports -- so ``benchmarks/gpu_run.sh`` installs transformers 5.25 and
its dependencies from ``.gpu-wheels/`` into a venv that also sees the system torch). Once, here:
``bash benchmarks/gpu_wheels.sh`` (~32 MB, git-ignored); then, with the device tool::

    run(command="bash benchmarks/gpu_run.sh", carry=[".gpu-wheels"], timeout_s=450)

which writes ``$OUT/gpu_suite.json``, ``$OUT/gpu_suite.md`` and ``$OUT/gpu_suite.log`` (~6 min
expected, 360 s at most for the suite: ``--total-limit``; a rerun of some sections:
``bash benchmarks/gpu_run.sh --only ahead next13b``). Here, on CPU, the same code paths at tiny
shapes (under a minute; ``tests/test_gpu_suite.py`` runs it)::

    python benchmarks/gpu_suite.py --device cpu --tiny --out /tmp/gpu_suite

Sections (``--only`` / ``--skip`` pick them; each prints its budget before it starts and its
time after, and stops between measurements once its limit -- :data:`LIMIT_S`, ``--section-limit``
or ``--limit NAME=SECONDS``, cut to what ``--total-limit`` leaves -- has passed: its status is
then ``truncated``; a section with no time left is ``skipped``):

``tests``    the ``gpu``-marked tests (``tests/gpu``: CUDA-only paths -- bf16, the SDPA flash /
             memory-efficient kernels, CUDA streams, CUDA-event timing), run by pytest in a
             subprocess (``--noconftest``: the suite's conftest imports Beam, absent there);
``ilp7b``    ILP vs FastV vs no pruning, LLaVA-1.5-7B shapes (Vicuna-7B: hidden 4096, 32 layers),
             576 visual tokens, K = 2, R = 192 / 128 / 64, batch 1 and 8: prefill ms, decode
             ms/token, KV-cache bytes, peak CUDA memory (``torch.cuda.max_memory_allocated``);
``plc``      PLC at the same shapes: the compressor's time, and the LLM with 68 vs 576 visual tokens;
``ahead``    the ahead-of-time pipeline (``crop.models.ahead``): a Qwen2-VL-2B-shaped localizer
             and the 7B-shaped VLM (ILP, R = 192) over a stream of batches -- serial, overlapped on
             a worker thread, and overlapped on its own CUDA stream: the VLM's idle time and the
             stream's throughput relative to the VLM alone (goal >= 0.95x);
``next13b``  Table 4: LLaVA-NeXT-13B shapes (hidden 5120, 40 layers), a 672x672 image = 2928 visual
             tokens (2880 grid cells + 48 row newlines), R = 640 / 320 / 160, vs an unpruned
             7B-shaped run on the same sequence (LLaVA-NeXT-7B);
``methods``  ``benchmarks/methods_speed.py`` when it exists (other pruning methods), else skipped.

The LLM is a ``LlamaForCausalLM`` built from its config class (SDPA attention) with the visual
positions holding the image token id: pruning acts on positions, so the LLM's time is what a
LLaVA's is after its vision tower (which is not part of these figures). Token layouts come from
the real LLaVA / LLaVA-NeXT config classes through :func:`crop.pruning.layout.token_layout`.
Every figure is the median over ``--reps`` measured runs after ``--warmup`` runs; peak memory is
over the prefill and the decode steps, with the model weights (``peak_mib``) and above what was
allocated before the call (``peak_above_mib``). A section that fails is recorded (status
``error`` with the traceback's end) and the next one runs; the JSON is rewritten after every
section, so a run cut short still leaves what it measured. Exit status 1 if a section failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: crop is imported from this checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

NOTE = "Random weights at real shapes: speed and memory only (no accuracy is measured or implied)."
SECTIONS = ("tests", "ilp7b", "plc", "ahead", "next13b", "methods")
# Expected seconds per section on one H100 with the defaults (the full run must stay under 8 min),
# and on 2 CPU cores with --tiny; printed so the run can be trimmed with --skip / --limit.
BUDGET_S = {"tests": (45, 15), "ilp7b": (70, 10), "plc": (20, 3), "ahead": (45, 10), "next13b": (50, 8),
            "methods": (60, 15)}
# Default limits (s) per section on the GPU, all cut to what --total-limit (360 s) leaves: with the
# launcher's venv and offline install (~30 s) one device call of timeout_s=450 holds the run, and
# the 15 device minutes leave room for a trimmed rerun (--only the sections to redo).
LIMIT_S = {"tests": 60, "ilp7b": 90, "plc": 30, "ahead": 60, "next13b": 80, "methods": 60}
IMAGE_ID = 32000  # LLaVA's <image> id (one past Vicuna's 32000-token vocabulary: never a text id)
TEXT_BEFORE = 5  # text tokens before the image ("USER: <image>" + system prompt, shortened)


@dataclass(frozen=True)
class Shape:
    """A decoder's shape (Llama-family): what prefill/decode time and KV bytes depend on."""

    name: str
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    layers: int
    vocab: int


FULL = {"7b": Shape("Vicuna-7B (LLaVA-1.5-7B / LLaVA-NeXT-7B)", 4096, 32, 32, 11008, 32, 32064),
        "13b": Shape("Vicuna-13B (LLaVA-NeXT-13B)", 5120, 40, 40, 13824, 40, 32064)}
TINY = {"7b": Shape("tiny stand-in for 7B", 64, 4, 4, 128, 4, 32064),
        "13b": Shape("tiny stand-in for 13B", 80, 5, 5, 160, 5, 32064)}
# Qwen2-VL-2B: text hidden 1536, 28 layers, 12 heads (2 KV), MLP 8960, vocabulary 151936; vision
# transformer depth 32, width 1280, 16 heads, MLP ratio 4, patch 14, 2x2 merge.
LOC_FULL = dict(hidden=1536, layers=28, heads=12, kv_heads=2, ffn=8960, vocab=151936, vision_depth=32,
                vision_dim=1280, vision_heads=16, mlp_ratio=4, image=448, mrope=[16, 24, 24], theta=1000000.0)
LOC_TINY = dict(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=None, vision_depth=2, vision_dim=32,
                vision_heads=2, mlp_ratio=2, image=112, mrope=[4, 2, 2], theta=10000.0)


# ============================================================================ run context
class Suite:
    """Arguments, device, results and the models shared between sections (built once)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = getattr(torch, args.dtype or ("bfloat16" if self.cuda else "float32"))
        self.shapes = TINY if args.tiny else FULL
        self.out = Path(args.out)
        self.results: dict[str, Any] = {"note": NOTE, "started_utc": _utc(), "argv": sys.argv[1:],
                                        "environment": environment(self.device, self.dtype), "sections": {}}
        self._models: dict[str, Any] = {}
        self._deadline = float("inf")
        self.t0 = time.monotonic()

    # --- models
    def llm(self, key: str):
        if key not in self._models:
            self._models[key] = build_llm(self.shapes[key], self.device, self.dtype)
        return self._models[key]

    def drop(self, key: str) -> None:
        self._models.pop(key, None)
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    # --- time limits
    def start_section(self, name: str) -> float:
        """Arm the section's deadline: its own limit, cut to what --total-limit leaves; returns it."""
        a = self.args
        own = a.limits.get(name, a.section_limit if a.section_limit is not None else
                           (150.0 if a.tiny else LIMIT_S[name]))
        limit = max(0.0, min(own, a.total_limit - (time.monotonic() - self.t0)))
        self._deadline = time.monotonic() + limit
        return limit

    def remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def out_of_time(self) -> bool:
        return time.monotonic() > self._deadline

    def write(self) -> None:
        secs = self.results["sections"]
        self.results["sections"] = {n: secs[n] for n in SECTIONS if n in secs}  # report order = SECTIONS
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_suite.json").write_text(json.dumps(self.results, indent=2, default=str), encoding="utf-8")
        (self.out / "gpu_suite.md").write_text(markdown(self.results), encoding="utf-8")


def _utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """What ran: GPU, driver, CUDA, torch, transformers, dtype, SDPA kernels enabled."""
    import numpy
    import transformers

    env: dict[str, Any] = {
        "device": str(device), "dtype": str(dtype).replace("torch.", ""), "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__, "transformers": transformers.__version__,
        "numpy": numpy.__version__, "cpu_threads": torch.get_num_threads(), "cuda_available": torch.cuda.is_available(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
                    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                    "sdpa_flash": torch.backends.cuda.flash_sdp_enabled(),
                    "sdpa_mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                    "driver": _driver()})
    return env


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


# ============================================================================ models and inputs
def build_llm(shape: Shape, device: torch.device, dtype: torch.dtype):
    """A random-weight Llama decoder of ``shape``, built directly in ``dtype`` on ``device``
    (a 13B model in fp32 first would not fit beside its bf16 copy on one 80 GB GPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=shape.hidden, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                      intermediate_size=shape.ffn, num_hidden_layers=shape.layers, vocab_size=shape.vocab,
                      max_position_embeddings=4096, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    model.config.image_token_id = IMAGE_ID  # the plug-ins' prefill guard checks these positions, as on a VLM
    return model.eval()


def llava_config():
    """LLaVA-1.5's geometry: CLIP ViT-L/14 at 336 px -> a 24x24 grid of 576 visual tokens."""
    from transformers import CLIPVisionConfig, LlavaConfig

    return LlavaConfig(vision_config=CLIPVisionConfig(image_size=336, patch_size=14), image_token_id=IMAGE_ID,
                       vision_feature_select_strategy="default")


def next_config():
    """LLaVA-NeXT's geometry: 336 px tiles, the released grid pinpoints (up to 672x672 / 336x1008)."""
    from transformers import CLIPVisionConfig, LlavaNextConfig

    return LlavaNextConfig(vision_config=CLIPVisionConfig(image_size=336, patch_size=14), image_token_id=IMAGE_ID,
                           vision_feature_select_strategy="default",
                           image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])


@dataclass
class Prompt:
    """Token ids (B, N) with the image's positions set to IMAGE_ID, and their layouts."""

    ids: torch.Tensor
    layouts: list
    size_wh: tuple[int, int]
    family: str
    visual: int  # visual tokens per row


def make_prompt(family: str, batch: int, text: int, device: torch.device, n_visual: int | None = None) -> Prompt:
    """``text`` text tokens around one image per row; layouts from the real config classes.

    ``llava``: 576 tokens (336 px image); ``llava_next``: a 672x672 image, 576 base + 48x48
    high-res + 48 newlines = 2928; ``plain``: ``n_visual`` placeholder tokens, no layout (PLC's 68).
    """
    from crop.pruning.layout import token_layout

    if family == "llava":
        cfg, size_wh, extra = llava_config(), (336, 336), {}
        n_visual = 24 * 24
    elif family == "llava_next":
        cfg, size_wh = next_config(), (672, 672)
        n_visual = 24 * 24 + 48 * (48 + 1)  # base view + high-res rows each closed by a newline token
        extra = {"image_sizes": torch.tensor([[672, 672]] * batch)}  # (B, 2) as (H, W)
    else:
        cfg, size_wh, extra = None, (336, 336), {}
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 32000, (batch, text + n_visual), generator=g)  # (B, N)
    ids[:, TEXT_BEFORE:TEXT_BEFORE + n_visual] = IMAGE_ID
    layouts = token_layout(cfg, {"input_ids": ids, **extra}) if cfg is not None else []
    return Prompt(ids.to(device), layouts, size_wh, family, n_visual)


def kv_bytes(cache: Any) -> int:
    from crop.eval.efficiency import cache_bytes

    return int(cache_bytes(cache) or 0)


def kv_bytes_expected(shape: Shape, n_full: int, n_keep: int, k: int, batch: int, elem: int) -> int:
    """Keys + values after the prefill: K layers at the full length, the rest at the kept length."""
    per_pos = 2 * shape.kv_heads * (shape.hidden // shape.heads) * elem
    return batch * per_pos * (k * n_full + (shape.layers - k) * n_keep)


# ============================================================================ one measured workload
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attach(model, method: str | None, prompt: Prompt, budget: int | None, k: int) -> tuple[Any, int | None]:
    """The pruning plug-in for one run and the visual tokens it keeps per row: ILP (a ~R-token
    rectangle around a central region), FastV (R tokens by layer K-1 attention), or none."""
    from crop.pruning import attach_fastv, attach_ilp, region_keep_plan

    if method == "ilp":
        b = prompt.ids.shape[0]
        plan = region_keep_plan(prompt.layouts, [(0.3, 0.3, 0.7, 0.7)] * b, image_sizes_wh=[prompt.size_wh] * b,
                                llava_geometry="resize", budget=budget)
        return attach_ilp(model, plan, layer=k), int(plan.visual_kept[0])
    if method == "fastv":
        return attach_fastv(model, prompt.layouts, budget=budget, layer=k), min(budget, prompt.visual)
    return None, None


def generate_once(model, ids: torch.Tensor, decode: int, device: torch.device, handle=None) -> dict[str, Any]:
    """One prefill + ``decode`` greedy steps (manual loop: the cache is ours to measure).

    Returns prefill seconds, decode seconds per token, KV bytes after the prefill, peak bytes
    (CUDA: with the weights, and above what was allocated before), visual tokens kept."""
    from crop.compat import cache_kwarg, cache_of_output

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    with torch.inference_mode(), (handle if handle is not None else contextlib.nullcontext()) as h:
        sync(device)
        t = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        sync(device)
        prefill = time.perf_counter() - t
        cache = cache_of_output(out)
        kv = kv_bytes(cache)
        nxt = out.logits[:, -1:].argmax(-1)  # (B, 1)
        mask = torch.ones(ids.shape, dtype=torch.long, device=device)  # (B, N): full length, the plug-in maps it
        t = time.perf_counter()
        for _ in range(decode):
            mask = torch.cat([mask, mask[:, :1]], 1)  # (B, N + step)
            out = model(input_ids=nxt, attention_mask=mask, use_cache=True, logits_to_keep=1,
                        **{cache_kwarg(): cache})
            nxt = out.logits[:, -1:].argmax(-1)
        sync(device)
        dec = (time.perf_counter() - t) / max(decode, 1)
        kept = getattr(h, "kept_counts", None)
    row = {"prefill_ms": prefill * 1e3, "decode_ms_per_token": dec * 1e3 if decode else None, "kv_bytes": kv}
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        row.update({"peak_bytes": int(peak), "peak_above_bytes": int(peak - before)})
    if kept:
        row["fastv_kept"] = int(kept[0])
    return row


def measure(suite: Suite, model, prompt: Prompt, method: str | None, budget: int | None, k: int) -> dict[str, Any]:
    """Median figures over ``--reps`` runs after ``--warmup``; an out-of-memory is a result."""
    a = suite.args
    runs = []
    try:
        for i in range(a.warmup + a.reps):
            handle, kept = attach(model, method, prompt, budget, k)
            row = generate_once(model, prompt.ids, a.decode, suite.device, handle)
            row["visual_kept"] = row.pop("fastv_kept", kept if kept is not None else prompt.visual)
            if i >= a.warmup:
                runs.append(row)
    except torch.cuda.OutOfMemoryError as err:  # a figure too: this shape does not fit
        gc.collect()
        torch.cuda.empty_cache()
        return {"error": f"CUDA out of memory: {str(err).splitlines()[0]}"}
    med = {key: statistics.median(r[key] for r in runs) for key in ("prefill_ms", "decode_ms_per_token")
           if runs[0].get(key) is not None}
    out = {**runs[-1], **med, "reps": len(runs)}
    if suite.cuda:
        out["peak_bytes"] = max(r["peak_bytes"] for r in runs)
        out["peak_above_bytes"] = max(r["peak_above_bytes"] for r in runs)
    return out


def pruning_rows(suite: Suite, model, shape: Shape, prompt: Prompt, budgets: list[int], k: int,
                 label: str) -> tuple[list[dict], bool]:
    """none / ILP R / FastV R rows for one model and prompt; (rows, truncated).

    ``kv_match``: the measured cache bytes equal K layers at the full length + the rest at the
    kept length (computed here from the shape, not read from the cache)."""
    rows: list[dict] = []
    elem = torch.finfo(suite.dtype).bits // 8
    b, n = prompt.ids.shape
    cases = [("none", None, None)] + [(m, m, r) for r in budgets for m in ("ilp", "fastv")]
    for name, method, r in cases:
        if suite.out_of_time():
            return rows, True
        res = measure(suite, model, prompt, method, r, k)
        row = {"model": label, "method": {"none": "none", "ilp": "ILP", "fastv": "FastV"}[name], "R": r, "batch": b,
               "visual_in": prompt.visual, **res}
        if "error" not in res:
            m = n - prompt.visual + res["visual_kept"]
            row["kv_expected_bytes"] = kv_bytes_expected(shape, n, m, k if method else shape.layers, b, elem)
            row["kv_match"] = row["kv_expected_bytes"] == res["kv_bytes"]
        rows.append(row)
        print(f"  {label:<10} {row['method']:<6} R={str(r):<5} B={b}: " + _brief(row), flush=True)
    return rows, False


def _brief(row: dict) -> str:
    if "error" in row:
        return row["error"]
    s = f"prefill {row['prefill_ms']:.1f} ms"
    if row.get("decode_ms_per_token") is not None:
        s += f", decode {row['decode_ms_per_token']:.2f} ms/tok"
    s += f", KV {row['kv_bytes'] / 2**20:.1f} MiB"
    if row.get("peak_bytes") is not None:
        s += f", peak {row['peak_bytes'] / 2**20:.0f} MiB"
    return s


# ============================================================================ sections
def section_tests(suite: Suite) -> dict[str, Any]:
    """The gpu-marked tests in a subprocess; outcomes per test from pytest's JUnit XML."""
    import tempfile

    limit = suite.remaining()
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "gpu_tests.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "--noconftest", "-p", "no:cacheprovider",
               "-m", "gpu", f"--junitxml={xml}", str(suite.args.tests_path)]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=_env_with_root(), capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {"status": "truncated", "rows": [], "notes": [f"pytest passed the section limit ({limit:.0f} s)"]}
        rows = []
        if xml.exists():
            for case in ET.parse(xml).getroot().iter("testcase"):
                outcome, detail = "passed", ""
                for tag in ("failure", "error", "skipped"):
                    el = case.find(tag)
                    if el is not None:
                        outcome, detail = tag, (el.get("message") or "")[:300]
                        break
                rows.append({"test": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome,
                             "seconds": float(case.get("time", 0)), "detail": detail})
    print("  " + (proc.stdout.strip().splitlines() or ["(no output)"])[-1], flush=True)
    bad = [r for r in rows if r["outcome"] in ("failure", "error")]
    status = "ok" if proc.returncode in (0, 5) and not bad else "error"  # 5: nothing collected/selected
    notes = [] if suite.cuda else ["no CUDA device: the gpu tests skip (their code paths need one)"]
    out = {"status": status, "rows": rows, "notes": notes, "pytest_exit": proc.returncode}
    if status == "error":
        out["error"] = (proc.stdout + proc.stderr)[-3000:]
    return out


def section_ilp7b(suite: Suite) -> dict[str, Any]:
    """ILP vs FastV vs none at LLaVA-1.5-7B shapes, batch 1 and 8."""
    a, shape = suite.args, suite.shapes["7b"]
    model = suite.llm("7b")
    rows: list[dict] = []
    truncated = False
    for b in a.batches:
        prompt = make_prompt("llava", b, a.text, suite.device)
        got, truncated = pruning_rows(suite, model, shape, prompt, a.budgets_7b, a.k, "7B")
        rows += got
        if truncated:
            break
    _ratios(rows)
    return {"status": "truncated" if truncated else "ok", "rows": rows, "shape": shape.__dict__,
            "notes": [f"K={a.k}; {a.text} text tokens + 576 visual; FastV keeps exactly R, ILP a ~R-token rectangle; "
                      f"decode over {a.decode} steps; time_ratio (prefill) and peak_above_ratio are relative to "
                      "none at the same batch"]}


def _ratios(rows: list[dict]) -> None:
    """Per row: prefill time and peak memory relative to the unpruned row of the same model and batch."""
    base = {(r["model"], r["batch"]): r for r in rows if r["method"] == "none" and "error" not in r}
    for r in rows:
        ref = base.get((r["model"], r["batch"]))
        if ref is None or "error" in r:
            continue
        r["time_ratio"] = r["prefill_ms"] / ref["prefill_ms"]
        if r.get("peak_above_bytes") and ref.get("peak_above_bytes"):
            r["peak_above_ratio"] = r["peak_above_bytes"] / ref["peak_above_bytes"]


def section_plc(suite: Suite) -> dict[str, Any]:
    """PLC: the compressor on (B, 576, D) projector outputs, and the LLM on 68 vs 576 visual tokens."""
    from crop.models.plc import PLC, PLCConfig

    a, shape = suite.args, suite.shapes["7b"]
    model = suite.llm("7b")
    torch.manual_seed(0)
    plc = PLC(PLCConfig(dim=shape.hidden)).to(suite.device, suite.dtype).eval()
    rows: list[dict] = []
    for b in a.batches:
        if suite.out_of_time():
            return {"status": "truncated", "rows": rows}
        x = torch.randn(b, 576, shape.hidden, device=suite.device, dtype=suite.dtype)  # (B, 576, D)
        masks = plc.masks_from_regions(torch.tensor([[2, 1, 5, 6]] * b, device=suite.device))
        with torch.inference_mode():
            for _ in range(a.warmup):
                plc(x, masks)
            times = []
            for _ in range(max(a.reps, 3)):
                sync(suite.device)
                t = time.perf_counter()
                plc(x, masks)
                sync(suite.device)
                times.append(time.perf_counter() - t)
        plc_ms = statistics.median(times) * 1e3
        for n_vis in (576, plc.config.num_output_tokens):
            prompt = make_prompt("plain", b, a.text, suite.device, n_visual=n_vis)
            res = measure(suite, model, prompt, None, None, a.k)
            row = {"model": "7B", "method": "none" if n_vis == 576 else "PLC", "batch": b, "visual_in": 576,
                   "visual_kept": n_vis, **res}
            if n_vis != 576 and "error" not in res:
                row["plc_module_ms"] = plc_ms
                row["prefill_plus_plc_ms"] = res["prefill_ms"] + plc_ms
            rows.append(row)
            print(f"  PLC B={b} visual {n_vis}: " + _brief(row), flush=True)
    _ratios(rows)
    return {"status": "ok", "rows": rows,
            "notes": ["PLC row: the LLM on the compressor's 68 tokens; plc_module_ms is the compressor itself "
                      "(its input, the vision tower's 576 tokens, is computed in both cases)"]}


def build_localizer(suite: Suite):
    """A Qwen2-VL-2B-shaped localizer (random weights; tiny with --tiny) with crop's tokenizer and
    chat encoder: :class:`crop.models.localizer.Localizer`, the class ``crop eval`` loads."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from crop.models.localizer import CHAT_TEMPLATE, Localizer, build_tiny_tokenizer, tiny_corpus
    from crop.models.localizer_data import IM_END, QwenChatEncoder

    s = LOC_TINY if suite.args.tiny else LOC_FULL
    tok = build_tiny_tokenizer(tiny_corpus(), 400)
    tok.chat_template = CHAT_TEMPLATE
    ids = tok.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=s["vocab"] or len(tok), hidden_size=s["hidden"], intermediate_size=s["ffn"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["kv_heads"], max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": s["theta"],
                                          "mrope_section": s["mrope"]},
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids(IM_END), pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=s["vision_depth"], embed_dim=s["vision_dim"], hidden_size=s["hidden"],
                           num_heads=s["vision_heads"], mlp_ratio=s["mlp_ratio"], patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        attn_implementation="sdpa", tie_word_embeddings=True)  # Qwen2-VL-2B ties its LM head to the embeddings
    torch.manual_seed(0)
    with torch.device(suite.device):
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=suite.dtype)
    px = s["image"] * s["image"]
    return Localizer(model.eval(), QwenChatEncoder(tok, Qwen2VLImageProcessorPil(min_pixels=px, max_pixels=px)),
                     max_new_tokens=12, batch_size=suite.args.ahead_batch)


def section_ahead(suite: Suite) -> dict[str, Any]:
    """The localizer ahead of the VLM over a stream of batches: serial, worker thread, own stream."""
    import numpy as np
    from PIL import Image

    from crop.models.ahead import predict_ahead
    from crop.pruning import attach_ilp, region_keep_plan

    a = suite.args
    model, loc = suite.llm("7b"), build_localizer(suite)
    b, n_batches, side = a.ahead_batch, a.ahead_batches, (LOC_TINY if a.tiny else LOC_FULL)["image"]
    rng = np.random.default_rng(0)
    batches = [([Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(b)],
                [f"What is on the left of object {i}.{j}?" for j in range(b)]) for i in range(n_batches)]
    prompt = make_prompt("llava", b, a.text, suite.device)

    def vlm(regions: list) -> None:
        """The VLM's work on one batch: ILP with the localizer's regions, prefill + decode."""
        plan = region_keep_plan(prompt.layouts, regions, image_sizes_wh=[(side, side)] * b,
                                llava_geometry="resize", budget=a.ahead_budget)
        generate_once(model, prompt.ids, a.decode, suite.device, attach_ilp(model, plan, layer=a.k))

    def timed(fn: Callable[[], Any]) -> float:
        sync(suite.device)
        t = time.perf_counter()
        fn()
        sync(suite.device)
        return time.perf_counter() - t

    regions = [loc.predict(*batches[0])]  # warm-up of both models (kernels, allocator)
    vlm(regions[0])
    loc_s = timed(lambda: regions.__setitem__(slice(None), [loc.predict(*bt) for bt in batches]))
    rows = [{"mode": "localizer alone", "seconds": loc_s}]
    vlm_s = timed(lambda: [vlm(r) for r in regions])
    rows.append({"mode": "VLM alone (ILP, regions given)", "seconds": vlm_s, "throughput_ratio": 1.0})
    serial_s = timed(lambda: [vlm(loc.predict(*bt)) for bt in batches])
    rows.append({"mode": "serial (localizer, then VLM)", "seconds": serial_s, "vlm_idle_s": serial_s - vlm_s,
                 "throughput_ratio": vlm_s / serial_s})
    for mode, stream in (("ahead, worker thread", False), ("ahead, worker thread + own CUDA stream", True)):
        if suite.out_of_time():
            return {"status": "truncated", "rows": rows}
        waits: list[float] = []

        def run_ahead() -> None:
            it = predict_ahead(loc, batches, depth=1, cuda_stream=stream)
            while True:
                t = time.perf_counter()
                try:
                    _, regs = next(it)
                except StopIteration:
                    return
                waits.append(time.perf_counter() - t)
                vlm(regs)

        total = timed(run_ahead)
        rows.append({"mode": mode, "seconds": total, "vlm_idle_s": sum(waits), "vlm_idle_after_first_s": sum(waits[1:]),
                     "throughput_ratio": vlm_s / total})
        print(f"  {mode}: {total:.2f} s, VLM idle {sum(waits):.2f} s (after the first batch {sum(waits[1:]):.2f} s), "
              f"throughput x{vlm_s / total:.3f} of the VLM alone", flush=True)
    for r in rows:
        r["batches"], r["batch"] = n_batches, b
    notes = [f"{n_batches} batches of {b} questions; localizer {'tiny' if a.tiny else 'Qwen2-VL-2B-shaped'} on "
             f"{side}x{side} images, at most 12 new tokens; VLM 7B-shaped, ILP R={a.ahead_budget}, K={a.k}, "
             f"{a.decode} decode steps; throughput_ratio = VLM-alone time / mode time (goal >= 0.95 for ahead)"]
    if not suite.cuda:
        notes.append("CPU: there is no CUDA stream, the two ahead rows run the same code")
    return {"status": "ok", "rows": rows, "notes": notes}


def section_next13b(suite: Suite) -> dict[str, Any]:
    """Table 4: 13B shapes with 2928 visual tokens (none / ILP / FastV) vs an unpruned 7B run."""
    a = suite.args
    prompt = make_prompt("llava_next", 1, a.text, suite.device)
    rows: list[dict] = []
    res7 = measure(suite, suite.llm("7b"), prompt, None, None, a.k)
    rows.append({"model": "7B", "method": "none", "R": None, "batch": 1, "visual_in": prompt.visual,
                 "visual_kept": prompt.visual, **res7})
    print("  7B         none   unpruned: " + _brief(rows[0]), flush=True)
    suite.drop("7b")  # the 13B's figures are measured without the 7B's weights beside it
    got, truncated = pruning_rows(suite, suite.llm("13b"), suite.shapes["13b"], prompt, a.budgets_13b, a.k, "13B")
    rows += got
    suite.drop("13b")
    _ratios(rows)
    if "error" not in res7:
        for r in rows:
            if "error" not in r:
                r["vs_7b_unpruned"] = r["prefill_ms"] / res7["prefill_ms"]
    return {"status": "truncated" if truncated else "ok", "rows": rows,
            "notes": [f"a 672x672 image: {prompt.visual} visual tokens (2880 grid cells + 48 newlines), {a.text} "
                      f"text tokens, batch 1; vs_7b_unpruned = prefill time / the unpruned 7B-shaped prefill "
                      "(Table 4: ILP on 13B faster than 7B)"]}


def _env_with_root() -> dict[str, str]:
    """This process's environment with the checkout first on PYTHONPATH (subprocesses import crop)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def section_methods(suite: Suite) -> dict[str, Any]:
    """benchmarks/methods_speed.py (every registry method) when present, as a subprocess; its
    ``--json`` rows become this section's rows."""
    import tempfile

    script = ROOT / "benchmarks" / "methods_speed.py"
    if not script.exists():
        return {"status": "skipped", "rows": [], "notes": ["benchmarks/methods_speed.py does not exist"]}
    limit = suite.remaining()
    with tempfile.TemporaryDirectory() as tmp:
        out_json = Path(tmp) / "methods.json"
        cmd = [sys.executable, str(script), "--json", str(out_json)] + (
            ["--tiny"] if suite.args.tiny else
            ["--device", str(suite.device), "--layers", str(suite.shapes["7b"].layers)])
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=_env_with_root(), capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {"status": "truncated", "rows": [], "notes": [f"passed the section limit ({limit:.0f} s)"]}
        data = json.loads(out_json.read_text()) if out_json.exists() else {}
    rows = data.get("rows", []) if isinstance(data, dict) else []
    out = {"status": "ok" if proc.returncode == 0 else "error", "rows": [r for r in rows if isinstance(r, dict)],
           "command": " ".join(cmd[1:]).replace(str(out_json), "<json>"), "output": proc.stdout[-4000:],
           "notes": ["benchmarks/methods_speed.py's own rows (its docstring defines the columns)"]}
    if proc.returncode:
        out["error"] = proc.stderr[-3000:]
    return out


RUNNERS: dict[str, Callable[[Suite], dict[str, Any]]] = {
    "tests": section_tests, "ilp7b": section_ilp7b, "plc": section_plc, "ahead": section_ahead,
    "next13b": section_next13b, "methods": section_methods}


# ============================================================================ report
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v).replace("|", "/").replace("\n", " ")


MIB_KEYS = ("kv_bytes", "kv_expected_bytes", "peak_bytes", "peak_above_bytes")


def markdown(results: dict[str, Any]) -> str:
    """One Markdown document: the note, the environment, one table per section."""
    lines = ["# CROP GPU suite", "", f"**{results['note']}**", "", f"Started {results['started_utc']}"
             + (f", finished {results['finished_utc']}" if results.get("finished_utc") else " (unfinished)")
             + f"; arguments: `{' '.join(results['argv'])}`", "", "## Environment", "",
             "| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in results["environment"].items()]
    for name, sec in results["sections"].items():
        lines += ["", f"## {name}: {sec.get('status')}", ""]
        if "elapsed_s" in sec:
            lines += [f"budget ~{sec['budget_s']} s, limit {sec['limit_s']:.0f} s, took {sec['elapsed_s']:.1f} s", ""]
        lines += [f"- {n}" for n in sec.get("notes", [])]
        rows = sec.get("rows") or []
        if rows:
            cols: list[str] = []
            for r in rows:
                cols += [c for c in r if c not in cols]
            shown = [c.replace("_bytes", "_mib") if c in MIB_KEYS else c for c in cols]
            lines += ["", "| " + " | ".join(shown) + " |", "|" + " --- |" * len(cols)]
            for r in rows:
                cells = [_fmt(r[c] / 2**20 if c in MIB_KEYS and r.get(c) is not None else r.get(c)) for c in cols]
                lines.append("| " + " | ".join(cells) + " |")
        if sec.get("error"):
            lines += ["", "```", sec["error"][-2000:], "```"]
    return "\n".join(lines) + "\n"


# ============================================================================ CLI
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                    help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--tiny", action="store_true", help="tiny stand-in shapes (same code paths; CPU in < 1 min)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu"),
                    help="folder for gpu_suite.json and gpu_suite.md")
    ap.add_argument("--tests-path", default=str(ROOT / "tests" / "gpu"), help="what the tests section runs")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    ap.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="skip these sections")
    ap.add_argument("--section-limit", type=float,
                    help="seconds after which every section stops between measurements (status truncated); "
                         f"default per section {LIMIT_S} on the GPU, 150 with --tiny")
    ap.add_argument("--total-limit", type=float, default=360.0,
                    help="seconds for the whole run: each section's limit is cut to what is left")
    ap.add_argument("--limit", action="append", default=[], metavar="NAME=SECONDS",
                    help="a per-section limit, e.g. --limit next13b=60 (repeatable)")
    ap.add_argument("--reps", type=int, help="measured runs per configuration (default 3; --tiny 1)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured runs first")
    ap.add_argument("--decode", type=int, help="decode steps timed per run (default 16; --tiny 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads with --device cpu")
    ap.add_argument("--k", type=int, default=2, help="pruning layer K (paper: 2)")
    ap.add_argument("--text", type=int, default=64, help="text tokens besides the visual tokens")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes of ilp7b / plc")
    ap.add_argument("--budgets-7b", type=int, nargs="+", default=[192, 128, 64])
    ap.add_argument("--budgets-13b", type=int, nargs="+", default=[640, 320, 160])
    ap.add_argument("--ahead-batch", type=int, help="questions per batch in the ahead section (default 8; --tiny 2)")
    ap.add_argument("--ahead-batches", type=int, help="batches in the stream (default 8; --tiny 3)")
    ap.add_argument("--ahead-budget", type=int, default=192, help="ILP's R in the ahead section")
    a = ap.parse_args(argv)
    a.reps = a.reps or (1 if a.tiny else 3)
    a.decode = a.decode if a.decode is not None else (3 if a.tiny else 16)
    a.ahead_batch = a.ahead_batch or (2 if a.tiny else 8)
    a.ahead_batches = a.ahead_batches or (3 if a.tiny else 8)
    a.limits = {}
    for item in a.limit:
        name, _, secs = item.partition("=")
        if name not in SECTIONS or not secs:
            ap.error(f"--limit wants NAME=SECONDS with NAME in {SECTIONS}, got {item!r}")
        a.limits[name] = float(secs)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device")
    if not 1 <= a.k < (TINY if a.tiny else FULL)["7b"].layers:
        ap.error("--k must be at least 1 and below the layer count")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    suite = Suite(args)
    names = [n for n in (args.only or SECTIONS) if n not in args.skip]
    for n in SECTIONS:  # every section is in the report, the ones not run marked so
        if n not in names:
            suite.results["sections"][n] = {"status": "skipped", "rows": [],
                                            "notes": ["not selected (--only / --skip)"]}
    print(f"{NOTE}\ndevice {suite.device}, dtype {suite.dtype}, sections {names}; output {suite.out}", flush=True)
    total = sum(BUDGET_S[n][1 if args.tiny else 0] for n in names)
    print(f"budget: ~{total} s in all (" + ", ".join(f"{n} ~{BUDGET_S[n][1 if args.tiny else 0]} s" for n in names)
          + "); trim with --skip NAME or --limit NAME=SECONDS", flush=True)
    t_all = time.perf_counter()
    failed = False
    for name in names:
        budget = BUDGET_S[name][1 if args.tiny else 0]
        limit = suite.start_section(name)
        if limit <= 0:
            suite.results["sections"][name] = {"status": "skipped", "rows": [],
                                               "notes": [f"--total-limit {args.total_limit:.0f} s reached before it"]}
            print(f"[{name}] skipped: --total-limit reached", flush=True)
            continue
        print(f"[{name}] budget ~{budget} s, limit {limit:.0f} s", flush=True)
        t = time.perf_counter()
        try:
            sec = RUNNERS[name](suite)
        except Exception as err:  # recorded; the next section still runs
            sec = {"status": "error", "rows": [], "error": traceback.format_exc()[-3000:]}
            print(f"[{name}] FAILED: {type(err).__name__}: {err}", flush=True)
        sec.update({"budget_s": budget, "limit_s": limit, "elapsed_s": time.perf_counter() - t})
        failed |= sec["status"] == "error"
        suite.results["sections"][name] = sec
        print(f"[{name}] {sec['status']} in {sec['elapsed_s']:.1f} s (budget ~{budget} s)", flush=True)
        suite.write()
    suite.results["finished_utc"] = _utc()
    suite.results["elapsed_s"] = time.perf_counter() - t_all
    suite.write()
    print(f"done in {suite.results['elapsed_s']:.1f} s: {suite.out / 'gpu_suite.json'}, {suite.out / 'gpu_suite.md'}",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
