"""Views over region and instruction samples, and the processor-calling collate."""

from __future__ import annotations

import pytest
import torch

from crop.data.stream import ShardStream
from crop.data.views import ViewError, collate, localizer_view, pad_sequences, raw_view, vqa_view
from crop.geometry import Region


@pytest.fixture(scope="module")
def samples(shared_folder):
    return {s["__key__"]: s for s in ShardStream(shared_folder, decode=True, shuffle=False)}


def pick(samples, kind, with_image=True):
    return next(s for s in samples.values()
                if s["json"]["kind"] == kind and (s["image"] is not None) == with_image)


def test_vqa_view_of_a_region_sample(samples):
    s = pick(samples, "region")
    rec = s["json"]
    v = vqa_view(s)
    assert v["question"] == rec["question"] and v["answer"] == rec["answer"]
    assert isinstance(v["region"], Region) and list(v["region"]) == rec["region_blocks"]
    assert v["image"] is s["image"] and v["key"] == rec["key"]
    assert v["conversations"] == [{"from": "human", "value": "<image>\n" + rec["question"]},
                                  {"from": "gpt", "value": rec["answer"]}]


def test_vqa_view_of_instruction_samples(samples):
    s = pick(samples, "instruction")
    v = vqa_view(s)
    assert v["region"] is None
    assert v["conversations"] == s["json"]["conversations"] and len(v["conversations"]) == 4
    assert v["question"] == s["json"]["conversations"][0]["value"].replace("<image>", "").strip()
    assert "<image>" not in v["question"] and v["answer"] == s["json"]["conversations"][1]["value"]
    text_only = vqa_view(pick(samples, "instruction", with_image=False))
    assert text_only["image"] is None and text_only["region"] is None


def test_vqa_view_errors_name_the_record(samples):
    s = pick(samples, "region")
    broken = {**s, "json": {**s["json"], "region_blocks": [3, 0, 1, 7]}}
    with pytest.raises(ViewError, match=s["__key__"]):
        vqa_view(broken)
    weird = {**s, "json": {**s["json"], "kind": "caption"}}
    with pytest.raises(ViewError, match="unknown kind 'caption'"):
        vqa_view(weird)


def test_raw_view_keeps_the_record(samples):
    s = pick(samples, "region")
    assert raw_view(s) == {"key": s["__key__"], "record": s["json"], "image": s["image"]}


def test_localizer_view_comes_from_the_localizer_module(samples):
    localizer_data = pytest.importorskip("crop.models.localizer_data")
    s = pick(samples, "region")
    v = localizer_view(s)
    assert v["image"] is s["image"]
    expected = localizer_data.record_to_messages(s["json"], has_image=True)
    assert v["messages"] == expected
    assert expected[-1]["role"] == "assistant"


class RecordingProcessor:
    """Stand-in for an HF processor: records the call and returns token ids per word."""

    class tokenizer:  # noqa: N801 - mimics processor.tokenizer.padding_side
        padding_side = "left"

    def __init__(self):
        self.calls = []

    def __call__(self, text, images, padding, return_tensors):
        self.calls.append((text, images, padding, return_tensors))
        return {"input_ids": pad_sequences([[len(w) for w in t.split()] for t in text], 0, "left")}


def test_collate_calls_the_processor_and_pads_extras(samples):
    batch = [vqa_view(pick(samples, "region")), vqa_view(pick(samples, "instruction", with_image=False))]
    proc = RecordingProcessor()

    def build(v):
        return {"text": f"{v['question']} {v['answer']}", "images": v["image"],
                "labels": [7] * (1 + len(v["answer"].split())), "region": v["region"]}

    out = collate(batch, proc, build)
    (texts, images, padding, rt), = proc.calls
    assert texts == [f"{v['question']} {v['answer']}" for v in batch]
    assert images == [batch[0]["image"]] and padding is True and rt == "pt"
    longest = max(1 + len(v["answer"].split()) for v in batch)
    assert out["labels"].shape == (2, longest)
    short = 1 + len(batch[1]["answer"].split())
    assert (out["labels"][1, :longest - short] == -100).all()  # left padding, as the tokenizer
    assert out["region"] == [batch[0]["region"], None]
    with pytest.raises(ViewError, match="text"):
        collate(batch, proc, lambda v: {"images": None})


def test_collate_with_a_real_tiny_llava_processor(samples):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<image>"] + sorted({w for s in samples.values()
                                                    for w in vqa_view(s)["question"].split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        extra_special_tokens={"image_token": "<image>"})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="full",
        num_additional_image_tokens=0)
    views = [vqa_view(pick(samples, "region")), vqa_view(pick(samples, "instruction", with_image=False))]

    def build(v):
        prefix = "<image> " if v["image"] is not None else ""
        return {"text": prefix + v["question"], "images": v["image"]}

    out = collate(views, processor, build)
    assert out["pixel_values"].shape == (1, 3, 28, 28)
    ids = out["input_ids"]
    assert ids.shape[0] == 2 and (ids[0] == 2).sum() == 4  # 28/14 squared image tokens
    assert (out["attention_mask"].sum(1) == torch.tensor(
        [4 + len(views[0]["question"].split()), len(views[1]["question"].split())])).all()
