"""``crop eval --batch-size N`` answers as batch 1 (greedy): same answer rows, same kept counts.

The reference is the batch-1 path (``Engine.answer``, one question per ``generate``), which the
other runner tests check against the families' own processors; here the batched path
(``Engine.answer_batch`` -> ``crop.lmms.batch.BatchAnswerer``: left-padded ragged batches) must
reproduce it row for row on a generated benchmark whose questions differ in prompt length and
image size (Qwen2-VL: a different visual-token count per image) and include a text-only row.
Tiny random-weight LLaVA-1.5 / Qwen2-VL from the real transformers config classes (conftest.py).
"""

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")

from crop.eval.runner import ConfigError, EvalConfig, run_eval  # noqa: E402
from crop.eval.scorers.common import read_jsonl  # noqa: E402
from crop.eval.tiny import SUFFIX  # noqa: E402

from test_runner_plc import plc_weights  # noqa: E402,F401  (fixture: a tiny PLC for the tiny LLaVA)

# (width, height) per question; "" = a text-only question (answered unpruned, in its own group)
IMAGES = [(160, 96), (48, 80), None, (128, 128), (200, 120), (64, 150), (90, 90)]
QUESTIONS = ["Is it left?", "What colour is the large object on the right side?", "What is two plus two?",
             "Which one?", "Is there a red cup next to the plate on the table?", "Count them.", "Where?"]
REGIONS = [[0, 0, 3, 7], [2, 2, 5, 5], None, [4, 0, 7, 3], [1, 3, 6, 7], [0, 4, 7, 7], [3, 3, 4, 4]]
COUNT_FIELDS = ("visual_tokens_in", "visual_tokens_kept", "visual_tokens_layer_avg", "region", "region_used",
                "new_tokens")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A generated GQA-format benchmark: question file, images, annotations, regions file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("batched_bench")
    (root / "images").mkdir()
    rows, ann, regions = [], {}, []
    for i, (size, question, region) in enumerate(zip(IMAGES, QUESTIONS, REGIONS)):
        image = ""
        if size is not None:
            image = f"b{i}.png"
            Image.new("RGB", size, (30 * i % 255, 90, 200 - 20 * i)).save(root / "images" / image)
            regions.append({"key": f"g{i}", "region_blocks": region})
        rows.append({"question_id": f"g{i}", "image": image, "text": f"{question}\n{SUFFIX}"})
        ann[f"g{i}"] = {"answer": "yes" if i % 2 else "red", "isBalanced": True,
                        "types": {"structural": "query", "semantic": "attr"}}
    (root / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "ann.json").write_text(json.dumps(ann))
    (root / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in regions))
    return root


def config(model_dir, family, bench, out, batch_size=1, limit=None, **method):
    return EvalConfig.from_dict({
        "model": {"path": str(model_dir), "family": family, "dtype": "float32", "device": "cpu"},
        "method": {"regions": str(bench / "regions.jsonl"), **method}, "output_dir": str(out),
        "batch_size": batch_size,
        "benchmarks": [{"name": "gqa", "question_file": str(bench / "q.jsonl"), "image_folder": str(bench / "images"),
                        "annotation_file": str(bench / "ann.json"), "max_new_tokens": 4, "limit": limit}]})


def rows(out):
    return read_jsonl(out / "gqa" / "answers.jsonl"), read_jsonl(out / "gqa" / "efficiency.jsonl")


def counts(eff):
    return [{k: r.get(k) for k in COUNT_FIELDS} for r in eff]


CASES = [("llava", "none", None), ("llava", "ilp", 6), ("llava", "fastv", 6), ("llava", "random_tokens", 6),
         ("llava", "pdrop", 6), ("llava", "prune", 6), ("llava", "center", 6), ("llava", "random", 6),
         ("qwen2_vl", "none", None), ("qwen2_vl", "ilp", 0.5), ("qwen2_vl", "fastv", 4),
         ("qwen2_vl", "random_tokens", 0.4), ("qwen2_vl", "pdrop", 4)]


