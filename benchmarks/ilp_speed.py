"""ILP vs FastV vs no pruning at LLaVA-1.5-7B text shapes (random weights), one run, one table.

    python benchmarks/ilp_speed.py --layers 4 --threads 1                        # CPU fp32, ~5 min
    python benchmarks/ilp_speed.py --layers 32 --device cuda --dtype bfloat16   # full depth on a GPU

Sequence: ``--text`` text tokens with a 24x24 visual grid (576 tokens) after the first 5.
ILP keeps a ~R-token rectangle (crop.pruning budget rule) from layer K; FastV keeps the top
visual tokens by layer K-1 attention, by default exactly as many as ILP keeps (``--fastv-keep
match``) so that the two prefills do the same matmul work and their times compare directly.

Why the figures can be trusted on a shared CPU:
- every configuration is warmed up once, then measured ``--reps`` times; the rounds are
  interleaved (each round runs every configuration once, in a fresh seeded order), so slow
  drift of the machine hits all configurations alike; the median over rounds is reported;
- ``torch.set_num_threads(--threads)`` is fixed, and before every round the script waits
  (up to ``--wait`` s) until the 1-minute load, minus this process's own threads, is below
  ``--max-load``; the loads seen are printed;
- wall time and process CPU time are both recorded: ``cpu/wall`` near 1 (x threads) means
  the process was not preempted, and the CPU-time ratio is printed as a cross-check;
- two more cross-checks of the median ratio: the median over rounds of the *paired* ratio
  (time / no-pruning time of the same round, ~a minute apart at most) and the ratio of the
  minima (noise on a shared machine only ever adds time). If the three disagree by more than
  the target, the machine was too noisy: rerun with more ``--reps`` when the load is lower;
- a kernel calibration in every round: one *unhooked* decoder layer timed at the full and at
  each kept length. ``kernel r`` = ``K t(n) + (L-K) t(m)`` over ``L t(n)`` is what a perfect
  plug-in reaches on this hardware (matmuls on fewer rows cost more per FLOP); ``meas/kern``
  isolates the plug-in's own overhead, and ``hooks ms`` is the time inside its hooks per
  prefill (one cProfile'd prefill per configuration after the timed rounds).

Ideal-FLOPs ratio (prefill): matmul FLOPs (2 per multiply-add) of layers ``0..K-1`` at the full
length ``n`` plus layers ``K..L-1`` at the kept length ``m``, over ``L`` layers at ``n``. Per
layer and token: q,k,v,o projections ``8 D^2`` and the gated MLP ``6 D F``; attention adds
``QK^T`` and ``AV`` over the causal triangle, ``2 D n (n+1)`` per layer. The LM head runs on
the last token only (``2 D V``, same for all). FastV adds its selection row (``2 D^2 + 2 D n``).
``meas/ideal = (time / no-pruning time) / (FLOPs / no-pruning FLOPs)``; target within 5%.

Peak memory (``peak MiB``): on CUDA ``torch.cuda.max_memory_allocated`` over the prefill and the
decode steps (weights included). On CPU, the peak resident set size *above the RSS just before
the call*, over the same span: a thread reads ``/proc/self/statm`` every ~1 ms (:class:`RssPeak`).
This tracks live tensors because glibc serves large blocks (torch CPU tensors of more than
128 KiB) with ``mmap`` and unmaps them on free, so freed activations leave the RSS and the
figure is activations + the new KV cache. Limits: glibc raises its mmap threshold (up to 32 MiB)
after such a block is freed, and blocks below it come from the heap, whose freed pages may stay
resident, so a later call can reuse them without the RSS growing (figure too low) or an earlier
call's leftovers can remain (baseline too high); a spike shorter than ~1 ms can be missed; the RSS
also counts non-tensor memory (allocator bookkeeping, Python objects). Measured at L = 2, K = 1,
R = 64: one round gave none / ILP / FastV = 253 / 77 / 142 MiB, the max over two rounds 192 / 126
/ 135, and with ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment (a fixed threshold: every
block over 128 KiB is mapped and unmapped, so the RSS follows live tensors) 182 / 124 / 125. For
memory figures, run with that variable; it is not set by default because it changes allocation
costs and so the timings. The table legend says which mode ran. Compare rows of one run, not
runs. The sampler runs only in a separate, untimed pass after the timing rounds (two calls per
configuration, the max kept), so its wake-ups never touch a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import random
import statistics
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from crop.compat import cache_kwarg, cache_of_output
from crop.pruning import attach_fastv, attach_ilp, region_keep_plan
from crop.pruning.layout import SampleLayout, ViewGrid

D, HEADS, FF, VOCAB, SIDE = 4096, 32, 11008, 32000, 24
VISUAL_START = 5
IMAGE_ID = 7


# ----------------------------------------------------------------------------- pure figures
def layer_flops(n: int) -> float:
    """Matmul FLOPs of one decoder layer over a causal prefill of ``n`` tokens."""
    return n * (8 * D * D + 6 * D * FF) + 2 * D * n * (n + 1)


def prefill_flops(n_full: int, n_keep: int, layers: int, k: int, select: bool = False) -> float:
    """Ideal prefill FLOPs: K layers at ``n_full``, the rest at ``n_keep`` (+ FastV's row)."""
    extra = (2 * D * D + 2 * D * n_full) if select else 0.0
    return k * layer_flops(n_full) + (layers - k) * layer_flops(n_keep) + 2 * D * VOCAB + extra


def kv_bytes_ideal(n_full: int, n_keep: int, layers: int, k: int, elem: int) -> int:
    """Keys + values of K layers at full length and the rest at the kept length."""
    return 2 * D * elem * (k * n_full + (layers - k) * n_keep)


def kv_bytes(cache) -> int:
    return sum(l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size() for l in cache.layers)


def spread(xs: list[float]) -> float:
    """Inter-quartile range relative to the median (0.02 = 2%)."""
    if len(xs) < 2:
        return 0.0
    q = np.percentile(xs, [25, 75])
    return float((q[1] - q[0]) / statistics.median(xs))


class RssPeak:
    """Peak RSS above the value at ``__enter__``, sampled from ``/proc/self/statm`` by a thread.

    ``above`` (bytes) is valid after ``__exit__``; ``cpu_s()`` is the sampler thread's CPU time so
    far (to subtract it from a process-CPU measurement).
    """

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, period_s: float = 1e-3):
        self.period_s = period_s
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-peak", daemon=True)
        self._clock = None
        self._fd = -1

    def rss(self) -> int:
        """Resident bytes now (second field of statm, in pages)."""
        return int(os.pread(self._fd, 128, 0).split()[1]) * self.PAGE

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.period_s)

    def cpu_s(self) -> float:
        return time.clock_gettime(self._clock) if self._clock is not None else 0.0

    @property
    def above(self) -> int:
        return self.peak - self.base

    def __enter__(self) -> "RssPeak":
        self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        self.base = self.peak = self.rss()
        self._thread.start()
        self._clock = time.pthread_getcpuclockid(self._thread.ident)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())  # after the join: one writer at a time
        os.close(self._fd)


