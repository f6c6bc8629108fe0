"""`crop table --convention kept|layer_avg`: methods as rows, budgets as column groups, each run
placed by its measured count on the chosen convention (run folders written here by hand)."""

import json

import pytest

from crop.cli import main
from crop.eval.tables import budget_csv, budget_markdown, build_budget_table, place_budget

B = ["gqa", "pope"]


def _run(tmp_path, label, method, budget, kept, layer_avg, scores, model="7B"):
    """A run folder: summary.json + per-question efficiency rows (two questions per benchmark)."""
    d = tmp_path / label.replace("/", "_")
    d.mkdir()
    summary = {"label": label, "model": model, "method": method, "budget": budget, "budget_mode": "rect",
               "benchmarks": {b: {"score": v, "complete": True} for b, v in zip(B, scores)}}
    (d / "summary.json").write_text(json.dumps(summary))
    for b in B:
        (d / b).mkdir()
        rows = [{"key": str(i), "visual_tokens_in": 576, "visual_tokens_kept": kept}
                for i in range(2)]
        if layer_avg is not None:
            for r in rows:
                r["visual_tokens_layer_avg"] = layer_avg
        (d / b / "efficiency.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(d)


@pytest.fixture
def runs(tmp_path):
    base = _run(tmp_path, "7B/none", "none", None, 576, 576, [62.0, 86.0])
    return base, [
        _run(tmp_path, "7B/fastv-R64", "fastv", 64, 64, 96.0, [46.0, 48.0]),          # K=2 of 32: (2*576+30*64)/32
        _run(tmp_path, "7B/visionzip-R64", "visionzip", 64, 64, 64.0, [55.0, 77.0]),
        _run(tmp_path, "7B/pdrop-R64", "pdrop", 64, 64, 262.5, [41.0, 55.0]),
        _run(tmp_path, "7B/visionzip-R128", "visionzip", 128, 128, 128.0, [57.0, 83.0]),
        _run(tmp_path, "7B/dart-R128", "dart", 128, 132, 148.0, [58.0, 82.0]),       # 4 + 8 * 16 kept
    ]


def test_kept_convention_groups_runs_by_their_budget(runs):
    base, others = runs
    t = build_budget_table(others, base, B, "kept")
    assert t.groups == ["128", "64"]
    assert t.keys == ["none", "fastv", "visionzip", "pdrop", "dart"]
    assert t.cells[("dart", "128")].label == "7B/dart-R128"          # 132 is within 15 % of 128
    assert t.cells[("fastv", "64")].label == "7B/fastv-R64"
    md = budget_markdown(t, B)
    assert "| Method | 128 tokens |" in md and "visual tokens kept after pruning" in md
    # RelAcc = mean of score / baseline score: fastv (46/62 + 48/86) / 2
    line = next(l for l in md.splitlines() if l.startswith("| fastv |"))
    assert line.split(" | ")[1:6] == ["-", "-", "-", "-", "64.0"]   # no 128 run, then Tok. in the 64 group
    assert f"{100 * (46 / 62 + 48 / 86) / 2:.1f}%" in line
    base_line = next(l for l in md.splitlines() if l.startswith("| none |"))
    assert base_line.count("100.0%") == 2                            # the baseline repeats in every group


def test_layer_avg_convention_moves_in_llm_methods(runs):
    base, others = runs
    t = build_budget_table(others, base, B, "layer_avg", budgets=[192, 128, 64])
    # visionzip (before the LLM) stays at 64 / 128; fastv averages 96 (no budget within 15 %),
    # pdrop's pyramid 262.5, dart 148 (16 % above 128): each in a group of its own
    assert ("visionzip", "64") in t.cells and ("visionzip", "128") in t.cells
    assert ("fastv", "~96") in t.cells and ("pdrop", "~262") in t.cells and ("dart", "~148") in t.cells
    assert t.groups == ["128", "64", "~262", "~148", "~96"]
    csv_text = budget_csv(t, B)
    head = csv_text.splitlines()[0].split(",")
    assert head[:4] == ["convention", "method", "128 tokens Tok.", "128 tokens GQA"]
    assert csv_text.splitlines()[2].startswith("visual_tokens_layer_avg,fastv,")


def test_place_budget_rule():
    assert place_budget(68, [192, 128, 64]) == 64       # DART's "64" keeps 68
    assert place_budget(96, [192, 128, 64]) is None
    assert place_budget(110, [128, 64]) == 128          # 14 % below 128
    assert place_budget(50, []) is None


def test_old_rows_without_layer_avg(tmp_path, runs):
    base, others = runs
    old_before = _run(tmp_path, "7B/visionzip-R192", "visionzip", 192, 192, None, [58.0, 85.0])
    t = build_budget_table(others + [old_before], base, B, "layer_avg")
    assert t.tokens[old_before] == 192                   # before the LLM: kept == layer-averaged
    old_in = _run(tmp_path, "7B/fastv-R192", "fastv", 192, 192, None, [58.0, 85.0])
    with pytest.raises(ValueError, match="no visual_tokens_layer_avg"):
        build_budget_table([old_in], base, B, "layer_avg")
    assert build_budget_table([old_in], base, B, "kept").tokens[old_in] == 192


def test_two_runs_of_one_method_in_a_group_refused(tmp_path, runs):
    base, others = runs
    twin = _run(tmp_path, "7B/fastv-R60", "fastv", 60, 60, 92.0, [40.0, 40.0])
    with pytest.raises(ValueError, match="second run of 'fastv'"):
        build_budget_table(others + [twin], base, B, "kept", budgets=[64])


def test_cli_convention(tmp_path, runs, capsys):
    base, others = runs
    assert main(["table", *others, "--baseline", base, "--benchmarks", *B, "--convention", "layer_avg",
                 "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert "visual_tokens_layer_avg" in out and "| ~96 tokens |" in out
    assert (tmp_path / "t.csv").read_text().startswith("convention,method,")
