"""``self`` through the lmms-eval plug-in's batch core (crop.lmms.batch) without lmms-eval: a ragged
batch answers as each row alone, each row with its own region read from the model's attention,
on the three families; no regions file is configured.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lmms_tiny import SUFFIX, TASK, write_images_and_regions, write_tiny_llava


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lmms_self")
    docs = write_images_and_regions(root)
    spec = importlib.util.spec_from_file_location("eval_tiny_builders_self", Path(__file__).parents[1] / "eval" / "conftest.py")
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    models = {"llava": write_tiny_llava(root / "llava"),
              "llava_next": builders.build_tiny_llava_next(root / "llava_next"),
              "qwen2_vl": builders.build_tiny_qwen2vl(root / "qwen2_vl")}
    return docs, models


@pytest.mark.parametrize("family,budget,options", [("llava", 8, {}), ("llava_next", 8, {"query_rows": 2}),
                                                   ("qwen2_vl", None, {"mass": 0.4})])
def test_self_ragged_batch_equals_rows_alone(setup, family, budget, options):
    from crop.eval.config import MethodConfig
    from crop.lmms.batch import BatchAnswerer, Question

    docs, models = setup
    answerer = BatchAnswerer.load(str(models[family]), MethodConfig(name="self", layer=1, budget=budget,
                                                                     options=options))
    qs = [Question(f"{d['question']}\n{SUFFIX}", d["image"], str(d["question_id"]), d["question"], TASK) for d in docs]
    batch = answerer.answer(qs, max_new_tokens=4)
    alone = [answerer.answer([q], max_new_tokens=4)[0] for q in qs]
    assert [a.text for a in batch] == [a.text for a in alone]
    for b, a in zip(batch, alone):
        for key in ("region_used", "visual_tokens_kept", "visual_tokens_in", "stages", "self_layer"):
            assert b.report[key] == a.report[key], key
        np.testing.assert_allclose(b.report["block_scores"], a.report["block_scores"], atol=1e-4)
        assert b.report["attention_share"] == pytest.approx(a.report["attention_share"], abs=1e-4)
        assert 0 < b.report["visual_tokens_kept"] < b.report["visual_tokens_in"]
        if budget is None:
            assert b.report["attention_share"] >= 0.4 - 1e-6
    assert len({tuple(a.report["region_used"]) for a in batch}) > 1 or len(batch) == 1  # rows' own regions
