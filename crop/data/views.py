"""Views of a streamed sample for each consumer, and a collate that calls the caller's processor.

* :func:`raw_view`       -- the contract record and the image, untouched.
* :func:`vqa_view`       -- PLC / LLaVA co-fine-tuning: ``question -> answer`` with the region.
* :func:`localizer_view` -- Qwen2-VL chat messages for the localizer; owned by
  :mod:`crop.models.localizer_data` and imported from there only when called (torch-free here).
* :func:`collate`        -- batch views: ``build_fn`` turns each view into processor inputs, the
  processor given by the caller tokenizes/pads, other per-sample fields are padded here.

A "sample" is what :class:`crop.data.stream.ShardStream` yields: ``{"__key__", "json": record,
"image": PIL image or None, ...}``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from crop.formatting import IMAGE_TOKEN
from crop.geometry import Region

IGNORE_INDEX = -100


class ViewError(ValueError):
    """A record cannot be shown in the requested view; the message names the record key."""


def raw_view(sample: Mapping[str, Any]) -> dict:
    """The record as stored plus the image: ``{"key", "record", "image"}``."""
    return {"key": sample["__key__"], "record": sample["json"], "image": sample.get("image")}


def _first_exchange(conversations: Sequence[Mapping[str, str]], key: str) -> tuple[str, str]:
    human = next((i for i, t in enumerate(conversations) if t.get("from") == "human"), None)
    if human is None or human + 1 >= len(conversations) or conversations[human + 1].get("from") != "gpt":
        raise ViewError(f"record {key}: no human turn followed by a gpt turn")
    question = conversations[human]["value"].replace(IMAGE_TOKEN, "").strip()
    return question, conversations[human + 1]["value"]


def vqa_view(sample: Mapping[str, Any]) -> dict:
    """``{"key", "image", "question", "answer", "region", "conversations"}`` for PLC/LLaVA training.

    Region samples: question/answer are the record's own (the VQA pair, not the localizer prompt),
    ``region`` is the ground-truth :class:`~crop.geometry.Region` that drives the compression, and
    ``conversations`` is that pair as one LLaVA exchange (``<image>`` first) -- the record's own
    conversations are the localizer's prompt/target and not what the main VLM learns to answer.

    Instruction samples: ``conversations`` is the full (possibly multi-turn) LLaVA conversation;
    question/answer are its first exchange (``<image>`` removed) for convenience; ``region`` is None.
    """
    rec, key = sample["json"], sample.get("__key__") or sample["json"].get("key", "?")
    kind = rec.get("kind")
    image = sample.get("image")
    if kind == "region":
        if rec.get("question") is None or rec.get("answer") is None or rec.get("region_blocks") is None:
            raise ViewError(f"record {key}: region sample lacks question, answer or region_blocks")
        try:
            region = Region(*rec["region_blocks"]).check(rec.get("grid_size") or 8)
        except (TypeError, ValueError) as e:
            raise ViewError(f"record {key}: bad region_blocks {rec['region_blocks']!r}: {e}") from e
        conversations = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{rec['question'].strip()}"},
                         {"from": "gpt", "value": rec["answer"]}]
        return {"key": key, "image": image, "question": rec["question"], "answer": rec["answer"],
                "region": region, "conversations": conversations}
    if kind == "instruction":
        conversations = [dict(t) for t in rec["conversations"]]
        question, answer = _first_exchange(conversations, key)
        return {"key": key, "image": image, "question": question, "answer": answer, "region": None,
                "conversations": conversations}
    raise ViewError(f"record {key}: unknown kind {kind!r}")


def localizer_view(sample: Mapping[str, Any]) -> dict:
    """Qwen2-VL chat view for the localizer, from :mod:`crop.models.localizer_data`.

    Uses that module's ``localizer_view`` when it defines one; otherwise composes its public
    ``record_to_messages``: ``{"key", "image", "messages"}``. Labels (everything but the assistant's
    answer masked) are made at batch time by ``crop.models.localizer_data.LocalizerCollator``.
    """
    from crop.models import localizer_data

    impl = getattr(localizer_data, "localizer_view", None)
    if impl is not None:
        return impl(sample)
    image = sample.get("image")
    messages = localizer_data.record_to_messages(sample["json"], has_image=image is not None)
    return {"key": sample.get("__key__"), "image": image, "messages": messages}


VIEWS: dict[str, Callable[[Mapping[str, Any]], dict]] = {
    "raw": raw_view, "vqa": vqa_view, "localizer": localizer_view}


def pad_sequences(seqs: Sequence[Sequence[int]], value: int, side: str = "right"):
    """Pad int sequences to the longest -> LongTensor ``(B, L)``."""
    import torch

    if side not in ("left", "right"):
        raise ValueError(f"padding side {side!r}: use 'left' or 'right'")
    longest = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), longest), value, dtype=torch.long)   # (B, L)
    for b, s in enumerate(seqs):
        if len(s):
            t = torch.as_tensor(list(s), dtype=torch.long)
            if side == "right":
                out[b, :len(s)] = t
            else:
                out[b, longest - len(s):] = t
    return out


def collate(batch: Sequence[Mapping[str, Any]], processor: Callable[..., Mapping],
            build_fn: Callable[[Mapping[str, Any]], Mapping[str, Any]], **processor_kw) -> dict:
    """Turn views into one padded batch.

    ``build_fn(view)`` returns a dict with ``"text"`` (str), optionally ``"images"`` (a PIL image,
    a list of them, or None for text-only) and any extra per-sample fields. The processor is called
    once as ``processor(text=[...], images=[...] or None, padding=True, return_tensors="pt",
    **processor_kw)``; images are flattened in sample order, which is how HF processors match them
    to the image tokens in the texts. Extra fields: int sequences are padded (``labels`` with -100,
    others with 0, on the tokenizer's padding side) to ``(B, L)`` tensors; anything else is kept as
    a list of length B.
    """
    if not batch:
        raise ValueError("collate(): empty batch")
    built = [dict(build_fn(v)) for v in batch]
    for i, b in enumerate(built):
        if not isinstance(b.get("text"), str):
            raise ViewError(f"build_fn returned no 'text' string for sample {i} "
                            f"({batch[i].get('key', '?')})")
    images: list = []
    for b in built:
        ims = b.pop("images", None)
        images.extend([] if ims is None else ims if isinstance(ims, (list, tuple)) else [ims])
    texts = [b.pop("text") for b in built]
    kw = {"padding": True, "return_tensors": "pt", **processor_kw}
    out = dict(processor(text=texts, images=images or None, **kw))
    side = getattr(getattr(processor, "tokenizer", None), "padding_side", "right")
    for name in sorted({k for b in built for k in b}):
        values = [b.get(name) for b in built]
        if all(isinstance(v, (list, tuple)) and all(isinstance(x, int) for x in v) for v in values):
            out[name] = pad_sequences(values, IGNORE_INDEX if name == "labels" else 0, side)
        else:
            out[name] = values
    return out
