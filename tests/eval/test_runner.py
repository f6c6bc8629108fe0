"""The whole runner on a tiny random LLaVA saved to disk and tiny benchmark files."""

import json

import pytest

torch = pytest.importorskip("torch")

from crop.eval.runner import ConfigError, EvalConfig, load_config, run_eval  # noqa: E402
from crop.eval.scorers.common import read_jsonl  # noqa: E402


def _config(model_dir, benches, out, **method):
    for b in benches.values():
        b.setdefault("max_new_tokens", 3)
    return EvalConfig.from_dict({"model": {"path": str(model_dir), "dtype": "float32", "device": "cpu"},
                                 "method": {"name": "none", **method}, "output_dir": str(out),
                                 "benchmarks": list(benches.values())})


def test_runner_end_to_end_and_resume(tiny_llava_dir, tiny_benchmarks, tmp_path):
    torch.set_num_threads(1)
    cfg = _config(tiny_llava_dir, tiny_benchmarks, tmp_path / "run")
    summary = run_eval(cfg)
    expected_n = {"gqa": 2, "textvqa": 2, "pope": 2, "mme": 2, "scienceqa": 2, "vqav2": 1}
    for name, n in expected_n.items():
        rows = read_jsonl(tmp_path / "run" / name / "answers.jsonl")
        assert len(rows) == n
        assert set(rows[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        entry = summary["benchmarks"][name]
        assert "score" in entry, entry
        scores = json.loads((tmp_path / "run" / name / "scores.json").read_text())
        assert scores["score"] == entry["score"]
        assert entry["efficiency"]["n"] == n and entry["efficiency"]["prefill_s_mean"] > 0
    # LLaVA's prompt fields: SQA image problem starts with "<image>\n", the text-only one does not
    sqa = {r["question_id"]: r for r in read_jsonl(tmp_path / "run" / "scienceqa" / "answers.jsonl")}
    assert sqa["p1"]["prompt"].startswith("<image>\n") and not sqa["p2"]["prompt"].startswith("<image>")
    assert sqa["p1"]["prompt"].endswith("Answer with the option's letter from the given choices directly.")
    # the tiny LLaVA sees (16/4)^2 = 16 visual tokens, all kept by "none"
    eff = [json.loads(l) for l in open(tmp_path / "run" / "gqa" / "efficiency.jsonl")]
    assert all(r["visual_tokens_in"] == 16 == r["visual_tokens_kept"] for r in eff)
    assert summary["benchmarks"]["vqav2"]["submission"]
    sub = json.loads((tmp_path / "run" / "vqav2" / "submission.json").read_text())
    assert [r["question_id"] for r in sub] == [11, 12] and sub[1]["answer"] == ""
    assert (tmp_path / "run" / "config.yaml").exists()
    assert load_config(tmp_path / "run" / "config.yaml").method.name == "none"   # resolved config reloads

    # resume: nothing new is answered; after losing the last answer exactly that one is redone
    before = (tmp_path / "run" / "textvqa" / "answers.jsonl").read_text()
    again = run_eval(cfg)
    assert all(e["efficiency"]["answered_this_session"] == 0 for e in again["benchmarks"].values())
    lines = before.splitlines(keepends=True)
    (tmp_path / "run" / "textvqa" / "answers.jsonl").write_text(lines[0] + lines[1][:10])   # torn last line
    third = run_eval(cfg)
    assert third["benchmarks"]["textvqa"]["efficiency"]["answered_this_session"] == 1
    assert (tmp_path / "run" / "textvqa" / "answers.jsonl").read_text() == before           # greedy: same text


def test_resume_with_other_method_is_refused(tiny_llava_dir, tiny_benchmarks, tmp_path):
    benches = {"pope": dict(tiny_benchmarks["pope"])}
    run_eval(_config(tiny_llava_dir, benches, tmp_path / "r"))
    with pytest.raises(SystemExit, match="different `method`"):
        run_eval(_config(tiny_llava_dir, benches, tmp_path / "r", name="fastv", budget=4))


@pytest.mark.parametrize("patch, message", [
    ({"model": {"path": "m", "family": "gpt"}}, "model.family must be one of"),
    ({"method": {"name": "ilp"}}, "needs method.regions"),
    ({"method": {"name": "fastv"}}, "budget is required for fastv"),
    ({"method": {"layer": -1}}, "method.layer must be an integer >= 0"),
    ({"benchmarks": [{"name": "mmmu", "question_file": "q"}]}, r"benchmarks\[0\].name must be one of"),
    ({"benchmarks": [{"name": "gqa"}]}, r"benchmarks\[0\]: missing required field\(s\) \['question_file'\]"),
    ({"bogus": 1}, r"unknown field\(s\) \['bogus'\]"),
    ({"method": {"name": "fastv", "budget": 1.5}}, r"fractional budget must lie in \(0, 1\)"),
    ({"method": {"name": "fastv", "budget": "150%"}}, "strictly between 0% and 100%"),
    ({"method": {"name": "fastv", "budget": "half"}}, "percentage like '33.3%'"),
    ({"method": {"name": "fastv", "budget": True}}, "method.budget must be a number"),
    ({"model": {"path": "m", "family": "llava", "max_pixels": 100}}, "apply to family qwen2_vl only"),
    ({"model": {"path": "m", "family": "qwen2_vl", "prompt_style": "vicuna_v1"}}, "not available for qwen2_vl"),
])
def test_config_errors_name_the_field(patch, message):
    base = {"model": {"path": "m"}, "benchmarks": [{"name": "gqa", "question_file": "q"}]}
    with pytest.raises(ConfigError, match=message):
        EvalConfig.from_dict({**base, **patch})


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path(__file__).parents[2].glob("configs/eval-*.yaml")))
def test_shipped_eval_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.benchmarks and cfg.label and cfg.output_dir
    if path.name == "eval-tiny.yaml":  # the generated demo (crop/eval/tiny.py): GQA + POPE only
        assert {b.name for b in cfg.benchmarks} == {"gqa", "pope"}
        return
    six = {"gqa", "mme", "textvqa", "scienceqa", "vqav2", "pope"}
    # Table 7 (Qwen2-VL) has no VQAv2 column and budgets are shares of each image's tokens
    assert {b.name for b in cfg.benchmarks} == (six - {"vqav2"} if cfg.model.family == "qwen2_vl" else six)
    if cfg.model.family == "qwen2_vl":
        assert isinstance(cfg.method.budget, float) and 0 < cfg.method.budget < 1


