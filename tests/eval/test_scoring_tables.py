"""A partial run never passes for a complete one: the runner's `complete`, `crop table`'s marks and
its refusal to compute RelAcc from incomplete cells."""

import json
from types import SimpleNamespace

import pytest

from crop.cli import main
from crop.eval.tables import INCOMPLETE_MARK, build_grouped, build_rows, grouped_markdown, to_csv, to_markdown

B6 = ["gqa", "mme", "textvqa", "scienceqa", "vqav2", "pope"]


def _run(tmp_path, name, values, complete=None, model="7B"):
    """A run folder; ``complete``: benchmark -> the entry's extra fields (default: complete)."""
    d = tmp_path / name
    d.mkdir()
    complete = complete or {}
    benchmarks = {b: {"score": v, **complete.get(b, {"complete": True})} for b, v in zip(B6, values)}
    (d / "summary.json").write_text(json.dumps({"label": name, "model": model, "section": "S",
                                                "benchmarks": benchmarks}))
    return str(d)


PARTIAL_MME = {"mme": {"complete": False, "coverage": {"n_questions": 2374, "n_answered": 100, "missing": 2274,
                                                       "duplicates": 0}}}


def test_incomplete_cell_refuses_relacc(tmp_path):
    base = _run(tmp_path, "base", [61.9, 1862, 58.2, 69.5, 78.5, 85.9])
    limited = _run(tmp_path, "limited", [60.0, 310, 57.0, 69.0, 77.0, 85.0], PARTIAL_MME)
    with pytest.raises(ValueError, match=r"limited: mme is incomplete \(2274 of 2374 questions unanswered\).*"
                                         r"--allow-incomplete"):
        build_rows([limited], base, B6)
    # the same error, one line and exit 2, through the CLI
    assert main(["table", limited, "--baseline", base]) == 2
    # RelAcc without MME is fine: the incomplete cell is not used
    rows = build_rows([limited], base, [b for b in B6 if b != "mme"])
    assert rows[1].relacc is not None and not rows[1].relacc_incomplete


def test_allow_incomplete_marks_cells_and_relacc(tmp_path, capsys):
    base = _run(tmp_path, "base", [61.9, 1862, 58.2, 69.5, 78.5, 85.9])
    limited = _run(tmp_path, "limited", [62.0, 310, 57.0, 69.0, 77.0, 85.0], PARTIAL_MME)
    rows = build_rows([limited], base, B6, allow_incomplete=True)
    md = to_markdown(rows, B6)
    line = next(l for l in md.splitlines() if l.startswith("| limited |"))
    # the incomplete MME and the RelAcc computed from it are marked, and never bold (62.0 > 61.9 is)
    assert f"| 310{INCOMPLETE_MARK} |" in line and f"%{INCOMPLETE_MARK} |" in line and "**62.0**" in line
    assert f"**310{INCOMPLETE_MARK}**" not in md
    assert md.rstrip().splitlines()[-1].startswith(f"{INCOMPLETE_MARK} incomplete")
    assert f"310{INCOMPLETE_MARK}" in to_csv(rows, B6).splitlines()[2]
    assert main(["table", limited, "--baseline", base, "--allow-incomplete"]) == 0
    assert f"310{INCOMPLETE_MARK}" in capsys.readouterr().out


def test_a_missing_complete_field_is_not_complete(tmp_path):
    # summaries written before completeness was recorded (and scorers that do not report it)
    base = _run(tmp_path, "base", [61.9, 1862, 58.2, 69.5, 78.5, 85.9])
    old = _run(tmp_path, "old", [60.0, 1800, 57.0, 69.0, 77.0, 85.0], {"textvqa": {}})
    with pytest.raises(ValueError, match="old: textvqa is incomplete \\(no completeness record\\)"):
        build_rows([old], base, B6)
    # the baseline's cells count too, also side by side
    with pytest.raises(ValueError, match="old: textvqa is incomplete"):
        build_grouped([base], [old], B6)
    table = build_grouped([base], [old], B6, allow_incomplete=True)
    assert f"57.0{INCOMPLETE_MARK}" in grouped_markdown(table, B6)


def test_runner_never_reads_a_missing_complete_as_complete(tmp_path, monkeypatch):
    from crop.eval import runner

    bench = SimpleNamespace(name="textvqa", question_file=None, annotation_file="a", annotation_dir=None,
                            base_dir=None, mme_root=None, split="test", test_split_file=None, score_options={})
    monkeypatch.setattr(runner, "score_answer_file", lambda *a, **k: {"score": 50.0})
    out = runner.score_benchmark(bench, tmp_path / "answers.jsonl", tmp_path)
    assert out["score"] == 50.0 and out["complete"] is False
    full = {"score": 50.0, "n_questions": 2, "n_answered": 2, "missing": 0, "duplicates": 0, "complete": True}
    monkeypatch.setattr(runner, "score_answer_file", lambda *a, **k: full)
    out = runner.score_benchmark(bench, tmp_path / "answers.jsonl", tmp_path)
    assert out["complete"] is True
    assert out["coverage"] == {"n_questions": 2, "n_answered": 2, "missing": 0, "duplicates": 0}


def test_limited_mme_run_is_incomplete_end_to_end(tmp_path):
    """A --limit-style MME answer file: scored, written to the summary as incomplete, refused by the table."""
    from crop.eval import runner

    root = tmp_path / "MME"
    for t in ("existence", "count"):
        (root / t).mkdir(parents=True)
        (root / t / "1.txt").write_text("A? Please answer yes or no.\tYes\nB? Please answer yes or no.\tNo\n")
    answers = tmp_path / "answers.jsonl"
    suffix = "Answer the question using a single word or phrase."
    answers.write_text("".join(json.dumps({"question_id": "existence/1.jpg", "prompt": f"{q}?\n{suffix}", "text": t})
                               + "\n" for q, t in (("A", "Yes"), ("B", "No"))))
    bench = SimpleNamespace(name="mme", question_file=None, annotation_file=None, annotation_dir=None,
                            base_dir=None, mme_root=str(root), split="test", test_split_file=None, score_options={})
    entry = runner.score_benchmark(bench, answers, tmp_path)
    assert entry["complete"] is False and entry["coverage"]["missing"] == 2
    d = tmp_path / "run"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"label": "run", "benchmarks": {"mme": entry}}))
    base = _run(tmp_path, "base", [61.9, 1862, 58.2, 69.5, 78.5, 85.9])
    with pytest.raises(ValueError, match="run: mme is incomplete"):
        build_rows([str(d)], base, B6)


def test_score_cli_reports_coverage_beside_the_score(tmp_path, capsys):
    ann = {"annotations": [{"question_id": i, "answers": [{"answer": "yes"}] * 10} for i in (1, 2)]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "a.jsonl").write_text(json.dumps({"question_id": 1, "text": "yes"}) + "\n")
    assert main(["score", "vqav2", str(tmp_path / "a.jsonl"), "--annotation-file", str(tmp_path / "ann.json")]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    # the unanswered question scores 0 (LLaVA's converter uploads "" for it)
    assert result["score"] == 50.0 and (result["missing"], result["duplicates"], result["complete"]) == (1, 0, False)
    assert "vqav2 result is incomplete (1 of 2 questions answered, 0 duplicate answers)" in out.err
