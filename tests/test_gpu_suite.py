"""benchmarks/gpu_suite.py on the CPU at tiny shapes (issue 19): the GPU run's code paths, tested
before a GPU is lent. Checked against what the suite must report, not against its own numbers:
every section and the environment in the JSON and the Markdown, the random-weights note, a
section budget printed before each section, the KV-cache bytes equal to the hand rule (K layers
full length, the rest the kept length), ILP/FastV keeping about R of 576 / 2928 visual tokens,
pytest outcomes carried over from a real pytest run, and the time limit stopping a section.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_suite  # noqa: E402

FAST = ["--device", "cpu", "--tiny", "--reps", "1", "--warmup", "0", "--decode", "2", "--batches", "2",
        "--budgets-7b", "192", "64", "--budgets-13b", "640", "160", "--ahead-batches", "2"]


def _gpu_tests(folder: Path, fail: bool = False) -> Path:
    """A stand-in tests/gpu: one passing and one skipping gpu-marked test (and a failing one)."""
    folder.mkdir()
    body = ("import pytest\n\n@pytest.mark.gpu\ndef test_ok():\n    assert 1 + 1 == 2\n\n"
            "@pytest.mark.gpu\ndef test_needs_cuda():\n    pytest.skip('needs CUDA')\n\n"
            "def test_not_gpu():\n    assert False  # deselected by -m gpu\n")
    if fail:
        body += "\n@pytest.mark.gpu\ndef test_broken():\n    assert 2 + 2 == 5\n"
    (folder / "test_stand_in.py").write_text(body)
    return folder


def test_tiny_run_reports_every_section(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "out"
    rc = gpu_suite.main(FAST + ["--out", str(out), "--skip", "methods",
                                "--tests-path", str(_gpu_tests(tmp_path / "t"))])
    printed = capsys.readouterr().out
    assert rc == 0
    data = json.loads((out / "gpu_suite.json").read_text())
    md = (out / "gpu_suite.md").read_text()
    assert list(data["sections"]) == list(gpu_suite.SECTIONS)
    assert data["note"] == gpu_suite.NOTE and gpu_suite.NOTE in md and "speed and memory only" in md
    env = data["environment"]
    for key in ("device", "dtype", "torch", "transformers", "python"):
        assert env[key] and f"| {key} |" in md
    assert env["torch"] == torch.__version__ and env["dtype"] == "float32"
    for name in gpu_suite.SECTIONS:
        assert f"## {name}: " in md
        if name != "methods":
            assert f"[{name}] budget ~" in printed  # its own budget, printed before it runs
            assert data["sections"][name]["status"] == "ok", data["sections"][name].get("error")
            assert data["sections"][name]["rows"]
    assert data["sections"]["methods"]["status"] == "skipped"

    tests = {r["test"].rsplit("::", 1)[-1]: r["outcome"] for r in data["sections"]["tests"]["rows"]}
    assert tests == {"test_ok": "passed", "test_needs_cuda": "skipped"}  # test_not_gpu deselected

    ilp = data["sections"]["ilp7b"]["rows"]
    assert {(r["method"], r["R"], r["batch"]) for r in ilp} == {("none", None, 2)} | {
        (m, r, 2) for m in ("ILP", "FastV") for r in (192, 64)}
    tiny = gpu_suite.TINY["7b"]
    per_pos = 2 * tiny.kv_heads * (tiny.hidden // tiny.heads) * 4  # fp32 keys + values of one position
    n = 64 + 576
    for r in ilp:
        assert r["kv_match"] is True
        k, kept = (2, r["visual_kept"]) if r["R"] else (tiny.layers, 576)
        assert r["kv_bytes"] == r["batch"] * per_pos * (k * n + (tiny.layers - k) * (n - 576 + kept))
        if r["method"] == "FastV":
            assert kept == r["R"]
        if r["method"] == "ILP":
            assert abs(kept - r["R"]) <= 0.1 * r["R"]  # a rectangle of about R tokens
    nxt = data["sections"]["next13b"]["rows"]
    assert nxt[0]["model"] == "7B" and nxt[0]["visual_in"] == 576 + 48 * 49 == 2928
    assert {(r["method"], r["R"]) for r in nxt if r["model"] == "13B"} == {("none", None)} | {
        (m, r) for m in ("ILP", "FastV") for r in (640, 160)}
    assert all(r["kv_match"] for r in nxt if r["model"] == "13B")
    plc = data["sections"]["plc"]["rows"]
    assert sorted((r["visual_kept"], r["batch"]) for r in plc) == [(68, 2), (576, 2)]
    modes = [r["mode"] for r in data["sections"]["ahead"]["rows"]]
    assert modes[:3] == ["localizer alone", "VLM alone (ILP, regions given)", "serial (localizer, then VLM)"]
    assert all("vlm_idle_s" in r and r["throughput_ratio"] > 0 for r in data["sections"]["ahead"]["rows"][2:])


def test_a_failing_gpu_test_fails_the_run(tmp_path):
    out = tmp_path / "out"
    rc = gpu_suite.main(FAST + ["--out", str(out), "--only", "tests", "--tests-path",
                                str(_gpu_tests(tmp_path / "t", fail=True))])
    sec = json.loads((out / "gpu_suite.json").read_text())["sections"]["tests"]
    assert rc == 1 and sec["status"] == "error"
    assert {r["test"].rsplit("::", 1)[-1]: r["outcome"] for r in sec["rows"]}["test_broken"] == "failure"


def test_limits_stop_a_section_and_skip_the_rest(tmp_path):
    out = tmp_path / "out"
    rc = gpu_suite.main(FAST + ["--out", str(out), "--only", "ilp7b", "plc", "--limit", "ilp7b=0.001"])
    secs = json.loads((out / "gpu_suite.json").read_text())["sections"]
    assert rc == 0 and secs["ilp7b"]["status"] == "truncated" and secs["ilp7b"]["rows"] == []
    assert secs["plc"]["status"] == "ok" and secs["plc"]["rows"]  # its own limit still applies
    rc = gpu_suite.main(FAST + ["--out", str(out), "--only", "plc", "ahead", "--total-limit", "0.001"])
    secs = json.loads((out / "gpu_suite.json").read_text())["sections"]
    assert rc == 0 and secs["plc"]["status"] in ("truncated", "skipped") and secs["ahead"]["status"] == "skipped"
    assert "total-limit" in secs["ahead"]["notes"][0]


@pytest.mark.slow
def test_the_ci_command(tmp_path):
    """Exactly what CI runs: ``python benchmarks/gpu_suite.py --device cpu --tiny`` (all sections)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--device", "cpu", "--tiny",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert all(data["sections"][n]["status"] in ("ok", "skipped") for n in gpu_suite.SECTIONS)
