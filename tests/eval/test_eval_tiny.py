"""configs/eval-tiny.yaml: the commands in its header run as written, in a fresh folder, in seconds.

The tiny set-up (crop/eval/tiny.py) is built from the real transformers config classes with random
weights; the test checks the machinery a new user tries first -- generation of the files, an ILP
run whose regions come from the regions file and keep about R visual tokens, the unpruned run, the
table -- not accuracy.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from crop.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _header_commands() -> list[list[str]]:
    lines = (ROOT / "configs" / "eval-tiny.yaml").read_text().splitlines()
    cmds = [ln[1:].split("  #")[0].strip() for ln in lines if ln.startswith("#   ")]
    return [shlex.split(c) for c in cmds if c]


def test_eval_tiny_header_commands_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "eval-tiny.yaml", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    cmds = _header_commands()
    assert [c[:2] for c in cmds] == [["python", "-m"], ["crop", "eval"], ["crop", "eval"], ["crop", "table"]]
    from crop.eval.tiny import main as tiny_main

    assert cmds[0][2] == "crop.eval.tiny" and tiny_main(cmds[0][3:]) == 0
    for argv in cmds[1:]:
        assert main(argv[1:]) == 0, argv
    ilp = json.loads((tmp_path / "runs/eval-tiny/ilp/summary.json").read_text())
    none = json.loads((tmp_path / "runs/eval-tiny/none/summary.json").read_text())
    for bench in ("gqa", "pope"):
        assert ilp["benchmarks"][bench]["complete"] and none["benchmarks"][bench]["complete"]
        kept = ilp["benchmarks"][bench]["efficiency"]["visual_tokens_kept_mean"]
        assert none["benchmarks"][bench]["efficiency"]["visual_tokens_kept_mean"] == 64
        assert 4 <= kept <= 16  # R = 8: the budget rectangle around each question's region
    assert "| tiny-llava/ilp-R8 |" in capsys.readouterr().out
    # docs/eval.md's "Output folder" names every file a run writes
    doc = (ROOT / "docs" / "eval.md").read_text()
    layout = doc.split("- Output folder:", 1)[1].split("\n- ", 1)[0]
    written = {p.name for p in (tmp_path / "runs/eval-tiny/ilp").rglob("*") if p.is_file()}
    assert written and all(f"`{name}`" in layout or f"/{name}`" in layout for name in written), (written, layout)


def test_eval_says_where_it_reads_and_writes(tmp_path, monkeypatch, capsys):
    from crop.eval.tiny import write_tiny_eval

    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "eval-tiny.yaml", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    write_tiny_eval()
    capsys.readouterr()
    assert main(["eval", "--config", "configs/eval-tiny.yaml", "--limit", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    first = next(ln for ln in err if ln.startswith("crop eval:"))
    assert first == "crop eval: tiny-llava/ilp-R8 (tiny-llava, method ilp) on gqa, pope -> runs/eval-tiny/ilp"
    assert err[-1] == "crop eval: answers, scores and summary.json in runs/eval-tiny/ilp"
