"""benchmarks/trainer_input.py runs (tiny size) and prints the 0 vs N workers figures it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_trainer_input_benchmark_prints_both_rates_and_the_ratio(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "benchmarks/trainer_input.py", "--samples", "16", "--batch", "4",
                           "--workers", "1", "--trainer", "plc", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 workers" in proc.stdout and "ratio" in proc.stdout
    got = json.loads(out.read_text())["plc"]
    assert got["samples"] == 16 and got["workers_0_per_s"] > 0 and got["workers_1_per_s"] > 0
    assert abs(got["ratio"] - got["workers_1_per_s"] / got["workers_0_per_s"]) < 0.02
