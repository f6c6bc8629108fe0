"""Per-question latency and memory figures for a run (paper Sec. 4.4, Table 4).

What is measured, per question, around one ``generate`` call:

* ``prefill_s`` -- from the call until the first forward pass of the model returns: image
  encoding, projector, the pruned prompt forward and the first token's logits (the paper's
  "image encoding time ... and transformers forward time", model loading excluded);
* ``total_s`` -- the whole call (prefill + decoding);
* ``forward_calls`` -- forward passes (1 prefill + decode steps);
* visual tokens entering the LLM and kept after pruning (reported by the method adapter).

The first forward is found with a forward hook on the model instance (removed afterwards), and
on CUDA the clock is read after ``torch.cuda.synchronize()`` so queued kernels are counted. A
streamer would not do: transformers streams tokens one step late on CUDA. Peak memory is
``torch.cuda.max_memory_allocated`` over the run (None on CPU).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class LatencyProbe:
    """Times prefill and total latency of generate calls on one model instance.

    Use as ``with LatencyProbe(model) as probe: probe.start(); model.generate(...); t = probe.stop()``.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.device = next(model.parameters()).device
        self._handle = None
        self._t0 = 0.0
        self._first: float | None = None
        self.calls = 0

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        if self._first is None:
            _sync(self.device)
            self._first = time.perf_counter()

    def __enter__(self) -> "LatencyProbe":
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def start(self) -> None:
        _sync(self.device)
        self._first, self.calls = None, 0
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        _sync(self.device)
        end = time.perf_counter()
        prefill = (self._first if self._first is not None else end) - self._t0
        return {"prefill_s": prefill, "total_s": end - self._t0, "forward_calls": self.calls}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


@dataclass
class EfficiencySummary:
    n: int
    prefill_s_mean: float
    prefill_s_median: float
    total_s_mean: float
    total_s_sum: float
    new_tokens_mean: float
    visual_tokens_in_mean: float | None
    visual_tokens_kept_mean: float | None
    peak_memory_bytes: int | None
    device: str


def summarize(rows: list[dict[str, Any]], peak_bytes: int | None, device: str) -> dict[str, Any]:
    """Aggregate the per-question rows written by the runner (``efficiency.jsonl``)."""
    if not rows:
        return {"n": 0, "peak_memory_bytes": peak_bytes, "device": device}

    def mean_of(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return statistics.fmean(vals) if vals else None

    prefill = [r["prefill_s"] for r in rows]
    summary = EfficiencySummary(
        n=len(rows), prefill_s_mean=statistics.fmean(prefill), prefill_s_median=statistics.median(prefill),
        total_s_mean=statistics.fmean(r["total_s"] for r in rows), total_s_sum=sum(r["total_s"] for r in rows),
        new_tokens_mean=statistics.fmean(r.get("new_tokens", 0) for r in rows),
        visual_tokens_in_mean=mean_of("visual_tokens_in"), visual_tokens_kept_mean=mean_of("visual_tokens_kept"),
        peak_memory_bytes=peak_bytes, device=device)
    return dict(summary.__dict__)
