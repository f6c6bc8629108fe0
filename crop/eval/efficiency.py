"""Per-question latency and memory figures for a run (paper Sec. 4.4, Table 4).

The paper follows prior work's efficiency setup: "image encoding time, KV cache load time, and
transformers forward time, while excluding model loading time and other overheads"; the
localizer runs beside the VLM ("ahead-of-time prediction") and is reported apart. Per question,
around one ``generate`` call (:class:`LatencyProbe`):

* ``prefill_s`` -- from the call until the first forward pass of the model returns: image
  encoding, projector, the pruned prompt forward and the first token's logits;
* ``encode_s`` -- of that, the time inside the image encoder modules (vision tower, projector,
  and the PLC compressor when present; :func:`encoder_modules`);
* ``forward_prefill_s`` -- ``prefill_s - encode_s``: the LLM's forward over the prompt;
* ``decode_s`` / ``decode_s_per_token`` -- ``total_s - prefill_s``, and that over the decode
  forwards (``forward_calls - 1``: the prefill already yields the first token);
* ``kv_cache_s`` -- time inside the KV cache's ``update`` calls (storing this step's keys and
  values and returning the layer's full keys/values for attention), over prefill and decode: the
  cache traffic the paper calls "KV cache load time" (it gives no finer definition);
* ``kv_cache_bytes`` -- keys + values the cache holds when ``generate`` returns (pruned layers
  hold fewer positions: the memory side of ILP);
* ``total_s`` -- the whole call; ``forward_calls`` -- forward passes (1 prefill + decode steps);
* visual tokens entering the LLM and kept after pruning (reported by the method adapter);
* ``localizer_s`` (and ``localizer_wait_s`` with ``--ahead-of-time``) are added by the engine:
  the localizer's own time is never inside ``prefill_s`` / ``total_s``.

How the clock is read. The first forward is found with a forward hook on the model instance; the
encoder spans with forward pre/post hooks on the encoder modules; the cache spans by wrapping
``update`` on the one cache object ``generate`` passes in (an instance attribute, removed
afterwards; the class is never patched). On CPU the spans are ``perf_counter`` intervals. On CUDA
they are CUDA event pairs recorded on the current stream and summed after the final
``synchronize`` -- GPU time, without a synchronisation per layer that would itself slow decoding
-- while ``prefill_s`` / ``total_s`` are wall times read after ``torch.cuda.synchronize()`` (a
streamer would not do: transformers streams tokens one step late on CUDA). Peak memory is
``torch.cuda.max_memory_allocated`` over the run (None on CPU).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from crop.compat import cache_of_kwargs

# Module names (last dotted part) that encode the image before the LLM: LLaVA / LLaVA-NeXT's CLIP
# tower and projector, Qwen2-VL's vision transformer (merger included), the PLC compressor.
ENCODER_NAMES = ("vision_tower", "multi_modal_projector", "visual", "plc")


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def encoder_modules(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost submodules of ``root`` named in :data:`ENCODER_NAMES` (none nested in another)."""
    found: list[tuple[str, torch.nn.Module]] = []
    for name, module in root.named_modules():
        if name.rsplit(".", 1)[-1] in ENCODER_NAMES and not any(name.startswith(p + ".") for p, _ in found):
            found.append((name, module))
    return [m for _, m in found]


class _Spans:
    """Summed durations of (possibly nested or re-entered) spans: perf_counter on CPU, events on CUDA.

    ``enter``/``exit`` may nest (a projector inside a PLC call): only the outermost pair counts.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.depth = 0
        self.seconds = 0.0
        self._events: list[tuple[Any, Any]] = []
        self._start: Any = None

    def enter(self) -> None:
        self.depth += 1
        if self.depth == 1:
            if self.cuda:
                self._start = torch.cuda.Event(enable_timing=True)
                self._start.record()
            else:
                self._start = time.perf_counter()

    def exit(self) -> None:
        self.depth = max(self.depth - 1, 0)
        if self.depth == 0 and self._start is not None:
            if self.cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self._events.append((self._start, end))
            else:
                self.seconds += time.perf_counter() - self._start
            self._start = None

    def total(self) -> float:
        """Seconds so far (on CUDA call after a synchronize: events must have completed)."""
        return self.seconds + sum(a.elapsed_time(b) for a, b in self._events) / 1e3


def cache_bytes(cache: Any) -> int | None:
    """Keys + values held by a transformers ``Cache`` (``cache.layers[i].keys/values``), or None."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    total = 0
    for layer in layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


