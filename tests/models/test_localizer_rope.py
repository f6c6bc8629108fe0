"""The training path gives image tokens their (row, column) M-RoPE positions, and the tiny config
chosen for the learning proof lets those positions rotate visibly."""

from __future__ import annotations

import os

import pytest
import torch

from crop.data.synthetic_localization import SyntheticSpec, synthetic_samples
from crop.models.localizer import TinySpec, build_tiny_localizer
from crop.models.localizer_data import LocalizerCollator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64,
         "vision_depth": 1, "vision_dim": 16, "vision_heads": 1, "image_size": 224}


@pytest.fixture(scope="module")
def batch_and_model():
    torch.set_num_threads(1)
    loc = build_tiny_localizer(TinySpec(**SMALL))
    samples = synthetic_samples(2, seed=5, spec=SyntheticSpec(size=224, objects=1, min_side=56, max_side=112))
    return LocalizerCollator(loc.encoder)(samples), loc.model


def test_image_tokens_get_row_and_column_positions(batch_and_model):
    batch, model = batch_and_model
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16]] * 2  # 224 px / 14 px patches
    pos, _ = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                        image_grid_thw=batch["image_grid_thw"],
                                        attention_mask=batch["attention_mask"])  # (3, B, L)
    for b in range(2):
        img = batch["mm_token_type_ids"][b].bool()
        t, h, w = (pos[i, b, img] for i in range(3))  # each (64,) = 8x8 merged tokens
        start = int(t[0])
        assert (t == start).all()
        assert (h - start).view(8, 8).tolist() == [[r] * 8 for r in range(8)]
        assert (w - start).view(8, 8).tolist() == [list(range(8))] * 8
        after = int(img.nonzero().max()) + 1  # the first text token after the image
        assert pos[:, b, after].tolist() == [start + 8] * 3


def test_forward_computes_mrope_from_the_collated_batch(batch_and_model):
    batch, model = batch_and_model
    model.model.rope_deltas = None
    with torch.no_grad():
        model(**batch)
    _, deltas = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                           image_grid_thw=batch["image_grid_thw"],
                                           attention_mask=batch["attention_mask"])
    assert model.model.rope_deltas is not None and torch.equal(model.model.rope_deltas, deltas)
    assert (deltas < 0).all()  # 64 image tokens take only 8 positions


def _band_rotation(spec: TinySpec) -> tuple[float, float]:
    """Largest rotation (radians) across 8 rows / 8 columns in the h and w bands."""
    model = build_tiny_localizer(spec).model
    inv = model.model.language_model.rotary_emb.inv_freq  # (head_dim / 2,)
    t, h, w = spec.mrope()
    return 8 * float(inv[t:t + h].max()), 8 * float(inv[t + h:t + h + w].max())


def test_demo_config_gives_the_position_bands_usable_frequencies():
    import yaml

    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "localizer-tiny.yaml")))
    demo = TinySpec(**{**cfg["tiny"], "layers": 1, "vision_depth": 1})
    default = TinySpec(**{**cfg["tiny"], "layers": 1, "vision_depth": 1, "rope_theta": 10000.0,
                          "mrope_section": None})
    dh, dw = _band_rotation(default)
    h, w = _band_rotation(demo)
    assert dw < 0.05 and dh < 0.5  # the default split leaves columns nearly invisible
    assert h > 2.0 and w > 1.0


def test_mrope_section_is_checked():
    with pytest.raises(ValueError, match="summing to head_dim/2 = 8"):
        TinySpec(hidden=32, heads=2, mrope_section=(2, 2, 2))
    assert TinySpec(hidden=32, heads=2, mrope_section=[2, 3, 3]).mrope() == [2, 3, 3]
