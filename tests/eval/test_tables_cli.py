"""`crop table` and `crop score` on run folders / answer files written here."""

import json

import pytest

from crop.cli import main
from crop.eval.tables import build_rows, to_csv, to_markdown

B6 = ["gqa", "mme", "textvqa", "scienceqa", "vqav2", "pope"]


def _run(tmp_path, name, section, values, budget=None):
    d = tmp_path / name
    d.mkdir()
    summary = {"label": name, "section": section, "budget": budget,
               "benchmarks": {b: {"score": v, "complete": True} for b, v in zip(B6, values) if v is not None}}
    (d / "summary.json").write_text(json.dumps(summary))
    return str(d)


def test_table_from_runs(tmp_path, capsys):
    # Table 2, LLaVA-1.5-7B, 64 tokens: baseline, VisionZip, CROP-ILP (printed Avg. 95.1% and 96.0%)
    base = _run(tmp_path, "LLaVA-1.5", "Upper Bound, 576 Tokens (100%)", [61.9, 1862, 58.2, 69.5, 78.5, 85.9])
    vz = _run(tmp_path, "VisionZip", "Retain 64", [55.1, 1690, 55.5, 69.0, 72.4, 77.0], 64)
    ilp = _run(tmp_path, "CROP-ILP", "Retain 64", [59.6, 1675, 54.9, 71.5, 74.8, 83.6], 64)
    nov = _run(tmp_path, "NoVQA", "Retain 64", [50.0, 1500, 50.0, 60.0, None, 80.0], 64)
    rows = build_rows([vz, base, ilp, nov], base, B6)
    assert [r.label for r in rows] == ["LLaVA-1.5", "VisionZip", "CROP-ILP", "NoVQA"]   # baseline section first
    assert rows[0].relacc == pytest.approx(100.0)
    assert abs(rows[1].relacc - 92.7) <= 0.1 and abs(rows[2].relacc - 96.0) <= 0.1
    md = to_markdown(rows, B6)
    assert "| *Retain 64* |" in md
    assert "| CROP-ILP | **59.6** | 1675 | 54.9 | **71.5** | **74.8** | **83.6** | **96.0%** |" in md
    assert "| NoVQA | 50.0 | 1500 | 50.0 | 60.0 | - | 80.0 |" in md
    csv_text = to_csv(rows, B6)
    assert csv_text.splitlines()[0] == "section,method,GQA,MME,VQA^T,SQA^I,VQA^V2,POPE,RelAcc"
    assert csv_text.splitlines()[2] == "Retain 64,VisionZip,55.1,1690,55.5,69.0,72.4,77.0,92.7%"
    # through the CLI
    assert main(["table", vz, ilp, "--baseline", base, "--csv", str(tmp_path / "t.csv"), "--md", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text().startswith("| Method | GQA | MME |")
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        build_rows([str(tmp_path)], base, B6)


def test_score_cli(tmp_path, capsys):
    ann = {"data": [{"image_id": "i", "question": "q?", "answers": ["two"] * 10}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "a.jsonl").write_text(json.dumps({"question_id": "i", "prompt": "Q?\nAnswer.", "text": "2"}) + "\n")
    assert main(["score", "textvqa", str(tmp_path / "a.jsonl"), "--annotation-file", str(tmp_path / "ann.json"),
                 "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["score"] == 100.0    # "two" -> "2"
    assert main(["score", "textvqa", str(tmp_path / "a.jsonl")]) == 2  # a user error: one line, exit 2
    assert "needs `annotation_file`" in capsys.readouterr().err
    (tmp_path / "t.jsonl").write_text(json.dumps({"question_id": 5, "text": "yes"}) + "\n")
    assert main(["score", "vqav2", str(tmp_path / "a.jsonl"), "--test-split-file", str(tmp_path / "t.jsonl"),
                 "--submission", str(tmp_path / "up.json")]) == 0
    assert json.loads((tmp_path / "up.json").read_text()) == [{"question_id": 5, "answer": ""}]


def _model_run(tmp_path, name, model, label, section, values, budget=None):
    d = tmp_path / name
    d.mkdir()
    summary = {"label": label, "model": model, "section": section, "budget": budget,
               "benchmarks": {b: {"score": v, "complete": True} for b, v in zip(B6, values) if v is not None}}
    (d / "summary.json").write_text(json.dumps(summary))
    return str(d)


def test_table2_side_by_side_7b_13b(tmp_path):
    """Table 2's 192-token block: 7B and 13B column groups, RelAcc per model, rows matched by name."""
    from crop.eval.tables import build_grouped, grouped_csv, grouped_markdown

    up, r192 = "Upper Bound, 576 Tokens (100%)", "Retain Averaged 192 Tokens (↓ 66.7%)"
    b7 = _model_run(tmp_path, "b7", "7B", "LLaVA-1.5", up, [61.9, 1862, 58.2, 69.5, 78.5, 85.9])
    b13 = _model_run(tmp_path, "b13", "13B", "LLaVA-1.5", up, [63.2, 1818, 61.3, 72.8, 80.0, 85.9])
    runs = [  # default-style labels "<model>/<name>" and plain labels both match across models
        _model_run(tmp_path, "f7", "7B", "7B/FastV", r192, [56.5, 1786, 57.3, 69.5, 74.6, 79.2], 192),
        _model_run(tmp_path, "c13", "13B", "CROP-ILP", r192, [62.7, 1822, 60.4, 74.2, 78.9, 86.2], 192),
        _model_run(tmp_path, "f13", "13B", "13B/FastV", r192, [60.3, 1807, 60.4, 74.0, 77.7, 82.3], 192),
        _model_run(tmp_path, "s13", "13B", "SparseVLM", r192, [58.7, 1768, 45.4, 73.1, None, 82.2], 192),
        _model_run(tmp_path, "c7", "7B", "CROP-ILP", r192, [61.3, 1817, 57.4, 69.2, 77.7, 85.3], 192)]
    table = build_grouped(runs + [b13], [b7, b13], B6)
    assert table.models == ["7B", "13B"]
    assert table.keys == [(up, "LLaVA-1.5"), (r192, "FastV"), (r192, "CROP-ILP"), (r192, "SparseVLM")]
    printed = {("FastV", "7B"): 95.5, ("FastV", "13B"): 98.0, ("CROP-ILP", "7B"): 98.9,
               ("CROP-ILP", "13B"): 99.8, ("SparseVLM", "13B"): 92.1}
    for (name, model), value in printed.items():
        assert abs(table.cells[(r192, name)][model].relacc - value) <= 0.1, (name, model)
    assert "7B" not in table.cells[(r192, "SparseVLM")]
    md = grouped_markdown(table, B6).splitlines()
    assert md[0] == "| Method | 7B |  |  |  |  |  |  | 13B |  |  |  |  |  |  |"
    assert md[2] == "| | GQA | MME | VQA^T | SQA^I | VQA^V2 | POPE | RelAcc | GQA | MME | VQA^T | SQA^I | VQA^V2 | POPE | RelAcc |"
    assert md[4] == ("| LLaVA-1.5 | 61.9 | 1862 | 58.2 | 69.5 | 78.5 | 85.9 | 100.0% "
                     "| 63.2 | 1818 | 61.3 | 72.8 | 80.0 | 85.9 | 100.0% |")
    # (98.84% prints as 98.8%; the paper rounds 98.9%. 60.4 ties with FastV-13B: both bold)
    assert md[7] == ("| CROP-ILP | **61.3** | **1817** | **57.4** | 69.2 | **77.7** | **85.3** | **98.8%** "
                     "| **62.7** | **1822** | **60.4** | **74.2** | **78.9** | **86.2** | **99.8%** |")
    assert md[8] == "| SparseVLM | - | - | - | - | - | - | - | 58.7 | 1768 | 45.4 | 73.1 | - | 82.2 | 92.1% |"
    csv_lines = grouped_csv(table, B6).splitlines()
    assert csv_lines[0].startswith("section,method,7B GQA,7B MME,") and csv_lines[0].endswith(",13B POPE,13B RelAcc")
    assert len(csv_lines) == 5
    # CLI: several baselines switch to the side-by-side layout
    assert main(["table", *runs, "--baseline", b7, b13, "--md", str(tmp_path / "t.md"),
                 "--csv", str(tmp_path / "t.csv")]) == 0
    assert (tmp_path / "t.md").read_text().splitlines() == md
    # a run whose model has no baseline, and two baselines of one model, are named errors
    other = _model_run(tmp_path, "x", "34B", "FastV", r192, [1, 1, 1, 1, 1, 1], 192)
    with pytest.raises(ValueError, match="model '34B' has no baseline"):
        build_grouped([other], [b7, b13], B6)
    with pytest.raises(ValueError, match="two baselines of the same model"):
        build_grouped([], [b7, b7], B6)


def test_fractional_budget_default_section(tmp_path):
    from crop.eval.tables import load_row

    d = tmp_path / "q"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"label": "x", "budget": 0.222, "benchmarks": {}}))
    assert load_row(d).section == "Retain 22.2% Tokens"


def _auto_run(tmp_path, name, method, budget, kept, values):
    """A summary as `crop eval` writes it: no explicit section, efficiency per benchmark."""
    d = tmp_path / name
    d.mkdir()
    eff = {"visual_tokens_kept_mean": kept}
    summary = {"label": name, "method": method, "budget": budget, "section": None,
               "benchmarks": {b: {"score": v, "complete": True, "efficiency": eff} for b, v in zip(B6, values)}}
    (d / "summary.json").write_text(json.dumps(summary))
    return str(d)


def test_plc_run_sits_with_its_token_count_not_under_all_tokens(tmp_path):
    """Table 2 lists CROP-PLC (68 tokens: 64 + 4 queries) under "Retain Averaged 64 Tokens"; a PLC
    run has no budget, and must not land in the baseline's "All Tokens" section and be bolded
    against the unpruned model."""
    base = _auto_run(tmp_path, "LLaVA-1.5", "none", None, 576.0, [61.9, 1862, 58.2, 69.5, 78.5, 85.9])
    ilp = _auto_run(tmp_path, "CROP-ILP", "ilp", 64, 64.0, [59.6, 1675, 54.9, 71.5, 74.8, 83.6])
    plc = _auto_run(tmp_path, "CROP-PLC", "plc", None, 68.0, [60.3, 1634, 55.2, 71.8, 75.0, 80.2])
    rows = build_rows([ilp, plc], base, B6)
    sections = {r.label: r.section for r in rows}
    assert sections == {"LLaVA-1.5": "All Tokens", "CROP-ILP": "Retain 64 Tokens", "CROP-PLC": "Retain 64 Tokens"}
    md = to_markdown(rows, B6)
    assert "| CROP-PLC | **60.3** |" in md and "| LLaVA-1.5 | 61.9 |" in md  # compared within its section
    alone = build_rows([plc], base, B6)  # no budget section to join: its own, from the kept count
    assert [r.section for r in alone] == ["All Tokens", "Retain ~68 Tokens"]


def test_average_budget_runs_are_named_as_the_paper_names_them(tmp_path):
    base = _auto_run(tmp_path, "base", "none", None, 576.0, [61.9, 1862, 58.2, 69.5, 78.5, 85.9])
    d = tmp_path / "avg"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"label": "avg", "method": "ilp", "budget": 64, "budget_mode": "average",
                                                "benchmarks": {"gqa": {"score": 59.0, "complete": True}}}))
    rows = build_rows([str(d)], base, B6)
    assert rows[1].section == "Retain Averaged 64 Tokens"
