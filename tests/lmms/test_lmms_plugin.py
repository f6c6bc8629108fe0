"""lmms-eval runs ``--model crop`` through its real CLI and evaluator, offline.

Needs the optional extra (lmms-eval 0.7.x) in the interpreter running the tests; skipped with the
reason otherwise (the project's main environment does not carry it; CI installs it into a
separate environment, see docs/eval.md "Three ways to evaluate").

What is checked:

* lmms-eval's own model registry resolves ``crop`` to :class:`crop.lmms.model.CropLMM` through the
  ``lmms_eval.models`` entry point (a plug-in that fails to import only logs a warning, so this is
  asserted, not assumed);
* a generated TextVQA-format task (``lmms_tiny``) answered at ``--batch_size 1`` and
  ``--batch_size 3`` (ragged batches: rows keep their own regions) gives the same answers and the
  same per-sample kept-token rows, and each answer is the one the batch core gives its doc alone
  (so lmms-eval's ``Collator`` order is restored);
* lmms-eval's TextVQA accuracy on those answers equals ``crop score textvqa`` (LLaVA's
  ``eval_textvqa.py`` rules) on the same answers, and both equal the VQA soft-accuracy formula
  computed here by hand (references built so the accuracies are 0, 0.3, 0.6, 0.9, 1 and 0.6).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None,
                                reason="lmms-eval is not installed (optional extra: pip install -e \".[lmms]\")")

from lmms_tiny import SUFFIX, TASK, offline_env, run_lmms_eval, write_images_and_regions, write_task, write_tiny_llava  # noqa: E402

FILLER = "unanswerable"


@pytest.fixture(scope="module")
def entry_point() -> str:
    """crop's ``lmms_eval.models`` entry point, as the project's install registers it (pyproject.toml)."""
    eps = [ep for ep in importlib.metadata.entry_points(group="lmms_eval.models") if ep.name == "crop"]
    assert eps, "no 'crop' entry point in group lmms_eval.models: install the project (pip install -e \".[lmms]\")"
    assert eps[0].value == "crop.lmms:manifest", eps[0].value
    return eps[0].value


def test_lmms_eval_resolves_crop(entry_point, tmp_path):
    code = ("from lmms_eval.models import get_model, get_model_manifest, list_available_models\n"
            "import crop.lmms.model as m\n"
            "assert 'crop' in list_available_models(), 'crop missing from lmms-eval models'\n"
            "assert get_model_manifest('crop').simple_class_path == 'crop.lmms.model.CropLMM'\n"
            "assert get_model('crop') is m.CropLMM\n"
            "print('resolved')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=offline_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "resolved" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def soft_accuracy(pred: str, refs: list[str]) -> float:
    """The VQA accuracy: mean over the ten leave-one-out subsets of min(1, matches / 3)."""
    return sum(min(1.0, sum(r == pred for j, r in enumerate(refs) if j != i) / 3) for i in range(len(refs))) / len(refs)


def _by_doc(rows: list[dict], field: str) -> dict[int, object]:
    return {row["doc_id"]: row[field] for row in rows}


@pytest.mark.slow
def test_batched_run_equals_batch_one_and_crop_score(entry_point, tmp_path):
    root = tmp_path
    model = write_tiny_llava(root / "model")
    docs = write_images_and_regions(root)
    args = f"pretrained={model},method=ilp,layer=2,budget=8,regions={root / 'regions.jsonl'}"

    # batch 1 on placeholder references: the answers
    one = run_lmms_eval(write_task(root / "task1", docs, [[FILLER] * 10 for _ in docs]), args, 1, root / "out1", root)
    answers = _by_doc(one["samples"], "filtered_resps")
    assert len(answers) == len(docs)
    assert len(set(answers.values())) > 1, "the tiny model gives one answer to every doc: the test would prove little"
    assert all(a != FILLER for a in answers.values())

    # each answer belongs to its doc (lmms-eval's order restored): the batch core answering the
    # doc alone, with the text lmms-eval's TextVQA doc_to_text builds, gives the same answer
    from crop.eval.config import MethodConfig
    from crop.lmms.batch import BatchAnswerer, Question

    direct = BatchAnswerer.load(str(model), MethodConfig(name="ilp", layer=2, budget=8,
                                                         regions=str(root / "regions.jsonl")))
    for i, d in enumerate(docs):
        q = Question(f"{d['question'].capitalize()}\n{SUFFIX}", d["image"], str(d["question_id"]), d["question"], TASK)
        assert direct.answer([q], max_new_tokens=5, until=["ASSISTANT:"])[0].text == answers[i], i

    # references holding k copies of the doc's answer: accuracies 0, .3, .6, .9, 1, .6
    copies = [0, 1, 2, 3, 4, 2]
    refs = [[answers[i]] * k + [FILLER] * (10 - k) for i, k in enumerate(copies)]
    many = run_lmms_eval(write_task(root / "task3", docs, refs), args, 3, root / "out3", root)
    assert _by_doc(many["samples"], "filtered_resps") == answers  # batch 3 (ragged) == batch 1

    # the kept-token side file: one row per doc, equal across batch sizes except batch_size itself
    kept = {}
    for name, run in (("one", one), ("many", many)):
        assert len(run["kept"]) == 1, run["kept"]
        rows = [json.loads(line) for line in run["kept"][0].read_text(encoding="utf-8").splitlines()]
        assert sorted(r["doc_id"] for r in rows) == list(range(len(docs)))
        kept[name] = {r["doc_id"]: r for r in rows}
    for doc_id, row in kept["one"].items():
        other = kept["many"][doc_id]
        assert row["batch_size"] == 1 and other["batch_size"] in (2, 3)
        for field in ("visual_tokens_in", "visual_tokens_kept", "visual_tokens_layer_avg", "region", "key"):
            assert row[field] == other[field], (doc_id, field)
        assert row["region"] == docs[doc_id]["region"] and row["key"] == str(docs[doc_id]["question_id"])
        assert row["visual_tokens_in"] == 64 and 0 < row["visual_tokens_kept"] < 64

    # lmms-eval's accuracy == crop score textvqa == the formula by hand
    lmms_acc = many["results"]["results"][TASK]["exact_match,none"]
    by_hand = sum(soft_accuracy(answers[i], refs[i]) for i in range(len(docs))) / len(docs)
    assert by_hand == pytest.approx((0 + .3 + .6 + .9 + 1 + .6) / 6)
    assert lmms_acc == pytest.approx(by_hand)

    ann = {"data": [{"image_id": d["image_id"], "question": d["question"], "answers": r} for d, r in zip(docs, refs)]}
    (root / "textvqa_ann.json").write_text(json.dumps(ann), encoding="utf-8")
    (root / "answers.jsonl").write_text("".join(
        json.dumps({"question_id": d["image_id"], "prompt": f"{d['question']}\n{SUFFIX}", "text": answers[i]}) + "\n"
        for i, d in enumerate(docs)), encoding="utf-8")
    from crop.cli import main

    assert main(["score", "textvqa", str(root / "answers.jsonl"), "--annotation-file", str(root / "textvqa_ann.json"),
                 "--out", str(root / "score.json")]) == 0
    crop_score = json.loads((root / "score.json").read_text(encoding="utf-8"))
    assert crop_score["complete"] is True
    assert crop_score["score"] == pytest.approx(100 * lmms_acc)


def test_model_args_and_generation_settings(tmp_path):
    """lmms-eval hands model_args as parsed strings/numbers and task generation_kwargs as a dict."""
    from crop.lmms.model import generation_kwargs, parse_options

    assert generation_kwargs({"until": ["x"], "temperature": 0, "top_p": 1.0, "num_beams": 1}, 128) == \
        {"max_new_tokens": 128, "num_beams": 1}  # greedy: LLaVA's evaluation decodes greedily
    assert generation_kwargs({"max_new_tokens": 16, "temperature": 0.7, "top_p": 0.9}, 128) == \
        {"max_new_tokens": 16, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert parse_options(None) == {} and parse_options({"a": 1}) == {"a": 1}
    assert parse_options('{"mass": 0.4, "query_rows": 2}') == {"mass": 0.4, "query_rows": 2}
    (tmp_path / "o.yaml").write_text("mass: 0.5\n")
    assert parse_options(str(tmp_path / "o.yaml")) == {"mass": 0.5}
    with pytest.raises(ValueError):
        parse_options("[1, 2]")
