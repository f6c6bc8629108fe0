"""``crop eval`` sharded over processes: under ``accelerate launch`` each rank answers every
world-th question into its own part file, rank 0 merges them into ``answers.jsonl`` in question
order and scores once; the merged run equals the one-process run and a rerun resumes.

The 2-process run (gloo on CPU, as tests/train/test_localizer_accelerate.py launches it) is
``slow``; the merge rule itself is checked in the default suite with hand-written part files.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from crop.eval.runner import merge_parts, part_paths, run_eval  # noqa: E402
from crop.eval.scorers.common import read_jsonl  # noqa: E402

from test_eval_batched import QUESTIONS, bench, config, counts, rows  # noqa: E402,F401  (bench: fixture)

ROOT = Path(__file__).resolve().parents[2]


def test_merge_parts_in_question_order_keeps_merged_rows(tmp_path):
    from crop.eval.prompts import EvalItem

    items = [EvalItem(key=f"k{i}", question_id=f"q{i}", image="", message=f"m{i}", prompt=f"m{i}", question=f"m{i}")
             for i in range(5)]
    bdir = tmp_path / "gqa"
    bdir.mkdir()

    def row(i):
        return {"question_id": f"q{i}", "prompt": f"m{i}", "text": f"t{i}"}

    (bdir / "answers.jsonl").write_text(json.dumps(row(1)) + "\n")  # merged by an earlier, interrupted run
    (bdir / "efficiency.jsonl").write_text(json.dumps({"key": "k1"}) + "\n")
    for rank, mine in ((0, [0, 2, 4]), (1, [1, 3])):  # i % 2 == rank; rank 1 still holds q1
        a, e = part_paths(bdir, rank)
        a.write_text("".join(json.dumps(row(i)) + "\n" for i in mine if i != 4) + '{"question_id": "q4", "pro')
        e.write_text("".join(json.dumps({"key": f"k{i}", "rank": rank}) + "\n" for i in mine))
    assert merge_parts(items, bdir, world=2) == 3  # q0, q2, q3; q4's row was torn, q1 already there
    assert [r["question_id"] for r in read_jsonl(bdir / "answers.jsonl")] == ["q1", "q0", "q2", "q3"]
    assert [r["key"] for r in read_jsonl(bdir / "efficiency.jsonl")] == ["k1", "k0", "k2", "k3"]
    assert not list(bdir.glob("*.rank*.jsonl"))


def _launch(cfg_path, *extra):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", "--num_cpu_threads_per_process", "1",
           "-m", "crop.cli", "eval", "--config", str(cfg_path), *extra]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_two_processes_equal_one(tiny_llava_dir, bench, tmp_path):
    import yaml

    torch.set_num_threads(1)
    kw = {"name": "ilp", "layer": 1, "budget": 6}
    one = run_eval(config(tiny_llava_dir, "llava", bench, tmp_path / "one", **kw))
    cfg = config(tiny_llava_dir, "llava", bench, tmp_path / "two", batch_size=2, **kw)
    cfg_path = tmp_path / "eval.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = _launch(cfg_path)
    assert "[rank 1/2]" in proc.stderr and "[rank 0/2]" in proc.stderr  # two ranks answered
    assert proc.stdout.count("\tgqa\t") == 1  # rank 0 alone prints (and scores)
    out = tmp_path / "two"
    (a1, e1), (a2, e2) = rows(tmp_path / "one"), rows(out)
    assert a2 == a1 and len(a2) == len(QUESTIONS)
    assert counts(e2) == counts(e1)
    assert not list((out / "gqa").glob("*.rank*.jsonl"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"]["gqa"]["score"] == one["benchmarks"]["gqa"]["score"]
    assert summary["benchmarks"]["gqa"]["complete"] is True
    assert summary["benchmarks"]["gqa"]["efficiency"]["processes"] == 2
    assert summary["benchmarks"]["gqa"]["efficiency"]["answered_this_session"] == len(QUESTIONS)

    # rerun after losing the last three merged rows: only those are answered again, in order
    path = out / "gqa" / "answers.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-3]))
    _launch(cfg_path)
    assert rows(out)[0] == a1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"]["gqa"]["efficiency"]["answered_this_session"] == 3