@pytest.mark.parametrize("family,method,budget", CASES)
def test_batch_n_equals_batch_1(family, method, budget, tiny_llava_dir, tiny_qwen_dir, bench, tmp_path):
    torch.set_num_threads(1)
    model_dir = tiny_llava_dir if family == "llava" else tiny_qwen_dir
    kw = {"name": method, "layer": 1, "budget": budget}
    one = run_eval(config(model_dir, family, bench, tmp_path / "b1", **kw))
    four = run_eval(config(model_dir, family, bench, tmp_path / "b4", batch_size=4, **kw))
    (a1, e1), (a4, e4) = rows(tmp_path / "b1"), rows(tmp_path / "b4")
    assert a4 == a1  # answer-file rows (text, answer_id, prompt, ...) and their order
    assert len(a1) == len(QUESTIONS)
    assert counts(e4) == counts(e1)
    assert four["benchmarks"]["gqa"]["score"] == one["benchmarks"]["gqa"]["score"]
    # batched rows say so; batch 1 rows are as before (no batch_size field)
    assert [r["batch_size"] for r in e4] == [4, 4, 4, 4, 3, 3, 3] and all("batch_size" not in r for r in e1)
    assert all(r["total_s"] > 0 and r["forward_calls"] >= 1 for r in e4)
    image_rows = [r for r, size in zip(e1, IMAGES) if size is not None]
    assert e1[IMAGES.index(None)]["visual_tokens_in"] == 0
    if method == "none":
        assert all(r["visual_tokens_kept"] == r["visual_tokens_in"] > 0 for r in image_rows)
    else:  # the test would pass on a no-op method otherwise
        assert all(0 < r["visual_tokens_kept"] < r["visual_tokens_in"] for r in image_rows)
    if method == "ilp":
        assert [r["region"] for r in image_rows] == [g for g in REGIONS if g is not None]
    if method in ("center", "random"):  # Table 10: the given region is reported, the moved one used
        assert [r["region"] for r in image_rows] == [g for g in REGIONS if g is not None]
        assert any(r["region_used"] != r["region"] for r in image_rows)
    if family == "qwen2_vl":  # images of different sizes: ragged visual-token counts in one batch
        assert len({r["visual_tokens_in"] for r in image_rows}) > 1


def test_batched_pruning_changes_answers(tiny_llava_dir, bench, tmp_path):
    """Batched ILP at a small budget answers differently from the unpruned model (kept counts
    are not just reported: the batch core prunes)."""
    torch.set_num_threads(1)
    texts = {}
    for method, budget in (("none", None), ("ilp", 2)):
        run_eval(config(tiny_llava_dir, "llava", bench, tmp_path / method, batch_size=3, name=method, layer=1,
                        budget=budget))
        texts[method] = [r["text"] for r in rows(tmp_path / method)[0]]
    assert texts["none"] != texts["ilp"]
    assert len(set(texts["none"])) > 1


def test_resume_after_partial_batched_run(tiny_llava_dir, bench, tmp_path):
    torch.set_num_threads(1)
    kw = {"name": "ilp", "layer": 1, "budget": 6}
    run_eval(config(tiny_llava_dir, "llava", bench, tmp_path / "ref", **kw))
    out = tmp_path / "run"
    first = run_eval(config(tiny_llava_dir, "llava", bench, out, batch_size=3, limit=4, **kw))
    assert first["benchmarks"]["gqa"]["efficiency"]["answered_this_session"] == 4
    path = out / "gqa" / "answers.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:12])  # interrupted while writing the 4th row
    second = run_eval(config(tiny_llava_dir, "llava", bench, out, batch_size=3, **kw))
    assert second["benchmarks"]["gqa"]["efficiency"]["answered_this_session"] == len(QUESTIONS) - 3
    (ans, eff), (ref_ans, ref_eff) = rows(out), rows(tmp_path / "ref")
    assert ans == ref_ans
    assert second["benchmarks"]["gqa"]["complete"] is True
    third = run_eval(config(tiny_llava_dir, "llava", bench, out, batch_size=3, **kw))
    assert third["benchmarks"]["gqa"]["efficiency"]["answered_this_session"] == 0
    assert rows(out)[0] == ref_ans


