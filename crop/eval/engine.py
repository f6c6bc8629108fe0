"""One loaded model + frontend that answers one question at a time with the configured method.

Decoding is greedy at batch size 1, as LLaVA-1.5's evaluation. Latency is measured around the
method adapter's ``generate`` with :class:`crop.eval.efficiency.LatencyProbe` on the underlying
VLM (the wrapped LLaVA for PLC).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crop.eval.config import REGION_METHODS, BenchmarkConfig, EvalConfig
from crop.eval.methods import METHODS, RegionSource
from crop.eval.models import Frontend, image_token_id, load_frontend, load_model


class Engine:
    """Model, frontend (tokenizer, image processor, prompt style) and region source of a run."""

    def __init__(self, cfg: EvalConfig, model: Any, frontend: Frontend, device: Any, dtype: Any):
        self.cfg, self.model, self.frontend, self.device, self.dtype = cfg, model, frontend, device, dtype
        self.image_token_id = image_token_id(model)
        self.regions = RegionSource(cfg.method) if cfg.method.name in REGION_METHODS else None
        self.max_new_tokens = 128

    @classmethod
    def load(cls, cfg: EvalConfig) -> "Engine":
        """Thin ``from_pretrained`` loading; nothing else happens here."""
        import torch

        dtype = getattr(torch, cfg.model.dtype)
        device = torch.device(cfg.model.device or ("cuda" if torch.cuda.is_available() else "cpu"))
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

    def answer(self, item: Any, bench: BenchmarkConfig) -> tuple[str, dict[str, Any]]:
        """Greedy answer to one question and its efficiency row (latency, visual tokens, region)."""
        from PIL import Image

        from crop.eval.efficiency import LatencyProbe

        self.max_new_tokens = bench.max_new_tokens
        image = size_wh = region = None
        if item.image:
            original = Image.open(Path(bench.image_folder) / item.image).convert("RGB")
            size_wh = original.size
            # The localizer sees the original image, as in training and `crop predict-regions`; its
            # region is a region of the original image, mapped once by crop.pruning.region_map.
            region = self.regions.region(item, original, bench.name) if self.regions else None
            image = self.frontend.prepare_image(original)  # what the VLM's processor sees
        prompt, enc = self.frontend.encode(item.message, image)
        inputs = self._to_device(enc)
        name = self.cfg.method.name if image is not None else "none"  # text-only: nothing to prune
        ctx = {"key": item.key, "size_wh": size_wh, "image": image, "prompt": prompt, "message": item.message,
               "region": region}
        target = getattr(self.model, "llava", self.model)
        with LatencyProbe(target) as probe:
            probe.start()
            out, info = METHODS[name](self, inputs, ctx)
            timing = probe.stop()
        has_prompt = info.pop("output_has_prompt", True)
        start = info.pop("prompt_len", inputs["input_ids"].shape[1]) if has_prompt else 0
        new = out[0, start:]  # (new,)
        text = self.frontend.tokenizer.decode(new, skip_special_tokens=True).strip()
        if ctx["region"] is not None:
            info["region"] = list(ctx["region"])
        return text, {**info, **timing, "new_tokens": int(new.numel())}
