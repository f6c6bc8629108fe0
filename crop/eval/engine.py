"""One loaded model + frontend that answers questions with the configured method.

Decoding is greedy at batch size 1, as LLaVA-1.5's evaluation; :meth:`Engine.answer_batch`
(``crop eval --batch-size N``) answers N questions in one ``generate`` through the lmms-eval
plug-in's ragged batch core (:class:`crop.lmms.batch.BatchAnswerer`, one owner of batched
pruning), with the same answers and kept counts as batch 1. Latency is measured around the
method adapter's ``generate`` with :class:`crop.eval.efficiency.LatencyProbe` on the underlying
VLM (the wrapped LLaVA for PLC), per phase (image encoding, prefill forward, decode, KV cache).

An in-process localizer is timed apart (``localizer_s``), never inside the VLM's figures. With
:meth:`Engine.ahead_regions` (``crop eval --ahead-of-time``) it runs on a worker thread one
question ahead of the VLM (:func:`crop.models.ahead.predict_ahead`, paper Sec. 4.4); each row
then also says how long the VLM waited for its region (``localizer_wait_s``): after the first
question, only as long as the localizer is slower than the VLM.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from crop.eval.config import AVERAGE_METHODS, REGION_METHODS, BenchmarkConfig, EvalConfig
from crop.eval.methods import METHODS, RegionSource
from crop.eval.models import Frontend, image_token_id, load_frontend, load_model


class Engine:
    """Model, frontend (tokenizer, image processor, prompt style) and region source of a run."""

    def __init__(self, cfg: EvalConfig, model: Any, frontend: Frontend, device: Any, dtype: Any):
        self.cfg, self.model, self.frontend, self.device, self.dtype = cfg, model, frontend, device, dtype
        self.image_token_id = image_token_id(model)
        self.regions = RegionSource(cfg.method) if cfg.method.name in REGION_METHODS else None
        self.max_new_tokens = 128
        self._region_cache: dict[tuple[str, str], Any] = {}  # (benchmark, key) -> region: a localizer runs once
        self._localizer_s: dict[tuple[str, str], dict[str, float]] = {}  # (benchmark, key) -> localizer timing
        self._scales: dict[str, float] = {}  # benchmark -> averaged-budget scale

    @classmethod
    def load(cls, cfg: EvalConfig, rank: int | None = None) -> "Engine":
        """Thin ``from_pretrained`` loading; nothing else happens here. ``rank`` (one process of
        several): without ``model.device``, that process takes GPU ``LOCAL_RANK`` when GPUs exist."""
        import os

        import torch

        dtype = getattr(torch, cfg.model.dtype)
        default = "cuda" if torch.cuda.is_available() else "cpu"
        if rank is not None and default == "cuda":
            default = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
        device = torch.device(cfg.model.device or default)
        frontend = load_frontend(cfg)
        return cls(cfg, load_model(cfg, device, dtype), frontend, device, dtype)

    def gen_kwargs(self) -> dict[str, Any]:
        tok = self.frontend.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return {"do_sample": False, "num_beams": 1, "max_new_tokens": self.max_new_tokens, "pad_token_id": pad}

    def generate(self, inputs: dict) -> Any:
        import torch

        with torch.inference_mode():
            return self.model.generate(**inputs, **self.gen_kwargs())

    def _to_device(self, enc: dict) -> dict:
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in enc.items() if hasattr(v, "to")}

    def region(self, item: Any, original: Any, benchmark: str) -> Any:
        """The question's region on its original image (regions file or localizer; cached per key)."""
        if self.regions is None:
            return None
        if (benchmark, item.key) not in self._region_cache:
            region, seconds = self._timed_region(item, original, benchmark)
            self._region_cache[benchmark, item.key] = region
            if seconds is not None:
                self._localizer_s[benchmark, item.key] = {"localizer_s": seconds}
        return self._region_cache[benchmark, item.key]

    def _timed_region(self, item: Any, original: Any, benchmark: str) -> tuple[Any, float | None]:
        """(region, localizer seconds or None for a regions file).

        On CUDA the *current stream* is synchronised around the call, not the device: ahead of
        time the localizer runs on its own stream (``predict_ahead``), and a device-wide sync
        there would also wait for the VLM's kernels and count them as the localizer's time."""
        import torch

        localizer = self.regions.localizer
        if localizer is None:
            return self.regions.region(item, original, benchmark), None
        device = next(localizer.model.parameters()).device
        sync = torch.cuda.current_stream(device).synchronize if device.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        region = self.regions.region(item, original, benchmark)
        sync()
        return region, time.perf_counter() - t

    def ahead_regions(self, items: Iterable[Any], bench: BenchmarkConfig) -> Iterator[Any]:
        """Yield ``items`` in order with their regions already in the cache, the localizer
        running one question ahead on a worker thread (its own CUDA stream on a GPU).

        Each region's wait -- how long this (the VLM's) thread blocked for it -- is recorded for
        the question's efficiency row. Without an in-process localizer the items pass through.
        Regions already cached (e.g. by ``budget_mode: average``'s calibration, which must see
        every region before the first answer) are not computed again.
        """
        if self.regions is None or self.regions.localizer is None:
            yield from items
            return
        from PIL import Image

        from crop.models.ahead import predict_ahead

        class _Worker:
            """``predict`` for one question -> [(region, seconds)]: runs on predict_ahead's thread."""

            def predict(inner, images: list, questions: list) -> list:
                (item,) = questions
                if (bench.name, item.key) in self._region_cache or not item.image:
                    return [(self._region_cache.get((bench.name, item.key)), None)]
                original = Image.open(Path(bench.image_folder) / item.image).convert("RGB")
                return [self._timed_region(item, original, bench.name)]

        stream = next(self.regions.localizer.model.parameters()).device.type == "cuda"
        batches = predict_ahead(_Worker(), items, depth=1, get_inputs=lambda it: ([None], [it]), cuda_stream=stream)
        while True:
            t = time.perf_counter()
            try:
                item, [(region, seconds)] = next(batches)
            except StopIteration:
                return
            wait = time.perf_counter() - t
            if seconds is not None:
                self._region_cache[bench.name, item.key] = region
                self._localizer_s[bench.name, item.key] = {"localizer_s": seconds, "localizer_wait_s": wait}
            yield item

    def budget_scale(self, bench: BenchmarkConfig) -> float | None:
        """The benchmark's one region scale under ``budget_mode: average`` (None otherwise)."""
        m = self.cfg.method
        if m.budget_mode != "average" or m.name not in AVERAGE_METHODS or m.budget is None:
            return None
        if bench.name not in self._scales:
            self._scales[bench.name] = self._calibrate(bench)
        return self._scales[bench.name]

    def _calibrate(self, bench: BenchmarkConfig) -> float:
        """Scale every image question's region by one factor so the mean kept count is R.

        All of the benchmark's questions (``limit`` applied; answered ones too, so a resumed run
        gets the same scale) are encoded once to read their token layouts; no model forward runs.
        Writes ``<output_dir>/<benchmark>/budget.json`` (target, scale, achieved mean and spread).
        """
        import json

        from PIL import Image

        from crop.eval.methods import region_for_method
        from crop.eval.prompts import load_questions
        from crop.pruning import token_layout
        from crop.pruning.average import AverageSample, calibrate_scale
        from crop.pruning.region_map import to_box_norm

        m = self.cfg.method
        items = load_questions(bench.name, bench.question_file)
        if bench.limit is not None:
            items = items[: bench.limit]
        samples = []
        for item in items:
            if not item.image:
                continue
            original = Image.open(Path(bench.image_folder) / item.image).convert("RGB")
            region = region_for_method(m.name, self.region(item, original, bench.name), m.seed, item.key)
            _, enc = self.frontend.encode(item.message, self.frontend.prepare_image(original))
            layout = token_layout(self.model, enc)[0]
            samples.append(AverageSample(layout, to_box_norm(region), original.size, self.frontend.llava_geometry))
        choice = calibrate_scale(samples, m.budget)
        out = Path(self.cfg.output_dir) / bench.name
        out.mkdir(parents=True, exist_ok=True)
        (out / "budget.json").write_text(json.dumps({"benchmark": bench.name, **choice.summary()}, indent=2),
                                         encoding="utf-8")
        return choice.scale

    def answer(self, item: Any, bench: BenchmarkConfig) -> tuple[str, dict[str, Any]]:
        """Greedy answer to one question and its efficiency row (latency, visual tokens, region)."""
        from PIL import Image

        from crop.eval.efficiency import LatencyProbe, encoder_modules

        self.max_new_tokens = bench.max_new_tokens
        image = size_wh = region = None
        if item.image:
            original = Image.open(Path(bench.image_folder) / item.image).convert("RGB")
            size_wh = original.size
            # The localizer sees the original image, as in training and `crop predict-regions`; its
            # region is a region of the original image, mapped once by crop.pruning.region_map.
            region = self.region(item, original, bench.name)
            image = self.frontend.prepare_image(original)  # what the VLM's processor sees
        prompt, enc = self.frontend.encode(item.message, image)
        inputs = self._to_device(enc)
        name = self.cfg.method.name if image is not None else "none"  # text-only: nothing to prune
        ctx = {"key": item.key, "size_wh": size_wh, "image": image, "prompt": prompt, "message": item.message,
               "region": region, "budget_scale": self.budget_scale(bench) if region is not None else None}
        target = getattr(self.model, "llava", self.model)
        with LatencyProbe(target, encoder_modules(self.model)) as probe:  # a PLC wrapper's compressor too
            probe.start()
            out, info = METHODS[name](self, inputs, ctx)
            timing = probe.stop()
        has_prompt = info.pop("output_has_prompt", True)
        start = info.pop("prompt_len", inputs["input_ids"].shape[1]) if has_prompt else 0
        new = out[0, start:]  # (new,)
        text = self.frontend.tokenizer.decode(new, skip_special_tokens=True).strip()
        if ctx["region"] is not None:
            info["region"] = list(ctx["region"])
        if ctx["budget_scale"] is not None:
            info["budget_scale"] = ctx["budget_scale"]
        localizer = self._localizer_s.get((bench.name, item.key), {}) if region is not None else {}
        return text, {**info, **timing, **localizer, "new_tokens": int(new.numel())}

    # -- batched answers (crop eval --batch-size N) ---------------------------------------------

    # per-phase figures of a batch shared out over its rows (``forward_calls`` stays the batch's)
    SHARED_FIELDS = ("prefill_s", "total_s", "encode_s", "forward_prefill_s", "decode_s", "decode_s_per_token",
                     "kv_cache_s", "kv_cache_bytes")

    def batchable(self, bench: BenchmarkConfig) -> bool:
        """Whether questions can go N at a time: PLC (its own LLaVA wrapper and prompt expansion)
        and ``budget_mode: average`` (one calibrated region scale, applied by crop eval's own ILP
        adapter) answer one question at a time."""
        return self.cfg.method.name != "plc" and self.budget_scale(bench) is None

    def batch_answerer(self) -> Any:
        """The ragged batch core over this engine's model, frontend and regions (made once)."""
        if getattr(self, "_batcher", None) is None:
            from crop.lmms.batch import BatchAnswerer

            self._batcher = BatchAnswerer(self.model, self.frontend, self.cfg.method, self.device, self.dtype,
                                          regions=self if self.regions is not None else None)
        return self._batcher

    def answer_batch(self, items: list[Any], bench: BenchmarkConfig) -> list[tuple[str, dict[str, Any]]]:
        """Greedy answers and efficiency rows of ``items``, in order, from one batched call.

        Texts and visual-token counts equal :meth:`answer`'s (tests/eval/test_eval_batched.py);
        the latency fields are the batch's wall time divided by its rows, and each row says
        ``batch_size``. Methods that cannot batch (:meth:`batchable`) go one at a time."""
        if not self.batchable(bench):
            return [self.answer(item, bench) for item in items]
        if len(items) == 1:  # a benchmark's last, short batch
            text, info = self.answer(items[0], bench)
            return [(text, {**info, "batch_size": 1})]
        from PIL import Image

        from crop.eval.efficiency import LatencyProbe, encoder_modules
        from crop.lmms.batch import Question

        self.max_new_tokens = bench.max_new_tokens
        questions = []
        for item in items:
            original = Image.open(Path(bench.image_folder) / item.image).convert("RGB") if item.image else None
            questions.append(Question(item.message, original, item.key, item.question, bench.name))
        answerer = self.batch_answerer()
        with LatencyProbe(self.model, encoder_modules(self.model)) as probe:
            probe.start()
            answers = answerer.answer(questions, max_new_tokens=bench.max_new_tokens)
            timing = probe.stop()
        rows = len(items)
        shared = {k: (v / rows if isinstance(v, (int, float)) and k in self.SHARED_FIELDS else v)
                  for k, v in timing.items()}
        if shared.get("kv_cache_bytes") is not None:
            shared["kv_cache_bytes"] = round(shared["kv_cache_bytes"])  # a row's share of the batch's cache
        out = []
        name = self.cfg.method.name
        for item, q, got in zip(items, questions, answers):
            info = dict(got.report)
            region = self.region(item, q.image, bench.name) if q.image is not None else None
            if region is not None and name in ("center", "random"):  # as batch 1: the given region + the one used
                info["region_used"] = info["region"]
            if region is not None:
                info["region"] = list(region)
            localizer = self._localizer_s.get((bench.name, item.key), {}) if region is not None else {}
            out.append((got.text, {**info, **shared, **localizer, "new_tokens": got.new_tokens, "batch_size": rows}))
        return out