def test_localizer_batched_and_ahead_of_time(tiny_llava_dir, bench, tmp_path, monkeypatch):
    """An in-process localizer (scripted ``predict_detailed``: a region that depends on the image's
    shape) runs once per question under --batch-size, alone or ahead of time; regions, answers
    and kept counts equal batch 1, and each row keeps its own localizer time."""
    from crop.geometry import Region
    from crop.models.localizer import Localizer, Prediction, TinySpec, build_tiny_localizer

    torch.set_num_threads(1)
    build_tiny_localizer(TinySpec(seed=3)).save_pretrained(str(tmp_path / "loc"))
    calls = []

    def predict_detailed(self, images, questions, batch_size=None):
        calls.extend(questions)
        return [Prediction(Region(0, 0, 3, 7) if im.size[0] > im.size[1] else Region(2, 4, 7, 7), "", "strict")
                for im in images]

    monkeypatch.setattr(Localizer, "predict_detailed", predict_detailed)
    kw = {"name": "ilp", "layer": 1, "budget": 6, "regions": None, "localizer": str(tmp_path / "loc")}
    results = {}
    for name, size, ahead in (("b1", 1, False), ("b3", 3, False), ("b3ahead", 3, True)):
        calls.clear()
        run_eval(config(tiny_llava_dir, "llava", bench, tmp_path / name, batch_size=size, **kw), ahead_of_time=ahead)
        assert len(calls) == len(QUESTIONS) - 1  # once per image question
        results[name] = rows(tmp_path / name)
    (a1, e1) = results["b1"]
    regions = [r["region"] for r in e1 if r["visual_tokens_in"]]
    assert regions == [[0, 0, 3, 7] if w > h else [2, 4, 7, 7] for w, h in filter(None, IMAGES)]
    for name in ("b3", "b3ahead"):
        a, e = results[name]
        assert a == a1 and counts(e) == counts(e1)
        assert all(r["localizer_s"] >= 0 for r in e if r["visual_tokens_in"])
    assert all("localizer_wait_s" in r for r in results["b3ahead"][1] if r["visual_tokens_in"])


@pytest.mark.parametrize("method", ["plc", "average"])
def test_plc_and_average_budget_fall_back_to_rows(method, tiny_llava_dir, plc_weights, bench, tmp_path):
    """PLC (its own wrapper and prompt expansion) and ``budget_mode: average`` (one calibrated
    scale, crop eval's own ILP adapter) answer one question at a time under --batch-size: rows
    have no batch_size and equal batch 1."""
    torch.set_num_threads(1)
    kw = {"name": "plc"} if method == "plc" else {"name": "ilp", "layer": 1, "budget": 6, "budget_mode": "average"}
    cfgs = [config(tiny_llava_dir, "llava", bench, tmp_path / f"b{n}", batch_size=n, **kw) for n in (1, 3)]
    if method == "plc":
        cfgs = [dataclasses.replace(c, model=dataclasses.replace(c.model, plc_weights=plc_weights)) for c in cfgs]
    for c in cfgs:
        run_eval(c)
    (a1, e1), (a3, e3) = rows(tmp_path / "b1"), rows(tmp_path / "b3")
    assert a3 == a1 and counts(e3) == counts(e1)
    assert all("batch_size" not in r for r in e3)
    if method == "plc":
        assert [r["visual_tokens_kept"] for r in e3 if r["visual_tokens_in"]] == [5] * (len(QUESTIONS) - 1)


@pytest.mark.parametrize("bad", [0, -2, "4", True, None, 1.5])
def test_batch_size_validation(bad, tiny_llava_dir, bench, tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        config(tiny_llava_dir, "llava", bench, tmp_path, batch_size=bad, name="none")


def test_batch_size_in_saved_config_only_when_not_1(tiny_llava_dir, bench, tmp_path):
    assert "batch_size" not in config(tiny_llava_dir, "llava", bench, tmp_path, name="none").to_dict()
    assert config(tiny_llava_dir, "llava", bench, tmp_path, batch_size=8, name="none").to_dict()["batch_size"] == 8


def test_cli_flag_overrides_batch_size(tiny_llava_dir, bench, tmp_path, monkeypatch):
    """``crop eval --batch-size 3`` reaches the run (rows carry batch_size) and is validated."""
    import argparse

    import yaml

    from crop.eval import runner

    cfg_path = tmp_path / "eval.yaml"
    d = config(tiny_llava_dir, "llava", bench, tmp_path / "run", name="fastv", layer=1, budget=6).to_dict()
    d["method"]["regions"] = None
    cfg_path.write_text(yaml.safe_dump(d))
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    torch.set_num_threads(1)
    assert runner.run(parser.parse_args(["--config", str(cfg_path), "--batch-size", "3", "--no-score"])) == 0
    assert [r["batch_size"] for r in rows(tmp_path / "run")[1]] == [3, 3, 3, 3, 3, 3, 1]  # 7 questions
    with pytest.raises(ConfigError, match="batch_size"):
        runner.run(parser.parse_args(["--config", str(cfg_path), "--batch-size", "0"]))


def test_generated_lengths_stop_at_first_eos():
    """A batch row that finished early is padded after its EOS; its length is what batch 1 gives."""
    from crop.lmms.batch import generated_lengths

    new = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0], [9, 3, 2, 2]])  # (B, T), EOS ids {2, 3}
    assert generated_lengths(new, {2}) == [2, 4, 1, 3]
    assert generated_lengths(new, {2, 3}) == [2, 4, 1, 2]
    assert generated_lengths(new, set()) == [4, 4, 4, 4]