@pytest.mark.parametrize("given, stored, label", [
    (64, 64, "m/fastv-R64"), ("64", 64, "m/fastv-R64"), (64.0, 64, "m/fastv-R64"), (0.5, 0.5, "m/fastv-R50%"),
    ("33.3%", 0.333, "m/fastv-R33.3%"), ("22.2%", 0.222, "m/fastv-R22.2%"), (0, 0, "m/fastv-R0"),
])
def test_budget_as_count_fraction_or_percentage(given, stored, label):
    cfg = EvalConfig.from_dict({"model": {"path": "m"}, "method": {"name": "fastv", "budget": given},
                                "benchmarks": [{"name": "gqa", "question_file": "q"}]})
    assert cfg.method.budget == pytest.approx(stored) and type(cfg.method.budget) is type(stored)
    assert cfg.label == label
    again = EvalConfig.from_dict(cfg.to_dict())              # config.yaml round trip keeps the budget
    assert again.method == cfg.method


def test_cli_overrides_rederive_default_labels_only():
    import argparse

    from crop.eval.runner import add_arguments, apply_overrides

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = {"model": {"path": "m"}, "method": {"name": "fastv", "budget": 64},
            "benchmarks": [{"name": "gqa", "question_file": "q"}, {"name": "pope", "question_file": "p"}]}
    args = parser.parse_args(["--config", "x", "--budget", "33.3%", "--benchmarks", "pope", "--limit", "5"])
    cfg = apply_overrides(EvalConfig.from_dict(base), args)
    assert cfg.method.budget == pytest.approx(0.333) and cfg.label == "m/fastv-R33.3%"
    assert [(b.name, b.limit) for b in cfg.benchmarks] == [("pope", 5)]
    named = apply_overrides(EvalConfig.from_dict({**base, "label": "FastV"}), args)
    assert named.label == "FastV"                            # an explicit label is kept
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", "x", "--budget", "lots"])


def test_method_none_drops_the_budget_and_budget_mode_flag_applies(tmp_path):
    """`crop eval --config <pruning config> --method none` is the unpruned baseline: no budget in
    its label or table section; `--budget-mode average` reaches the config."""
    import argparse

    from crop.eval.config import apply_overrides
    from crop.eval.runner import add_arguments

    cfg = EvalConfig.from_dict({"model": {"path": "m", "name": "m"},
                                "method": {"name": "ilp", "budget": 64, "regions": "r.jsonl"},
                                "benchmarks": [{"name": "gqa", "question_file": "q.jsonl"}]}).validated()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    none = apply_overrides(cfg, parser.parse_args(["--config", "x", "--method", "none"]))
    assert none.method.budget is None and none.label == "m/none"
    avg = apply_overrides(cfg, parser.parse_args(["--config", "x", "--budget-mode", "average"]))
    assert avg.method.budget_mode == "average" and avg.method.budget == 64
