"""The localizer's view of a sample: contract record + image -> Qwen2-VL chat -> model tensors.

Two pure steps and one thin tensor shell:

* :func:`record_to_messages` turns a region record (paper App. A template) or a LLaVA instruction
  record (multi-turn, possibly text-only) into Qwen2-VL chat messages.
* :class:`QwenChatEncoder` renders messages with the tokenizer's chat template, expands each
  ``<|image_pad|>`` placeholder to the number of merged visual tokens the image processor gives
  (what ``Qwen2VLProcessor`` does), tokenizes, and builds ``mm_token_type_ids``.
* :func:`assistant_label_mask` marks the tokens the loss sees: every assistant answer and the
  ``<|im_end|>`` that closes it; the role header, the prompt, the image and the padding are masked.

Why not ``Qwen2VLProcessor`` itself: in transformers 5 the processor requires a video processor,
which needs torchvision; the encoder below needs only the tokenizer and the image processor and
produces the same tensors (placeholder expansion ``grid_t*grid_h*grid_w / merge**2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from crop.formatting import IMAGE_TOKEN, format_region, format_regions, render_region_prompt

IGNORE_INDEX = -100
IMAGE_PAD = "<|image_pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
_ROLES = {"human": "user", "gpt": "assistant"}


class LocalizerSampleError(ValueError):
    """A record cannot be turned into localizer chat; the message names the record key."""


def region_messages(question: str, region: Sequence[int] | None, grid: int = 8,
                    with_image: bool = True) -> list[dict]:
    """Paper App. A as Qwen2-VL chat; ``region=None`` gives the prompt only (inference).

    ``region`` may also be a list of regions (issue 21): the target is the multi-region template
    ``"x0 y0 x1 y1; x0 y0 x1 y1."`` (a one-element list gives the single-region target)."""
    user: list[dict] = [{"type": "image"}] if with_image else []
    user.append({"type": "text", "text": render_region_prompt(question, with_image_token=False)})
    messages = [{"role": "user", "content": user}]
    if region is not None:
        several = len(region) > 0 and not isinstance(region[0], (int, float))
        target = format_regions(region, grid) if several else format_region(region, grid)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return messages


def target_regions(record: Mapping[str, Any], max_regions: int) -> Any:
    """The regions a record teaches with ``max_regions``: its ``region_blocks`` for 1 (the paper),
    else its regions (``crop.contract.regions_of``: ``regions_blocks``, or the one region of a
    version-1 record) merged down to at most ``max_regions`` (:func:`crop.geometry.multi_region.merge_regions`)."""
    if max_regions <= 1:
        return record["region_blocks"]
    from crop.contract import regions_of
    from crop.geometry.multi_region import merge_regions

    grid = record.get("grid_size") or 8
    return [list(r) for r in merge_regions(regions_of(record), max_regions, grid)]


def _split_image_token(text: str) -> list[dict]:
    """LLaVA human turn -> content parts, the ``<image>`` marker becoming an image part in place."""
    if IMAGE_TOKEN not in text:
        return [{"type": "text", "text": text}]
    before, _, after = text.partition(IMAGE_TOKEN)
    parts: list[dict] = []
    if before.strip():
        parts.append({"type": "text", "text": before.rstrip("\n")})
    parts.append({"type": "image"})
    if after.strip():
        parts.append({"type": "text", "text": after.lstrip("\n")})
    return parts


def instruction_messages(conversations: Sequence[Mapping[str, str]], has_image: bool,
                         key: str = "?") -> list[dict]:
    """LLaVA turns (human/gpt alternating) -> Qwen2-VL chat.

    The ``<image>`` marker of the first human turn becomes an image part at its place (start or
    end of the turn); a text-only record keeps no image part. A record with an image but no marker
    gets the image in front of its first turn, as LLaVA's own preprocessing does.
    """
    messages: list[dict] = []
    seen_image = False
    for i, turn in enumerate(conversations):
        role = _ROLES.get(turn.get("from", ""))
        if role is None:
            raise LocalizerSampleError(f"record {key}: turn {i} has unknown speaker {turn.get('from')!r}")
        value = turn.get("value", "")
        if role == "user" and has_image and not seen_image and IMAGE_TOKEN in value:
            content = _split_image_token(value)
            seen_image = True
        else:
            content = [{"type": "text", "text": value.replace(IMAGE_TOKEN, "").strip()}]
        messages.append({"role": role, "content": content})
    if has_image and not seen_image:
        if not messages or messages[0]["role"] != "user":
            raise LocalizerSampleError(f"record {key}: image but no human turn to attach it to")
        messages[0]["content"].insert(0, {"type": "image"})
    if not any(m["role"] == "assistant" for m in messages):
        raise LocalizerSampleError(f"record {key}: no gpt turn to learn from")
    return messages


def record_to_messages(record: Mapping[str, Any], has_image: bool, max_regions: int = 1) -> list[dict]:
    """Contract record -> chat messages (region template or LLaVA conversation; with
    ``max_regions`` > 1 the multi-region target of :func:`target_regions`)."""
    kind, key = record.get("kind"), record.get("key", "?")
    if kind == "region":
        if not has_image:
            raise LocalizerSampleError(f"record {key}: region sample without image")
        if record.get("question") is None or record.get("region_blocks") is None:
            raise LocalizerSampleError(f"record {key}: region sample lacks question or region_blocks")
        return region_messages(record["question"], target_regions(record, max_regions), record.get("grid_size") or 8)
    if kind == "instruction":
        return instruction_messages(record["conversations"], has_image, key)
    raise LocalizerSampleError(f"record {key}: unknown kind {kind!r}")


def find_subsequence(seq: Sequence[int], sub: Sequence[int], start: int = 0) -> int:
    n = len(sub)
    for i in range(start, len(seq) - n + 1):
        if list(seq[i:i + n]) == list(sub):
            return i
    return -1


def assistant_label_mask(ids: Sequence[int], header: Sequence[int], end_id: int) -> list[bool]:
    """True on the tokens of each assistant answer and its closing end token.

    ``header`` is the token sequence ``<|im_start|>assistant\\n``; an answer runs from just after it
    up to and including the next ``end_id``. An answer cut off by truncation is learned up to the cut.
    """
    mask = [False] * len(ids)
    pos = find_subsequence(ids, header)
    while pos >= 0:
        i = pos + len(header)
        while i < len(ids):
            mask[i] = True
            if ids[i] == end_id:
                break
            i += 1
        pos = find_subsequence(ids, header, i + 1)
    return mask


@dataclass
class QwenChatEncoder:
    """Tokenizer (with a Qwen2-VL chat template) + Qwen2-VL image processor -> model inputs."""

    tokenizer: Any
    image_processor: Any
    max_length: int = 2048

    def __post_init__(self) -> None:
        tok = self.tokenizer
        self.image_pad_id = tok.convert_tokens_to_ids(IMAGE_PAD)
        self.end_id = tok.convert_tokens_to_ids(IM_END)
        if self.image_pad_id is None or self.image_pad_id == tok.unk_token_id:
            raise ValueError(f"tokenizer has no {IMAGE_PAD} token: not a Qwen2-VL tokenizer")
        self.header_ids = tok(f"{IM_START}assistant\n", add_special_tokens=False)["input_ids"]
        self.merge = int(getattr(self.image_processor, "merge_size", 2))
        if tok.pad_token_id is None:
            raise ValueError("tokenizer has no pad token")

    def render(self, messages: list[dict], generation: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=generation)

    def encode(self, conversations: Sequence[list[dict]], images: Sequence[Any | None], *,
               generation: bool, padding_side: str) -> dict:
        """Batch of chats -> ``input_ids/attention_mask/mm_token_type_ids (B, L)``, pixels, labels.

        ``images[b]`` is a PIL image or ``None`` (text-only). ``labels`` (training only) keep the
        assistant tokens and are ``-100`` elsewhere.
        """
        import torch

        texts = [self.render(m, generation) for m in conversations]
        present = [im for im in images if im is not None]
        out: dict = {}
        counts: list[int] = []
        if present:
            vis = self.image_processor(images=[im.convert("RGB") for im in present], return_tensors="pt")
            grid = vis["image_grid_thw"]  # (N_img, 3) = (t, h, w) in patches
            counts = (grid.prod(-1) // (self.merge ** 2)).tolist()
            out["pixel_values"] = vis["pixel_values"]  # (sum_i t*h*w, C*T*P*P)
            out["image_grid_thw"] = grid
        it = iter(counts)
        expanded = []
        for b, (text, im) in enumerate(zip(texts, images)):
            n_marks = text.count(IMAGE_PAD)
            if n_marks != (1 if im is not None else 0):
                raise LocalizerSampleError(
                    f"sample {b}: chat has {n_marks} image placeholders for {int(im is not None)} image(s)")
            expanded.append(text.replace(IMAGE_PAD, IMAGE_PAD * next(it)) if im is not None else text)
        self.tokenizer.padding_side = padding_side
        enc = self.tokenizer(expanded, add_special_tokens=False, padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        ids = enc["input_ids"]  # (B, L)
        for b, n in enumerate(counts_per_sample(images, counts)):
            got = int((ids[b] == self.image_pad_id).sum())
            if got != n:
                raise LocalizerSampleError(
                    f"sample {b}: {got} image tokens after truncation to {self.max_length}, "
                    f"image needs {n}; raise max_length or lower max_pixels")
        out["input_ids"] = ids
        out["attention_mask"] = enc["attention_mask"]
        out["mm_token_type_ids"] = (ids == self.image_pad_id).to(torch.int32)
        if not generation:
            labels = torch.full_like(ids, IGNORE_INDEX)
            for b in range(ids.shape[0]):
                keep = assistant_label_mask(ids[b].tolist(), self.header_ids, self.end_id)
                keep_t = torch.tensor(keep, dtype=torch.bool) & enc["attention_mask"][b].bool()
                labels[b][keep_t] = ids[b][keep_t]
            out["labels"] = labels
        return out


def counts_per_sample(images: Sequence[Any | None], counts: Sequence[int]) -> list[int]:
    """Per-sample visual token counts, 0 for text-only samples."""
    it = iter(counts)
    return [next(it) if im is not None else 0 for im in images]


@dataclass
class LocalizerCollator:
    """Training collate: samples ``{"json": record, "image": PIL | None}`` -> a padded batch."""

    encoder: QwenChatEncoder
    max_regions: int = 1  # targets with up to this many regions (train config ``max_regions``)

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict:
        chats, images = [], []
        for s in samples:
            image = s.get("image")
            chats.append(record_to_messages(s["json"], has_image=image is not None, max_regions=self.max_regions))
            images.append(image)
        return self.encoder.encode(chats, images, generation=False, padding_side="right")

    def one(self, sample: Mapping[str, Any]) -> dict:
        """One sample encoded alone (what a DataLoader worker does); :meth:`stack` batches them."""
        return self([sample])

    def stack(self, rows: Sequence[Mapping[str, Any]]) -> dict:
        """Right-pad and concatenate :meth:`one` outputs: equal to ``self(samples)`` (the tokenizer's
        own right padding with its pad id; images concatenated in row order)."""
        import torch

        fill = {"input_ids": self.encoder.tokenizer.pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0,
                "labels": IGNORE_INDEX}
        width = max(int(r["input_ids"].shape[1]) for r in rows)
        out: dict = {}
        for key, value in fill.items():
            if key in rows[0]:
                out[key] = torch.cat([torch.nn.functional.pad(r[key], (0, width - r[key].shape[1]), value=value)
                                      for r in rows])  # (B, L)
        for key in ("pixel_values", "image_grid_thw"):
            parts = [r[key] for r in rows if key in r]
            if parts:
                out[key] = torch.cat(parts)  # (sum of patches, C*T*P*P) / (images, 3)
        return out
