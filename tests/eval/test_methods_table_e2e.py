"""End to end: `crop eval` runs every method of the registry on a generated benchmark with the tiny
LLaVA, and `crop table` lays the runs out on both budget conventions.

The method list is read from ``available_methods()`` (methods still being written join when their
module imports); the test asserts that at least the built-in methods and the in-LLM baselines ran.
"""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("crop.pruning")

from crop.cli import main  # noqa: E402
from crop.eval.runner import EvalConfig, run_eval  # noqa: E402
from crop.pruning.registry import available_methods, get_method, layer_averaged  # noqa: E402

MUST_RUN = {"none", "ilp", "prune", "fastv", "pdrop", "sparsevlm", "dart"}
R = 4  # of the tiny LLaVA's 16 visual tokens; its LLM has 3 decoder layers


def test_every_registry_method_through_crop_eval_and_crop_table(tiny_llava_dir, tiny_benchmarks, tmp_path, capsys):
    torch.set_num_threads(1)
    names = available_methods()
    assert MUST_RUN <= set(names)
    bench = dict(tiny_benchmarks["pope"], max_new_tokens=2)
    regions = tmp_path / "regions.jsonl"
    regions.write_text("".join(json.dumps({"key": k, "region_blocks": [0, 0, 3, 7]}) + "\n" for k in ("1", "2")))
    dirs = {}
    for name in names:
        spec = get_method(name)
        method = {"name": name, "layer": 1}
        if spec.needs_budget:
            method["budget"] = R
        if spec.needs_region:
            method["regions"] = str(regions)
        out = tmp_path / "runs" / name
        cfg = EvalConfig.from_dict({"model": {"path": str(tiny_llava_dir), "dtype": "float32", "device": "cpu",
                                              "name": "tiny"},
                                    "method": method, "output_dir": str(out), "benchmarks": [bench]})
        summary = run_eval(cfg)
        assert "score" in summary["benchmarks"]["pope"], name
        rows = [json.loads(line) for line in open(out / "pope" / "efficiency.jsonl")]
        assert len(rows) == 2, name
        for row in rows:  # both conventions recorded on every row, consistent with the stages
            assert row["visual_tokens_in"] == 16 and row["visual_tokens_kept"] <= 16, name
            stages = [tuple(s) for s in row["stages"]]
            assert row["visual_tokens_layer_avg"] == pytest.approx(layer_averaged(16, stages, 3)), name
            if spec.stage == "in_llm" and spec.needs_budget and name != "dart":
                assert row["visual_tokens_kept"] == R, name
        dirs[name] = str(out)
    assert MUST_RUN <= set(dirs)
    runs = [d for n, d in dirs.items() if n != "none"]
    tables = {}
    for convention in ("kept", "layer_avg"):
        capsys.readouterr()
        assert main(["table", *runs, "--baseline", dirs["none"], "--benchmarks", "pope",
                     "--convention", convention]) == 0
        tables[convention] = capsys.readouterr().out
        lines = tables[convention].splitlines()
        for name in dirs:  # one row per method (the default labels lose their "tiny/" and "-R4")
            assert any(line.startswith(f"| {name} |") for line in lines), (convention, name)
    assert "| 4 tokens |" in tables["kept"]
    # FastV at K = 1 of 3 layers keeps 4 of 16: 4 on one convention, (16 + 2 * 4) / 3 = 8 on the other
    fastv = {c: next(line for line in t.splitlines() if line.startswith("| fastv |")) for c, t in tables.items()}
    assert "| 4.0 |" in fastv["kept"] and "| 8.0 |" in fastv["layer_avg"]
