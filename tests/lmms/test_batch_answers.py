"""The plug-in's batch core (crop.lmms.batch) without lmms-eval: a ragged batch answers as each row
alone, on the three families, for in-LLM, before-LLM and region methods; the side-file rules.

Runs in the main environment (no lmms-eval needed); the models are tiny random-weight ones built
from the real transformers config classes and saved with ``save_pretrained``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmms_tiny import SUFFIX, TASK, write_images_and_regions, write_tiny_llava


def _eval_builders():
    """tests/eval's tiny LLaVA-NeXT / Qwen2-VL builders (one definition of those test models)."""
    spec = importlib.util.spec_from_file_location("eval_tiny_builders", Path(__file__).parents[1] / "eval" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lmms_batch")
    docs = write_images_and_regions(root)
    builders = _eval_builders()
    models = {"llava": write_tiny_llava(root / "llava"),
              "llava_next": builders.build_tiny_llava_next(root / "llava_next"),
              "qwen2_vl": builders.build_tiny_qwen2vl(root / "qwen2_vl")}
    return root, docs, models


def _questions(docs):
    from crop.lmms.batch import Question

    qs = [Question(f"{d['question']}\n{SUFFIX}", d["image"], str(d["question_id"]), d["question"], TASK) for d in docs]
    return qs + [Question(f"what is two plus two\n{SUFFIX}", None, "text-only", "what is two plus two", TASK)]


CASES = [("llava", "ilp", 8), ("llava", "fastv", 8), ("llava", "random_tokens", 8), ("llava", "prune", None),
         ("llava", "center", 8), ("llava_next", "ilp", 8), ("qwen2_vl", "ilp", 0.5), ("qwen2_vl", "fastv", 4)]


@pytest.mark.parametrize("family,method,budget", CASES)
def test_ragged_batch_equals_rows_alone(setup, family, method, budget):
    from crop.eval.config import MethodConfig
    from crop.lmms.batch import BatchAnswerer

    root, docs, models = setup
    answerer = BatchAnswerer.load(str(models[family]), MethodConfig(name=method, layer=1, budget=budget,
                                                                     regions=str(root / "regions.jsonl")))
    assert answerer.frontend.family == family  # read from config.json
    qs = _questions(docs)
    batch = answerer.answer(qs, max_new_tokens=4)
    alone = [answerer.answer([q], max_new_tokens=4)[0] for q in qs]
    assert [a.text for a in batch] == [a.text for a in alone]
    assert [a.report for a in batch] == [a.report for a in alone]
    for q, a in zip(qs[:-1], batch[:-1]):
        assert 0 < a.report["visual_tokens_kept"] < a.report["visual_tokens_in"]
        if method in ("ilp", "prune"):
            assert a.report["region"] == next(d["region"] for d in docs if str(d["question_id"]) == q.key)
        if method == "center":  # Table 10: the given region's size, centred on the grid
            given = next(d["region"] for d in docs if str(d["question_id"]) == q.key)
            x0, y0, x1, y1 = a.report["region"]
            assert (x1 - x0, y1 - y0) == (given[2] - given[0], given[3] - given[1])
            assert abs((x0 + x1) - 7) <= 1 and abs((y0 + y1) - 7) <= 1
    if method == "center":
        assert any(a.report["region"] != d["region"] for a, d in zip(batch, docs))
    assert batch[-1].report["visual_tokens_in"] == 0  # the text-only row: answered unpruned


def test_unpruned_differs_from_pruned(setup):
    """The pruned answers are not the unpruned ones (the batch test above would pass on a no-op)."""
    from crop.eval.config import MethodConfig
    from crop.lmms.batch import BatchAnswerer

    root, docs, models = setup
    qs = _questions(docs)[:-1]
    texts = {}
    for method in ("none", "ilp"):
        answerer = BatchAnswerer.load(str(models["llava"]), MethodConfig(name=method, layer=1, budget=4,
                                                                          regions=str(root / "regions.jsonl")))
        texts[method] = [a.text for a in answerer.answer(qs, max_new_tokens=4)]
    assert texts["none"] != texts["ilp"]
    assert len(set(texts["none"])) > 1


def test_localizer_sees_original_image_and_question(setup, monkeypatch, tmp_path):
    """``localizer=``: regions come from the localizer, shown the original image and the bare
    question (as ``crop predict-regions`` / ``crop eval``); its ``predict`` is scripted here (a
    random localizer answers the whole image) to give a size-dependent region."""
    import torch

    from crop.eval.config import MethodConfig
    from crop.geometry import Region
    from crop.lmms.batch import BatchAnswerer
    from crop.models.localizer import Localizer, TinySpec, build_tiny_localizer

    root, docs, models = setup
    torch.manual_seed(0)
    build_tiny_localizer(TinySpec(seed=3)).save_pretrained(str(tmp_path / "loc"))
    seen = []

    def predict(self, images, questions, **kwargs):
        seen.extend((im.size, q) for im, q in zip(images, questions))
        return [Region(0, 0, 3, 3) if im.size[0] > im.size[1] else Region(4, 4, 7, 7) for im in images]

    monkeypatch.setattr(Localizer, "predict", predict)
    answerer = BatchAnswerer.load(str(models["llava"]), MethodConfig(name="ilp", layer=1, budget=8,
                                                                     localizer=str(tmp_path / "loc")))
    qs = _questions(docs)[:-1]
    batch = answerer.answer(qs, max_new_tokens=3)
    assert seen == [(d["image"].size, d["question"]) for d in docs]
    assert [a.report["region"] for a in batch] == [[0, 0, 3, 3] if d["image"].size[0] > d["image"].size[1]
                                                   else [4, 4, 7, 7] for d in docs]
    assert [a.text for a in answerer.answer(qs, max_new_tokens=3)] == [a.text for a in batch]
    assert len(seen) == len(docs)  # cached per key: the localizer ran once per question


def test_kept_log_path_rules(tmp_path):
    from crop.lmms.kept_log import KeptLog, kept_log_path

    assert kept_log_path("k.jsonl") == Path("k.jsonl")
    assert kept_log_path("a/k.jsonl", rank=1, world_size=2) == Path("a/k.rank1.jsonl")
    argv = ["--model", "crop", "--output_path", str(tmp_path / "out"), "--tasks", "x"]
    assert kept_log_path(None, argv=argv, stamp="S") == tmp_path / "out" / "crop_kept_tokens_S.jsonl"
    assert kept_log_path(None, argv=[f"--output_path={tmp_path}"], stamp="S", rank=0, world_size=3) == \
        tmp_path / "crop_kept_tokens_S.rank0.jsonl"
    assert kept_log_path(None, argv=[], stamp="S") == Path("crop_kept_tokens_S.jsonl")
    log = KeptLog(tmp_path / "sub" / "k.jsonl")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "k.jsonl").write_text("old run\n")
    log.write([{"doc_id": 0}])
    log.write([{"doc_id": 1}])
    assert [json.loads(x)["doc_id"] for x in (tmp_path / "sub" / "k.jsonl").read_text().splitlines()] == [0, 1]


def test_import_crop_lmms_does_not_import_lmms_eval():
    code = "import sys, crop, crop.lmms, crop.lmms.batch, crop.lmms.kept_log; print(any(m.startswith('lmms_eval') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
