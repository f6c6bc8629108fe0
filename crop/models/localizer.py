"""The Localization Module (paper Sec. 3.2): a Qwen2-VL that answers with an 8x8 block region.

``Localizer.predict(images, questions)`` runs batched greedy generation of a short answer and
parses it. Parsing order, recorded per prediction in ``Prediction.status``:

1. ``"strict"``   -- :func:`crop.formatting.parse_region_strict` accepts the answer;
2. ``"lenient"``  -- otherwise the first four in-range integers (:func:`parse_region_lenient`);
3. ``"fallback"`` -- otherwise the whole image (``full_region``), so a pruning method downstream
   keeps every token instead of pruning on a guess.

``Localizer.counts`` adds up the statuses over the object's lifetime; the raw decoded text is kept
in every :class:`Prediction`.

Several regions (issue 21): with ``max_regions = N > 1`` the answer is read with the multi-region
template (``"x0 y0 x1 y1; x0 y0 x1 y1."``, :func:`crop.formatting.parse_regions_strict`, else
:func:`~crop.formatting.parse_regions_lenient`), and the parsed rectangles are put in the data's
form by :func:`crop.geometry.multi_region.merge_regions` (touching ones merged, at most N, reading
order). ``Prediction.regions`` holds them, ``Prediction.region`` their bounding rectangle. A
localizer trained by ``crop train-localizer`` with ``max_regions: N`` predicts with that N by
default (read from the folder's ``train_config.yaml``). ``max_new_tokens`` is per region.

:func:`build_tiny_localizer` assembles a randomly initialised, tiny Qwen2-VL with a locally trained
byte-level BPE tokenizer that carries Qwen2-VL's special tokens and a Qwen-style chat template:
no download, used by the tests and the learning benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from crop.formatting import (
    REGION_PROMPT_SUFFIX,
    RegionParseError,
    parse_region_lenient,
    parse_region_strict,
    parse_regions_lenient,
    parse_regions_strict,
)
from crop.geometry import Region, full_region
from crop.geometry.multi_region import bounding_region, merge_regions
from crop.models.localizer_data import IM_END, QwenChatEncoder, region_messages

if TYPE_CHECKING:
    import torch
    from PIL import Image

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<|box_start|>", "<|box_end|>")

# Qwen2-VL chat layout (default system turn, image as vision_start/image_pad/vision_end), written
# for the tiny tokenizer; a real checkpoint brings its own template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class Prediction:
    region: Region  # with several regions: their bounding rectangle
    raw: str
    status: str  # "strict" | "lenient" | "fallback"
    regions: list[Region] | None = None  # the regions in reading order (None: one region, ``region``)


def parse_with_fallback(text: str, grid: int = 8, max_regions: int = 1) -> Prediction:
    """Strict parse, else lenient, else the whole image (see module docstring)."""
    if max_regions > 1:
        return _parse_many(text, grid, max_regions)
    try:
        return Prediction(parse_region_strict(text, grid), text, "strict")
    except RegionParseError:
        pass
    region = parse_region_lenient(text, grid)
    if region is not None:
        return Prediction(region, text, "lenient")
    return Prediction(full_region(grid), text, "fallback")


def _parse_many(text: str, grid: int, max_regions: int) -> Prediction:
    try:
        found, status = parse_regions_strict(text, grid), "strict"
    except RegionParseError:
        found, status = parse_regions_lenient(text, grid), "lenient"
    if not found:
        return Prediction(full_region(grid), text, "fallback", [full_region(grid)])
    regions = merge_regions(found, max_regions, grid)
    return Prediction(bounding_region(regions), text, status, regions)


def trained_max_regions(path: str) -> int:
    """``max_regions`` of a ``crop train-localizer`` folder (its ``train_config.yaml``); 1 otherwise."""
    import os

    cfg = os.path.join(path, "train_config.yaml")
    if not os.path.isfile(cfg):
        return 1
    import yaml

    with open(cfg, encoding="utf-8") as f:
        value = (yaml.safe_load(f) or {}).get("max_regions", 1)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


@dataclass
class Localizer:
    """A Qwen2-VL model + chat encoder that predicts block regions."""

    model: Any  # Qwen2VLForConditionalGeneration
    encoder: QwenChatEncoder
    grid: int = 8
    max_new_tokens: int = 12  # per region
    batch_size: int = 8
    max_regions: int = 1  # > 1: read the multi-region template (issue 21)
    counts: dict[str, int] = field(default_factory=lambda: {"strict": 0, "lenient": 0, "fallback": 0})

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "auto", device: str | None = None,
                        min_pixels: int | None = None, max_pixels: int | None = None,
                        **kwargs: Any) -> "Localizer":
        """Load model, tokenizer and image processor from a local folder or Hub id.

        E.g. ``Localizer.from_pretrained("Qwen/Qwen2-VL-2B-Instruct")`` or a ``crop
        train-localizer`` output folder. ``min_pixels``/``max_pixels`` override the image budget.
        """
        import os

        import torch
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

        from crop.models.paths import check_model_source

        path = check_model_source(path, "localizer")
        pixel_kw = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, **pixel_kw)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=dtype)
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        if kwargs.get("max_regions") is None:  # the N it was trained with (train_config.yaml), else 1
            kwargs["max_regions"] = trained_max_regions(path) if os.path.isdir(path) else 1
        return cls(model, QwenChatEncoder(tokenizer, image_processor), **kwargs)

    def save_pretrained(self, path: str) -> None:
        """Model weights as safetensors, plus tokenizer and image processor files."""
        self.model.save_pretrained(path)
        self.encoder.tokenizer.save_pretrained(path)
        self.encoder.image_processor.save_pretrained(path)

    def _generate(self, images: Sequence["Image.Image"], questions: Sequence[str],
                  max_regions: int = 1) -> list[str]:
        import torch

        chats = [region_messages(q, None, self.grid) for q in questions]
        enc = self.encoder.encode(chats, list(images), generation=True, padding_side="left")
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        tok = self.encoder.tokenizer
        with torch.inference_mode():
            out = self.model.generate(  # (B, L + new)
                **enc, max_new_tokens=self.max_new_tokens * max_regions, do_sample=False, num_beams=1,
                eos_token_id=tok.convert_tokens_to_ids(IM_END), pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]  # (B, new)
        return tok.batch_decode(new, skip_special_tokens=True)

    def predict_detailed(self, images: Sequence["Image.Image"], questions: Sequence[str],
                         batch_size: int | None = None, max_regions: int | None = None) -> list[Prediction]:
        """Regions with their raw text and parse status, in input order (``max_regions``: default
        the localizer's own)."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        n = self.max_regions if max_regions is None else max_regions
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_regions must be an integer >= 1, got {n!r}")
        bs = batch_size or self.batch_size
        preds: list[Prediction] = []
        for start in range(0, len(images), bs):
            texts = self._generate(images[start:start + bs], questions[start:start + bs], n)
            for text in texts:
                p = parse_with_fallback(text, self.grid, n)
                self.counts[p.status] += 1
                preds.append(p)
        return preds

    def predict(self, images: Sequence["Image.Image"], questions: Sequence[str],
                batch_size: int | None = None, max_regions: int | None = None) -> list:
        """One ``Region`` per question; with ``max_regions`` > 1 (argument or the localizer's own)
        one list of Regions per question (reading order, at most N)."""
        if max_regions is None:  # the localizer's own N
            preds, n = self.predict_detailed(images, questions, batch_size), self.max_regions
        else:
            preds, n = self.predict_detailed(images, questions, batch_size, max_regions=max_regions), max_regions
        return [p.regions for p in preds] if n > 1 else [p.region for p in preds]


@dataclass(frozen=True)
class TinySpec:
    """A Qwen2-VL small enough to train on a CPU in minutes (real config classes, random weights)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vision_depth: int = 2
    vision_dim: int = 32
    vision_heads: int = 2
    vocab_size: int = 400
    image_size: int = 112
    seed: int = 0
    # M-RoPE: the rotary half-dim is split into (t, h, w) frequency bands, highest frequencies
    # first. With a tiny head_dim (32 -> 16 frequencies) and the usual theta 1e4, the h band
    # rotates < 0.3 rad and the w band < 0.02 rad across 8 rows/columns, so the LLM barely sees
    # where an image token sits. A small theta and wider h/w bands give it absolute-position
    # signal (see docs/localizer.md); None keeps the default split and theta.
    rope_theta: float = 10000.0
    mrope_section: tuple | None = None

    def __post_init__(self) -> None:
        half = self.hidden // self.heads // 2
        if self.mrope_section is not None:
            sec = tuple(int(x) for x in self.mrope_section)
            if len(sec) != 3 or sum(sec) != half or min(sec) < 0:
                raise ValueError(f"mrope_section must be 3 non-negative ints summing to head_dim/2 = {half}, "
                                 f"got {self.mrope_section}")
            object.__setattr__(self, "mrope_section", sec)
        if self.rope_theta <= 1:
            raise ValueError(f"rope_theta must be > 1, got {self.rope_theta}")

    def mrope(self) -> list[int]:
        """(t, h, w) sizes of the rotary half-dim bands."""
        if self.mrope_section is not None:
            return list(self.mrope_section)
        half = self.hidden // self.heads // 2
        return [half - 2 * (half // 3), half // 3, half // 3]


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 400):
    """Byte-level BPE trained on ``corpus`` + Qwen2-VL special tokens + chat template (any text
    stays encodable through the 256 byte symbols)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=IM_END, pad_token="<|endoftext|>",
                                  unk_token=None, model_max_length=4096)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_corpus() -> list[str]:
    """Text the tiny tokenizer should encode compactly: chat frame, prompts, block answers."""
    from crop.data.synthetic_localization import COLOURS, SHAPES, TEMPLATES

    lines = ["system\nYou are a helpful assistant.", "user\n", "assistant\n", REGION_PROMPT_SUFFIX]
    lines += [t.format(colour=c, shape=s) for t in TEMPLATES for c in COLOURS for s in SHAPES]
    lines += [f"{a} {b} {c} {d}." for a in range(8) for b in range(8) for c in (a, 7) for d in (b, 7)]
    return lines * 4


def build_tiny_localizer(spec: TinySpec = TinySpec(), **kwargs: Any) -> Localizer:
    """Random-init tiny Qwen2-VL + local tokenizer + Qwen2-VL image processor (no download)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tok = build_tiny_tokenizer(tiny_corpus(), spec.vocab_size)
    ids = tok.convert_tokens_to_ids
    mrope = spec.mrope()  # M-RoPE splits the rotary half-dim into (t, h, w) sections
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
            num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": float(spec.rope_theta), "mrope_section": mrope},
            bos_token_id=ids("<|endoftext|>"), eos_token_id=ids(IM_END), pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=spec.vision_depth, embed_dim=spec.vision_dim, hidden_size=spec.hidden,
                           num_heads=spec.vision_heads, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(spec.seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids(IM_END)
    model.generation_config.pad_token_id = tok.pad_token_id
    px = spec.image_size * spec.image_size
    image_processor = Qwen2VLImageProcessorPil(min_pixels=px, max_pixels=px)
    return Localizer(model.eval(), QwenChatEncoder(tok, image_processor), **kwargs)
