"""benchmarks/methods_speed.py --tiny: every registered method runs and reports, in seconds.

Checks what the script must get right, not speed: every method of ``available_methods()`` has a
row, ``none`` is the ratio base, the budget conventions come from the methods' own reports, and a
before-the-LLM method's KV cache is the unpruned one scaled by its shorter prompt (every layer
holds fewer tokens), counted from the cache tensors themselves.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_methods_speed_tiny(tmp_path, capsys, monkeypatch):
    from crop.pruning.registry import available_methods

    out = tmp_path / "speed.json"
    monkeypatch.setattr(sys, "argv", ["methods_speed.py", "--tiny", "--budgets", "4", "--json", str(out)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "benchmarks" / "methods_speed.py"), run_name="__main__")
    assert done.value.code == 0
    result = json.loads(out.read_text())
    rows = {(r["method"], r["R"]): r for r in result["rows"]}
    assert set(m for m, _ in rows) == set(available_methods())
    errors = {k: r["error"] for k, r in rows.items() if "error" in r}
    assert not errors, errors
    none = rows["none", None]
    assert none["prefill_x"] == none["kv_x"] == 1.0 and none["kept"] == none["layer_avg"] == 16
    text = 5 + result["config"]["text"]
    layers = result["config"]["layers"]
    for name in ("random_tokens", "divprune", "cdpruner", "visionzip"):
        r = rows[name, 4]
        assert r["kept"] == r["layer_avg"] == 4
        assert r["kv_bytes"] * (16 + text) == none["kv_bytes"] * (4 + text)  # every layer: 4 + text tokens
    fastv = rows["fastv", 4]
    k = result["config"]["layer"]
    assert fastv["layer_avg"] == pytest.approx((k * 16 + (layers - k) * 4) / layers)
    # layers before K keep the full cache: (K full + (L-K) pruned) / (L full)
    assert fastv["kv_bytes"] * layers * (16 + text) == none["kv_bytes"] * (k * (16 + text) + (layers - k) * (4 + text))
    assert "| random_tokens | 4 | 4 |" in capsys.readouterr().out
