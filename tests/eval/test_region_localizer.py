"""The localizer sees the original image, in-process as in ``crop predict-regions`` (issue 17, item 1).

A tiny localizer (real Qwen2-VL config, random weights) is saved and loaded by the runner. Its
``predict_detailed`` is replaced by a scripted one that answers from the size of the image it is
shown (wide / tall / square -> three different regions) and records that size: a localizer shown
LLaVA-1.5's padded square (the old engine) answers differently from one shown the original image.
The regions file is written by ``crop predict-regions`` (``localizer_cmd.run``) with the same
localizer; both evals must then be identical (answers, regions, kept tokens).
"""

from __future__ import annotations

import argparse
import json

import pytest

torch = pytest.importorskip("torch")

from crop.eval.runner import EvalConfig, run_eval  # noqa: E402
from crop.eval.scorers.common import read_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def tiny_localizer_dir(tmp_path_factory):
    from crop.models.localizer import TinySpec, build_tiny_localizer

    path = tmp_path_factory.mktemp("tiny_localizer")
    torch.manual_seed(0)
    build_tiny_localizer(TinySpec(seed=3)).save_pretrained(str(path))
    return path


def _scripted(seen):
    from crop.geometry import Region
    from crop.models.localizer import Prediction

    def predict_detailed(self, images, questions, batch_size=None):
        out = []
        for image in images:
            w, h = image.size
            seen.append((w, h))
            region = Region(0, 0, 3, 7) if w > h else Region(0, 4, 7, 7) if w < h else Region(2, 2, 5, 5)
            out.append(Prediction(region, " ".join(map(str, region)) + ".", "strict"))
        return out

    return predict_detailed


def _eval(model_dir, bench, out, **method):
    cfg = EvalConfig.from_dict({"model": {"path": str(model_dir), "dtype": "float32", "device": "cpu"},
                                "method": {"name": "ilp", "layer": 1, **method}, "output_dir": str(out),
                                "benchmarks": [dict(bench, max_new_tokens=3)]})
    run_eval(cfg)
    return (read_jsonl(out / bench["name"] / "answers.jsonl"),
            [{k: r[k] for k in ("key", "region", "visual_tokens_kept", "visual_tokens_in")}
             for r in read_jsonl(out / bench["name"] / "efficiency.jsonl")])


def test_in_process_localizer_equals_regions_file(tiny_llava_dir, tiny_localizer_dir, tiny_benchmarks, tmp_path,
                                                  monkeypatch):
    from PIL import Image

    from crop.models import localizer_cmd
    from crop.models.localizer import Localizer

    torch.set_num_threads(1)
    seen: list = []
    monkeypatch.setattr(Localizer, "predict_detailed", _scripted(seen))
    bench = tiny_benchmarks["gqa"]  # q0: im0.jpg 160x96 (wide), q1: im1.jpg 48x80 (tall)
    originals = [Image.open(f"{bench['image_folder']}/{r['image']}").size for r in read_jsonl(bench["question_file"])]
    assert originals == [(160, 96), (48, 80)]

    regions = tmp_path / "regions.jsonl"
    args = argparse.Namespace(model=str(tiny_localizer_dir), input=[bench["question_file"]],
                              image_root=bench["image_folder"], output=str(regions), batch_size=2,
                              max_new_tokens=12, limit=0, device="cpu")
    assert localizer_cmd.run(args) == 0
    assert seen == originals
    assert [r["region_blocks"] for r in read_jsonl(regions)] == [[0, 0, 3, 7], [0, 4, 7, 7]]

    seen.clear()
    in_process = _eval(tiny_llava_dir, bench, tmp_path / "in_process", localizer=str(tiny_localizer_dir))
    assert seen == originals  # the original images, not LLaVA-1.5's padded squares
    from_file = _eval(tiny_llava_dir, bench, tmp_path / "from_file", regions=str(regions))
    assert in_process[1] == from_file[1]
    assert [r["region"] for r in in_process[1]] == [[0, 0, 3, 7], [0, 4, 7, 7]]
    assert [r["text"] for r in in_process[0]] == [r["text"] for r in from_file[0]]
