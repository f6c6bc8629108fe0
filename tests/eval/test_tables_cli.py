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
               "benchmarks": {b: {"score": v} for b, v in zip(B6, values) if v is not None}}
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
    with pytest.raises(ValueError, match="needs `annotation_file`"):
        main(["score", "textvqa", str(tmp_path / "a.jsonl")])
    (tmp_path / "t.jsonl").write_text(json.dumps({"question_id": 5, "text": "yes"}) + "\n")
    assert main(["score", "vqav2", str(tmp_path / "a.jsonl"), "--test-split-file", str(tmp_path / "t.jsonl"),
                 "--submission", str(tmp_path / "up.json")]) == 0
    assert json.loads((tmp_path / "up.json").read_text()) == [{"question_id": 5, "answer": ""}]
