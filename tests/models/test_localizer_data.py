"""Localizer view of samples: chat messages, label masking, collate tensors."""

from __future__ import annotations

import pytest
import torch

from crop.contract import instruction_record, region_record
from crop.formatting import REGION_PROMPT_SUFFIX
from crop.models.localizer_data import (
    IGNORE_INDEX,
    LocalizerCollator,
    LocalizerSampleError,
    QwenChatEncoder,
    assistant_label_mask,
    instruction_messages,
    record_to_messages,
    region_messages,
)


@pytest.fixture(scope="module")
def encoder():
    from transformers import Qwen2VLImageProcessorPil

    from crop.models.localizer import build_tiny_tokenizer, tiny_corpus

    tok = build_tiny_tokenizer(tiny_corpus(), 400)
    return QwenChatEncoder(tok, Qwen2VLImageProcessorPil(min_pixels=112 * 112, max_pixels=112 * 112))


def _image(size=112, colour=(200, 20, 20)):
    from PIL import Image

    return Image.new("RGB", (size, size), colour)


def _region_rec(question="Where is the red square?", blocks=(1, 2, 3, 4)):
    return region_record(
        source="vsr", source_id=question, source_file="f.jsonl", image="a.jpg", image_width=112,
        image_height=112, question=question, answer="x", boxes_xyxy_px=[[10, 20, 50, 60]], union_box_xyxy_px=[10, 20, 50, 60],
        region_blocks=list(blocks), grid_size=8)


def test_region_messages_follow_the_paper_template():
    msgs = record_to_messages(_region_rec(), has_image=True)
    assert msgs == [
        {"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": "Where is the red square? " + REGION_PROMPT_SUFFIX}]},
        {"role": "assistant", "content": [{"type": "text", "text": "1 2 3 4."}]},
    ]
    assert region_messages("Q?", None)[-1]["role"] == "user"


@pytest.mark.parametrize("value,expected", [
    ("<image>\nWhat is it?", [{"type": "image"}, {"type": "text", "text": "What is it?"}]),
    ("What is it?\n<image>", [{"type": "text", "text": "What is it?"}, {"type": "image"}]),
])
def test_instruction_image_marker_becomes_image_part_in_place(value, expected):
    msgs = instruction_messages([{"from": "human", "value": value}, {"from": "gpt", "value": "A cat."}], True)
    assert msgs[0]["content"] == expected
    assert msgs[1] == {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}


def test_instruction_text_only_and_errors():
    conv = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
            {"from": "human", "value": "Again"}, {"from": "gpt", "value": "Yes"}]
    msgs = instruction_messages(conv, has_image=False)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert all(p["type"] == "text" for m in msgs for p in m["content"])
    with pytest.raises(LocalizerSampleError, match="record k1: turn 0 has unknown speaker 'bot'"):
        instruction_messages([{"from": "bot", "value": "x"}], False, key="k1")
    with pytest.raises(LocalizerSampleError, match="no gpt turn"):
        instruction_messages([{"from": "human", "value": "x"}], False)
    bad = dict(_region_rec(), kind="other")
    with pytest.raises(LocalizerSampleError, match=f"record {bad['key']}: unknown kind 'other'"):
        record_to_messages(bad, True)
    with pytest.raises(LocalizerSampleError, match="region sample without image"):
        record_to_messages(_region_rec(), has_image=False)


@pytest.mark.parametrize("ids,expected", [
    # header = [1, 2], end = 9: answers after each header up to and including 9
    ([5, 1, 2, 7, 8, 9, 4], [0, 0, 0, 1, 1, 1, 0]),
    ([1, 2, 7, 9, 5, 1, 2, 6, 9, 4], [0, 0, 1, 1, 0, 0, 0, 1, 1, 0]),
    ([5, 1, 2, 7, 8], [0, 0, 0, 1, 1]),  # truncated answer: learned up to the cut
    ([5, 6, 7], [0, 0, 0]),  # no assistant turn
])
def test_assistant_label_mask(ids, expected):
    assert assistant_label_mask(ids, [1, 2], 9) == [bool(x) for x in expected]


def test_collate_region_batch_labels_only_the_answer(encoder):
    recs = [_region_rec("Where is the red square?", (1, 2, 3, 4)),
            _region_rec("Find the blue circle in the picture, please, quickly.", (0, 0, 7, 7))]
    batch = LocalizerCollator(encoder)([{"json": r, "image": _image()} for r in recs])
    tok = encoder.tokenizer
    assert batch["input_ids"].shape == batch["labels"].shape == batch["mm_token_type_ids"].shape
    # 112 px -> 8x8 patches of 14 px -> 4x4 merged tokens per image
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]
    assert batch["mm_token_type_ids"].sum(1).tolist() == [16, 16]
    assert batch["pixel_values"].shape[0] == 2 * 64
    for b, target in enumerate(["1 2 3 4.", "0 0 7 7."]):
        kept = batch["labels"][b][batch["labels"][b] != IGNORE_INDEX]
        assert tok.decode(kept) == target + "<|im_end|>"
    # right padding: the shorter row ends in pad tokens that are masked
    short = int(batch["attention_mask"][0].sum())
    assert short < batch["input_ids"].shape[1]
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0, :short].all()


def test_collate_mixes_instruction_and_text_only(encoder):
    with_img = instruction_record(source_id="1", source_file="l.json", image="coco/1.jpg", image_width=112,
                                  image_height=112, conversations=[
                                      {"from": "human", "value": "<image>\nWhat colour?"},
                                      {"from": "gpt", "value": "Red."},
                                      {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}])
    text_only = instruction_record(source_id="2", source_file="l.json", image=None, image_width=None,
                                   image_height=None, conversations=[{"from": "human", "value": "Say hi"},
                                                                     {"from": "gpt", "value": "Hi."}])
    batch = LocalizerCollator(encoder)([{"json": with_img, "image": _image()},
                                        {"json": text_only, "image": None}])
    tok = encoder.tokenizer
    assert batch["image_grid_thw"].shape == (1, 3)
    assert batch["mm_token_type_ids"].sum(1).tolist() == [16, 0]
    kept0 = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]
    assert tok.decode(kept0) == "Red.<|im_end|>Yes.<|im_end|>"
    kept1 = batch["labels"][1][batch["labels"][1] != IGNORE_INDEX]
    assert tok.decode(kept1) == "Hi.<|im_end|>"


def test_truncation_that_cuts_image_tokens_is_an_error(encoder):
    small = QwenChatEncoder(encoder.tokenizer, encoder.image_processor, max_length=10)
    with pytest.raises(LocalizerSampleError, match="image tokens after truncation to 10"):
        LocalizerCollator(small)([{"json": _region_rec(), "image": _image()}])


def test_generation_encoding_is_left_padded_without_labels(encoder):
    chats = [region_messages("Q?", None), region_messages("A much longer question here?", None)]
    enc = encoder.encode(chats, [_image(), _image()], generation=True, padding_side="left")
    assert "labels" not in enc
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][0, -1] == 1
    assert torch.equal(enc["input_ids"][:, -3:], enc["input_ids"][1:, -3:].expand(2, -1))
