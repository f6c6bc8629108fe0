"""Model families for ``crop eval``: loading, image preparation, prompts and input encoding.

One :class:`Frontend` per run turns (message, image) into model inputs the way each family's
evaluation does:

* ``llava`` (LLaVA-1.5): the image is padded to a square of the processor's mean colour
  (LLaVA's ``image_aspect_ratio=pad``), ``vicuna_v1`` conversation, ``AutoProcessor``.
* ``llava_next``: the processor's own any-resolution tiling (no padding), ``vicuna_v1``
  conversation (the llava-v1.6-vicuna checkpoints), ``AutoProcessor``.
* ``qwen2_vl``: the tokenizer's chat template and ``Qwen2VLImageProcessorPil`` through
  :class:`crop.models.localizer_data.QwenChatEncoder`. Why not ``Qwen2VLProcessor``: in
  transformers 5 it requires a video processor, which needs torchvision (not a dependency);
  the encoder produces the same tensors (placeholder expansion ``t*h*w / merge**2``).

Loading is thin ``from_pretrained(path)``; nothing is downloaded by the tests (tiny models are
saved to a temporary folder first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crop.eval.config import EvalConfig
from crop.models.llava_view import view_geometry, view_image

MODEL_CLASSES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
                 "qwen2_vl": "Qwen2VLForConditionalGeneration"}
QWEN_MAX_LENGTH = 32768  # prompt tokens; Qwen2-VL's default pixel budget allows ~16k visual tokens


@dataclass
class Frontend:
    """Tokenizer + image processor of one family; ``encode`` gives the tensors ``generate`` takes.

    ``processor`` is the LLaVA families' ``AutoProcessor`` (None for Qwen2-VL, which uses
    ``encoder``). ``padded`` says whether images are padded to a square first (LLaVA-1.5 eval).
    """

    family: str
    tokenizer: Any
    image_processor: Any
    prompt_style: str
    padded: bool
    processor: Any = None
    encoder: Any = None

    @property
    def llava_geometry(self) -> str:
        """How ``crop.pruning.region_keep_plan`` maps a region into a LLaVA-1.5 view."""
        return view_geometry(self.image_processor, self.padded)

    @property
    def image_placeholder(self) -> str:
        return getattr(self.processor, "image_token", None) or "<image>"

    def prepare_image(self, image: Any) -> Any:
        """The RGB image the processor sees (padded to a square for LLaVA-1.5's eval); the same
        :func:`crop.models.llava_view.view_image` ``crop train-plc`` trains on."""
        return view_image(image, self.image_processor, self.padded)

    def messages(self, message: str, has_image: bool) -> list[dict]:
        """One user turn, image first (as ``crop.eval.prompts.chat_template_prompt`` renders it)."""
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": message}]
        return [{"role": "user", "content": content}]

    def prompt(self, message: str, has_image: bool) -> str:
        """The full prompt text the model reads (conversation template applied)."""
        from crop.eval.prompts import chat_template_prompt, vicuna_v1_prompt

        if self.prompt_style == "vicuna_v1":
            return vicuna_v1_prompt(message, has_image, self.image_placeholder)
        return chat_template_prompt(self.processor if self.processor is not None else self.tokenizer,
                                    message, has_image)

    def encode(self, message: str, image: Any | None) -> tuple[str, dict]:
        """(prompt text, CPU tensors: ``input_ids (1, N)``, ``attention_mask``, pixel inputs)."""
        if self.encoder is not None:
            prompt = self.prompt(message, image is not None)
            enc = self.encoder.encode([self.messages(message, image is not None)], [image], generation=True,
                                      padding_side="left")
            return prompt, enc
        prompt = self.prompt(message, image is not None)
        enc = self.processor(images=[image] if image is not None else None, text=prompt, return_tensors="pt")
        return prompt, {k: v for k, v in enc.items() if hasattr(v, "to")}


def resolve_prompt_style(family: str, style: str) -> str:
    if style != "auto":
        return style
    return "chat_template" if family == "qwen2_vl" else "vicuna_v1"


def resolve_padded(family: str, aspect: str) -> bool:
    return (family == "llava") if aspect == "auto" else aspect == "pad"


def load_frontend(cfg: EvalConfig) -> Frontend:
    """Processor side of ``cfg.model`` (``from_pretrained(path)``)."""
    import transformers

    m = cfg.model
    style, padded = resolve_prompt_style(m.family, m.prompt_style), resolve_padded(m.family, m.image_aspect)
    if m.family == "qwen2_vl":
        from crop.models.localizer_data import QwenChatEncoder

        pixel_kw = {k: v for k, v in (("min_pixels", m.min_pixels), ("max_pixels", m.max_pixels)) if v}
        image_processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(m.path, **pixel_kw)
        tokenizer = transformers.AutoTokenizer.from_pretrained(m.path)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"model.path {m.path}: the Qwen2-VL tokenizer has no chat template")
        encoder = QwenChatEncoder(tokenizer, image_processor, max_length=QWEN_MAX_LENGTH)
        return Frontend(m.family, tokenizer, image_processor, style, padded, encoder=encoder)
    processor = transformers.AutoProcessor.from_pretrained(m.path)
    return Frontend(m.family, processor.tokenizer, processor.image_processor, style, padded, processor=processor)


def load_model(cfg: EvalConfig, device: Any, dtype: Any) -> Any:
    """The VLM of ``cfg.model`` in eval mode (``LlavaPLC`` around LLaVA-1.5 for method plc)."""
    import transformers

    if cfg.method.name == "plc":
        from crop.models.llava_plc import LlavaPLC

        model = LlavaPLC.from_pretrained(cfg.model.path, plc_weights=cfg.model.plc_weights, dtype=dtype,
                                         device=device)
    else:
        cls = getattr(transformers, MODEL_CLASSES[cfg.model.family])
        model = cls.from_pretrained(cfg.model.path, dtype=dtype).to(device)
    return model.eval()


def image_token_id(model: Any) -> int | None:
    """The placeholder id whose positions hold visual tokens (``LlavaPLC`` exposes its own)."""
    tid = getattr(getattr(model, "config", None), "image_token_id", None)
    if tid is None and hasattr(model, "image_token_id"):
        tid = model.image_token_id
    return tid