# ----------------------------------------------------------------------------- model / inputs
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
    pos = np.arange(VISUAL_START, VISUAL_START + SIDE * SIDE)
    view = ViewGrid("llava", 0, pos.reshape(SIDE, SIDE), None, {"side": SIDE})
    return SampleLayout("llava", n_text + SIDE * SIDE, pos, (view,), np.zeros(0, np.int64), (0,))


@dataclass
class Config:
    name: str
    kind: str | None  # None | "ilp" | "fastv"
    kept: int  # visual tokens kept from layer K on
    plan: object = None
    samples: dict = field(default_factory=lambda: {"wall": [], "cpu": [], "dec": []})
    kv: int = 0
    peak: int = 0


def make_configs(lay: SampleLayout, budgets: list[int], fastv_keep: str) -> list[Config]:
    cfgs = [Config("none", None, SIDE * SIDE)]
    for r in budgets:
        plan = region_keep_plan([lay], [(0.3, 0.3, 0.7, 0.7)], llava_geometry="resize", budget=r)
        kept = plan.visual_kept[0]
        cfgs.append(Config(f"ILP R={r}", "ilp", kept, plan))
        fv = kept if fastv_keep == "match" else r
        cfgs.append(Config(f"FastV R={r}", "fastv", fv))
    return cfgs