class LatencyProbe:
    """Times prefill, decode, image encoding and KV cache traffic of generate calls on one model.

    Use as ``with LatencyProbe(model, encoders) as probe: probe.start(); model.generate(...);
    row = probe.stop()``. ``encoders`` defaults to :func:`encoder_modules` of ``model``.
    """

    def __init__(self, model: torch.nn.Module, encoders: Iterable[torch.nn.Module] | None = None):
        self.model = model
        self.device = next(model.parameters()).device
        self.encoders = list(encoder_modules(model) if encoders is None else encoders)
        self._handles: list[Any] = []
        self._t0 = 0.0
        self._first: float | None = None
        self.calls = 0
        self._cache: Any = None
        self._encode, self._kv = _Spans(self.device), _Spans(self.device)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        if self._first is None:
            _sync(self.device)
            self._first = time.perf_counter()

    def _pre_hook(self, module, args, kwargs) -> None:
        cache = cache_of_kwargs(kwargs)
        if cache is None or cache is self._cache:
            return
        self._unwrap_cache()
        self._cache = cache
        update, spans = cache.update, self._kv  # the bound method of this cache object

        def timed_update(*a: Any, **k: Any) -> Any:
            spans.enter()
            try:
                return update(*a, **k)
            finally:
                spans.exit()

        cache.update = timed_update  # instance attribute: this object only, removed in _unwrap_cache

    def _unwrap_cache(self) -> None:
        if self._cache is not None and "update" in vars(self._cache):
            del self._cache.update

    def __enter__(self) -> "LatencyProbe":
        self._handles.append(self.model.register_forward_hook(self._hook))
        self._handles.append(self.model.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        for m in self.encoders:
            self._handles.append(m.register_forward_pre_hook(lambda *_: self._encode.enter()))
            self._handles.append(m.register_forward_hook(lambda *_: self._encode.exit()))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._unwrap_cache()
        self._cache = None

    def start(self) -> None:
        _sync(self.device)
        self._unwrap_cache()
        self._first, self.calls, self._cache = None, 0, None
        self._encode, self._kv = _Spans(self.device), _Spans(self.device)
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        _sync(self.device)
        end = time.perf_counter()
        prefill = (self._first if self._first is not None else end) - self._t0
        encode = self._encode.total()
        decode = end - self._t0 - prefill
        steps = max(self.calls - 1, 0)
        return {"prefill_s": prefill, "total_s": end - self._t0, "forward_calls": self.calls,
                "encode_s": encode, "forward_prefill_s": max(prefill - encode, 0.0), "decode_s": decode,
                "decode_s_per_token": decode / steps if steps else None,
                "kv_cache_s": self._kv.total() if self._cache is not None else None,
                "kv_cache_bytes": cache_bytes(self._cache) if self._cache is not None else None}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


# per-question fields averaged in the summary (``<field>_mean``) when rows carry them
PHASE_FIELDS = ("encode_s", "forward_prefill_s", "decode_s", "decode_s_per_token", "kv_cache_s",
                "kv_cache_bytes", "localizer_s", "localizer_wait_s")


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
    """Aggregate the per-question rows written by the runner (``efficiency.jsonl``).

    Besides the fixed fields: ``<field>_mean`` for every :data:`PHASE_FIELDS` field some row has
    (rows of older runs lack them), ``kv_cache_bytes_max``, and ``localizer_s_sum``.
    """
    if not rows:
        return {"n": 0, "peak_memory_bytes": peak_bytes, "device": device}

    def values(key: str) -> list:
        return [r[key] for r in rows if r.get(key) is not None]

    def mean_of(key: str) -> float | None:
        vals = values(key)
        return statistics.fmean(vals) if vals else None

    prefill = [r["prefill_s"] for r in rows]
    summary = EfficiencySummary(
        n=len(rows), prefill_s_mean=statistics.fmean(prefill), prefill_s_median=statistics.median(prefill),
        total_s_mean=statistics.fmean(r["total_s"] for r in rows), total_s_sum=sum(r["total_s"] for r in rows),
        new_tokens_mean=statistics.fmean(r.get("new_tokens", 0) for r in rows),
        visual_tokens_in_mean=mean_of("visual_tokens_in"), visual_tokens_kept_mean=mean_of("visual_tokens_kept"),
        peak_memory_bytes=peak_bytes, device=device)
    out = dict(summary.__dict__)
    for key in PHASE_FIELDS:
        if values(key):
            out[f"{key}_mean"] = mean_of(key)
    if values("kv_cache_bytes"):
        out["kv_cache_bytes_max"] = max(values("kv_cache_bytes"))
    if values("localizer_s"):
        out["localizer_s_sum"] = sum(values("localizer_s"))
    return out
