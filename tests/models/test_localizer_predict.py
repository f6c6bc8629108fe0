"""Localizer inference: parse/fallback chain, batching parity, save/load round trip."""

from __future__ import annotations

import pytest
import torch

from crop.geometry import Region, full_region
from crop.models.localizer import Localizer, Prediction, TinySpec, build_tiny_localizer, parse_with_fallback


@pytest.mark.parametrize("text,region,status", [
    ("1 2 3 4.", (1, 2, 3, 4), "strict"),
    (" 0 0 7 7", (0, 0, 7, 7), "strict"),
    ("The region is 5 1 2 3.", (2, 1, 5, 3), "lenient"),  # swapped x put in order
    ("1 2 3 9 4 5", (1, 2, 3, 4), "lenient"),  # 9 is off the grid, skipped
    ("1 2 3", (0, 0, 7, 7), "fallback"),
    ("garbage", (0, 0, 7, 7), "fallback"),
])
def test_parse_with_fallback(text, region, status):
    p = parse_with_fallback(text)
    assert p == Prediction(Region(*region), text, status)


class _ScriptedModel(torch.nn.Module):
    """Stands in for Qwen2-VL: 'generates' fixed answers so the parse path is observable."""

    def __init__(self, tok, answers):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.answers = tok, answers

    def generate(self, input_ids, **kw):
        rows = [self.tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"] for a in self.answers]
        width = max(map(len, rows))
        pad = self.tok.pad_token_id
        new = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        assert kw["do_sample"] is False and kw["max_new_tokens"] == 12
        return torch.cat([input_ids, new], dim=1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_tiny_localizer(TinySpec(seed=3))


def _images(n):
    from PIL import Image

    return [Image.new("RGB", (112 + 28 * (i % 2), 112), (40 * i % 255, 90, 200)) for i in range(n)]


def test_predict_keeps_raw_text_and_counts_fallbacks(tiny):
    answers = ["1 2 3 4.", "it is 3 3 4 4", "no idea"]
    loc = Localizer(_ScriptedModel(tiny.encoder.tokenizer, answers), tiny.encoder)
    preds = loc.predict_detailed(_images(3), ["a?", "b?", "c?"])
    assert [p.raw for p in preds] == answers
    assert [p.region for p in preds] == [Region(1, 2, 3, 4), Region(3, 3, 4, 4), full_region()]
    assert loc.counts == {"strict": 1, "lenient": 1, "fallback": 1}
    with pytest.raises(ValueError, match="3 images but 2 questions"):
        loc.predict(_images(3), ["a?", "b?"])


def test_batched_predictions_equal_one_by_one(tiny):
    images = _images(4)
    questions = ["Where is the red square?", "Find the blue circle in the picture, please.",
                 "Is it?", "What is inside the green triangle near the corner?"]
    batched = tiny.predict_detailed(images, questions, batch_size=4)
    single = [tiny.predict_detailed([im], [q], batch_size=1)[0] for im, q in zip(images, questions)]
    assert [p.raw for p in batched] == [p.raw for p in single]
    assert sum(tiny.counts.values()) == 8


def test_save_and_from_pretrained_round_trip(tiny, tmp_path):
    tiny.save_pretrained(str(tmp_path))
    assert (tmp_path / "model.safetensors").exists()
    loaded = Localizer.from_pretrained(str(tmp_path), device="cpu", dtype="float32")
    images, qs = _images(2), ["Where is the red square?", "Where?"]
    assert [p.raw for p in loaded.predict_detailed(images, qs)] == [p.raw for p in tiny.predict_detailed(images, qs)]


def test_ahead_runner_with_a_real_tiny_model_matches_direct_calls(tiny):
    from crop.models.ahead import predict_ahead

    images = _images(6)
    qs = [f"Where is object {i}?" for i in range(6)]
    batches = [(images[i:i + 2], qs[i:i + 2]) for i in range(0, 6, 2)]
    ahead = [p.raw for _, preds in predict_ahead(tiny, batches, detailed=True) for p in preds]
    assert ahead == [p.raw for p in tiny.predict_detailed(images, qs, batch_size=2)]