# ----------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def attach(model, cfg: Config, lay: SampleLayout, k: int):
    if cfg.kind == "ilp":
        return attach_ilp(model, cfg.plan, layer=k)
    if cfg.kind == "fastv":
        return attach_fastv(model, [lay], budget=cfg.kept, layer=k)
    return None


def layer_time(model, n: int, device: str) -> float:
    """Wall time of one unhooked decoder layer on ``n`` tokens: the kernels' own cost at that length.

    Matmuls are less efficient on fewer rows (on CPU markedly so), which no FLOP count sees;
    ``K t(n) + (L-K) t(m)`` over ``L t(n)`` is the ratio a perfect plug-in would reach here.
    """
    stack = model.model
    h = torch.randn(1, n, D, device=device, dtype=model.dtype)  # (1, n, D)
    pos = torch.arange(n, device=device)[None]  # (1, n)
    pe = stack.rotary_emb(h, pos)
    sync(device)
    t = time.perf_counter()
    stack.layers[0](h, attention_mask=None, position_embeddings=pe, position_ids=pos)
    sync(device)
    return time.perf_counter() - t


HOOKS = ("_pre_model", "_pre_first", "_pre_rest", "_pre_select", "_post_select")


def hook_ms(model, cfg: Config, lay: SampleLayout, ids: torch.Tensor, k: int) -> float:
    """Milliseconds spent inside the plug-in's hooks during one prefill (cProfile, cumulative)."""
    handle = attach(model, cfg, lay, k)
    prof = cProfile.Profile()
    try:
        prof.enable()
        model(input_ids=ids, use_cache=True, logits_to_keep=1)
        prof.disable()
    finally:
        if handle is not None:
            handle.remove()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    return 1e3 * sum(v[3] for (f, _, name), v in stats.items() if "pruning" in f and name in HOOKS)


def run_once(model, cfg: Config, lay: SampleLayout, ids: torch.Tensor, k: int, device: str, decode: int,
             memory: bool = False) -> tuple:
    """One prefill (+ ``decode`` greedy steps) under ``cfg``; returns (wall, cpu, decode/token, kv, peak).

    ``memory`` runs the CPU RSS sampler (peak is 0 otherwise on CPU); the timed rounds run without
    it, so its wake-ups never touch a timing."""
    handle = attach(model, cfg, lay, k)
    cuda = device.startswith("cuda")
    sampled = not cuda and memory
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with RssPeak() if sampled else contextlib.nullcontext() as mem:  # mem: None unless sampled
            sync(device)
            t, c = time.perf_counter(), time.process_time()
            s = mem.cpu_s() if mem else 0.0
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            sync(device)
            wall = time.perf_counter() - t
            cpu = time.process_time() - c - ((mem.cpu_s() - s) if mem else 0.0)  # minus the RSS sampler's CPU
            cache = cache_of_output(out)
            kv = kv_bytes(cache)
            nxt = out.logits[:, -1:].argmax(-1)  # (1, 1)
            mask = torch.ones(1, ids.shape[1], dtype=torch.long, device=ids.device)
            t = time.perf_counter()
            for _ in range(decode):
                mask = torch.cat([mask, mask[:, :1]], 1)  # (1, N + step)
                out = model(input_ids=nxt, attention_mask=mask, use_cache=True, logits_to_keep=1, **{cache_kwarg(): cache})
                nxt = out.logits[:, -1:].argmax(-1)
            sync(device)
            dec = (time.perf_counter() - t) / max(decode, 1)
        peak = torch.cuda.max_memory_allocated() if cuda else (mem.above if sampled else 0)
    finally:
        if handle is not None:
            handle.remove()
    return wall, cpu, dec, kv, peak


