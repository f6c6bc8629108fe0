"""The localizer with several regions (issue 21): multi-region targets from records, parsing of the
multi-region answer, ``max_regions`` from the train config, predict's return shape."""

from __future__ import annotations

import pytest
import torch

from crop.contract import region_record
from crop.geometry import Region, full_region
from crop.models.localizer import Localizer, Prediction, TinySpec, build_tiny_localizer, parse_with_fallback
from crop.models.localizer_data import IGNORE_INDEX, LocalizerCollator, QwenChatEncoder, record_to_messages

torch.set_num_threads(1)


def _rec(regions=([0, 0, 1, 1], [6, 0, 7, 1]), union=(0, 0, 7, 1)):
    return region_record(source="vsr", source_id="q|" + str(regions), source_file="f.jsonl", image="a.jpg",
                         image_width=112, image_height=112, question="Where are the cat and the dog?",
                         answer="x", boxes_xyxy_px=[[0, 0, 20, 20]], union_box_xyxy_px=[0, 0, 20, 20],
                         region_blocks=list(union), regions_blocks=[list(r) for r in regions], grid_size=8)


def _target(messages):
    return messages[-1]["content"][0]["text"]


def test_targets_follow_max_regions():
    rec = _rec()
    assert _target(record_to_messages(rec, True)) == "0 0 7 1."  # default 1: the paper's union target
    assert _target(record_to_messages(rec, True, max_regions=2)) == "0 0 1 1; 6 0 7 1."
    three = _rec(([0, 0, 0, 0], [3, 0, 3, 0], [7, 7, 7, 7]), (0, 0, 7, 7))
    # N=2: the cheapest pair (the two in row 0, 2 blocks added) is merged
    assert _target(record_to_messages(three, True, max_regions=2)) == "0 0 3 0; 7 7 7 7."
    old = {k: v for k, v in _rec(([1, 2, 3, 4],), (1, 2, 3, 4)).items() if k != "regions_blocks"}
    assert _target(record_to_messages(old, True, max_regions=3)) == "1 2 3 4."  # version-1 record


def test_collator_labels_the_multi_region_answer():
    from transformers import Qwen2VLImageProcessorPil
    from PIL import Image

    from crop.models.localizer import build_tiny_tokenizer, tiny_corpus

    enc = QwenChatEncoder(build_tiny_tokenizer(tiny_corpus(), 400),
                          Qwen2VLImageProcessorPil(min_pixels=112 * 112, max_pixels=112 * 112))
    batch = LocalizerCollator(enc, max_regions=2)([{"json": _rec(), "image": Image.new("RGB", (112, 112))}])
    kept = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]
    assert enc.tokenizer.decode(kept) == "0 0 1 1; 6 0 7 1.<|im_end|>"


@pytest.mark.parametrize("text,regions,status", [
    ("0 0 1 1; 6 0 7 1.", [(0, 0, 1, 1), (6, 0, 7, 1)], "strict"),
    ("6 0 7 1; 0 0 1 1", [(0, 0, 1, 1), (6, 0, 7, 1)], "strict"),       # put in reading order
    ("0 0 1 1; 2 0 3 1.", [(0, 0, 3, 1)], "strict"),                    # touching: merged
    ("0 0 0 0; 3 0 3 0; 7 7 7 7.", [(0, 0, 3, 0), (7, 7, 7, 7)], "strict"),  # > N: cheapest pair merged
    ("regions [0, 0, 1, 1] and [6, 0, 7, 1]", [(0, 0, 1, 1), (6, 0, 7, 1)], "lenient"),
    ("2 2 5 5.", [(2, 2, 5, 5)], "strict"),
    ("no idea", [(0, 0, 7, 7)], "fallback"),
])
def test_parse_several_regions(text, regions, status):
    p = parse_with_fallback(text, max_regions=2)
    assert p.status == status and p.raw == text
    assert p.regions == [Region(*r) for r in regions]
    assert p.region == Region(min(r[0] for r in regions), min(r[1] for r in regions),
                              max(r[2] for r in regions), max(r[3] for r in regions))


def test_one_region_parse_is_unchanged():
    assert parse_with_fallback("0 0 1 1; 6 0 7 1.") == Prediction(Region(0, 0, 1, 1), "0 0 1 1; 6 0 7 1.", "lenient")


class _Scripted(torch.nn.Module):
    def __init__(self, tok, answers):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.answers, self.max_new = tok, answers, []

    def generate(self, input_ids, **kw):
        self.max_new.append(kw["max_new_tokens"])
        rows = [self.tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"] for a in self.answers]
        width = max(map(len, rows))
        new = torch.tensor([r + [self.tok.pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_tiny_localizer(TinySpec(seed=3))


def test_predict_returns_lists_with_max_regions(tiny):
    from PIL import Image

    model = _Scripted(tiny.encoder.tokenizer, ["0 0 1 1; 6 0 7 1.", "junk"])
    loc = Localizer(model, tiny.encoder, max_regions=2)
    images = [Image.new("RGB", (112, 112))] * 2
    assert loc.predict(images, ["a?", "b?"]) == [[Region(0, 0, 1, 1), Region(6, 0, 7, 1)], [full_region()]]
    assert model.max_new == [24]  # max_new_tokens is per region
    assert loc.predict(images, ["a?", "b?"], max_regions=1) == [Region(0, 0, 1, 1), full_region()]
    assert model.max_new == [24, 12]
    with pytest.raises(ValueError, match="max_regions"):
        loc.predict(images, ["a?", "b?"], max_regions=0)


def test_from_pretrained_reads_max_regions_of_a_training_run(tiny, tmp_path):
    from crop.train.localizer_config import LocalizerTrainConfig, config_from_dict, save_config

    tiny.save_pretrained(str(tmp_path))
    assert Localizer.from_pretrained(str(tmp_path), device="cpu", dtype="float32").max_regions == 1
    save_config(LocalizerTrainConfig(model="tiny", synthetic=10, max_regions=3), str(tmp_path / "train_config.yaml"))
    assert Localizer.from_pretrained(str(tmp_path), device="cpu", dtype="float32").max_regions == 3
    assert Localizer.from_pretrained(str(tmp_path), device="cpu", dtype="float32", max_regions=1).max_regions == 1
    with pytest.raises(ValueError, match="max_regions"):
        config_from_dict({"model": "tiny", "synthetic": 10, "max_regions": 0})