def wait_for_load(max_load: float, own: int, wait_s: float) -> float:
    """Sleep until the 1-minute load minus ``own`` threads is below ``max_load`` (or ``wait_s`` passes)."""
    deadline = time.monotonic() + wait_s
    load = os.getloadavg()[0]
    while load - own > max_load and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (32 = full LLaVA-1.5-7B depth)")
    ap.add_argument("--k", type=int, default=2, help="pruning layer K (paper: 2); must be < --layers")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--text", type=int, default=35, help="text tokens around the 576 visual tokens")
    ap.add_argument("--budgets", type=int, nargs="+", default=[192, 128, 64])
    ap.add_argument("--fastv-keep", choices=["match", "budget"], default="match",
                    help="FastV keeps as many tokens as ILP's rectangle (match) or exactly R (budget)")
    ap.add_argument("--reps", type=int, default=7, help="measured rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--decode", type=int, default=4, help="decode steps timed per run (0 = none)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for the whole run)")
    ap.add_argument("--max-load", type=float, default=1.5, help="wait before a round while load - threads exceeds this")
    ap.add_argument("--wait", type=float, default=120.0, help="longest wait for the load per round (s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the per-round order")
    a = ap.parse_args(argv)
    if not 1 <= a.k < a.layers:
        ap.error(f"--k must be in 1..{a.layers - 1}")
    if a.reps < 1 or a.threads < 1:
        ap.error("--reps and --threads must be >= 1")
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    elem = torch.finfo(dtype).bits // 8
    lay = layout(a.text)
    n = lay.seq_len
    start_load = os.getloadavg()
    model = build(a.layers, a.device, dtype)
    ids = torch.randint(10, VOCAB, (1, n), device=a.device)  # (1, N)
    ids[0, lay.visual_positions] = IMAGE_ID  # placeholder id; the model is text-only here
    model.config.image_token_id = IMAGE_ID  # so the plug-in's prefill guard checks these positions, as on a VLM
    cfgs = make_configs(lay, a.budgets, a.fastv_keep)
    rng = random.Random(a.seed)
    loads, layer_t = [], {}
    with torch.no_grad():
        for rnd in range(a.warmup + a.reps):
            order = list(cfgs)
            rng.shuffle(order)  # interleaved: a fresh order every round
            measured = rnd >= a.warmup
            if measured:
                loads.append(wait_for_load(a.max_load, a.threads, a.wait))
            for cfg in order:
                wall, cpu, dec, kv, peak = run_once(model, cfg, lay, ids, a.k, a.device, a.decode)
                if measured:
                    cfg.samples["wall"].append(wall)
                    cfg.samples["cpu"].append(cpu)
                    cfg.samples["dec"].append(dec)
                    cfg.kv = kv
                    if a.device.startswith("cuda"):
                        cfg.peak = max(cfg.peak, peak)
            lens = sorted({n - (SIDE * SIDE - c.kept) for c in cfgs})
            rng.shuffle(lens)
            for m in lens:  # kernel calibration, in the same round
                t = layer_time(model, m, a.device)
                if measured:
                    layer_t.setdefault(m, []).append(t)
            print(f"round {rnd + 1}/{a.warmup + a.reps} {'measured' if measured else 'warm-up'} "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        hooks = {c.name: hook_ms(model, c, lay, ids, a.k) for c in cfgs}
        if not a.device.startswith("cuda"):  # CPU peak memory: a separate, untimed pass (max of two)
            for _ in range(2):
                for cfg in cfgs:
                    cfg.peak = max(cfg.peak, run_once(model, cfg, lay, ids, a.k, a.device, a.decode, memory=True)[4])
    end_load = os.getloadavg()
    report(a, cfgs, n, elem, start_load, end_load, loads, layer_t, hooks)
    return 0


def report(a, cfgs: list[Config], n: int, elem: int, start_load, end_load, loads: list[float],
           layer_t: dict, hooks: dict) -> None:
    base = cfgs[0]
    bw = base.samples["wall"]
    b_wall, b_cpu, b_min = statistics.median(bw), statistics.median(base.samples["cpu"]), min(bw)
    b_flops = prefill_flops(n, n, a.layers, a.layers)
    print(f"layers={a.layers} K={a.k} device={a.device} dtype={a.dtype} threads={a.threads} tokens={n} "
          f"(576 visual) reps={a.reps} warmup={a.warmup} fastv-keep={a.fastv_keep}")
    print(f"load (1/5/15 min) at start {start_load[0]:.2f}/{start_load[1]:.2f}/{start_load[2]:.2f}, "
          f"end {end_load[0]:.2f}/{end_load[1]:.2f}/{end_load[2]:.2f}; before rounds "
          f"min {min(loads):.2f} max {max(loads):.2f} (includes this process's {a.threads} thread(s) after round 1)")
    lt = {m: statistics.median(v) for m, v in layer_t.items()}
    print("one unhooked layer, median ms by length: " + ", ".join(f"{m}: {lt[m] * 1e3:.0f}" for m in sorted(lt))
          + "  (per-FLOP cost vs full length: " + ", ".join(
              f"{m}: {lt[m] / lt[n] * layer_flops(n) / layer_flops(m):.3f}" for m in sorted(lt)) + ")")
    print("meas/ideal = (time ratio) / (FLOP ratio) from: median times | paired per-round ratios | CPU times | minima;")
    print("kernel r = K t(n) + (L-K) t(m) over L t(n) from the unhooked layer; meas/kern = time r / kernel r;")
    print("hooks ms = time inside the plug-in's hooks per prefill (cProfile)")
    if not a.device.startswith("cuda"):
        fixed = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        print("peak MiB (CPU) = peak RSS above the RSS before the call, prefill + decode, sampled every ~1 ms "
              "in an untimed pass after the rounds (max of two calls); glibc mmap threshold "
              + (f"fixed at {fixed} B: tracks live tensors" if fixed else
                 "dynamic: can be off by tens of MiB, set MALLOC_MMAP_THRESHOLD_=131072 for memory figures"))
    print(f"{'config':<12}{'kept':>5}{'prefill ms':>11}{'IQR':>6}{'cpu/wall':>9}{'dec ms/tok':>11}"
          f"{'KV MiB':>8}{'KV ideal':>9}{'peak MiB':>9}{'FLOP r':>8}{'time r':>8}{'meas/ideal':>11}"
          f"{'paired':>8}{'cpu':>7}{'min':>7}{'kernel r':>9}{'meas/kern':>10}{'hooks ms':>9}")
    wall_of = {}
    for c in cfgs:
        ws = c.samples["wall"]
        wall, cpu = statistics.median(ws), statistics.median(c.samples["cpu"])
        wall_of[c.name] = wall
        m = n - (SIDE * SIDE - c.kept)
        k = a.k if c.kind else a.layers
        fr = prefill_flops(n, m, a.layers, k, select=c.kind == "fastv") / b_flops
        tr, cr = wall / b_wall, cpu / b_cpu
        paired = statistics.median(w / b for w, b in zip(ws, bw))
        kvi = kv_bytes_ideal(n, m, a.layers, k, elem)
        kern = (k * lt[n] + (a.layers - k) * lt[m]) / (a.layers * lt[n])
        pk = f"{c.peak / 2**20:.0f}" if c.peak or not a.device.startswith("cuda") else "-"
        print(f"{c.name:<12}{c.kept:>5}{wall * 1e3:>11.1f}{spread(ws) * 100:>5.1f}%"
              f"{cpu / wall:>9.2f}{statistics.median(c.samples['dec']) * 1e3:>11.1f}{c.kv / 2**20:>8.2f}"
              f"{kvi / 2**20:>9.2f}{pk:>9}{fr:>8.3f}{tr:>8.3f}{tr / fr:>11.3f}{paired / fr:>8.3f}"
              f"{cr / fr:>7.3f}{min(ws) / b_min / fr:>7.3f}{kern:>9.3f}{tr / kern:>10.3f}{hooks[c.name]:>9.2f}"
              + ("" if c.kv == kvi else "  KV MISMATCH"))
    print("ILP vs FastV at equal R (prefill time ILP/FastV from medians | paired per round; <= 1: ILP no slower):")
    for r in a.budgets:
        ilp, fv = (next(c for c in cfgs if c.name == f"{kind} R={r}") for kind in ("ILP", "FastV"))
        paired = statistics.median(i / f for i, f in zip(ilp.samples["wall"], fv.samples["wall"]))
        print(f"  R={r}: {wall_of[ilp.name] / wall_of[fv.name]:.3f} | {paired:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
