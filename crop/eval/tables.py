"""``crop table``: a Table-2-style results table (Markdown and CSV) from several run folders.

    crop table runs/llava7b-none runs/llava7b-ilp-r192 runs/llava7b-fastv-r192 \\
        --baseline runs/llava7b-none --md table.md --csv table.csv

    crop table runs/7b-* runs/13b-* --baseline runs/7b-none runs/13b-none --md table2.md

Each run folder is a ``crop eval`` output (``summary.json``). Rows are grouped into sections
(the run's ``section``, e.g. "Retain Averaged 192 Tokens (↓ 66.7%)"; the baseline's section
comes first), columns are the benchmarks in the paper's order plus RelAcc against the baseline
(``crop.eval.relacc``). Markdown marks the best value of each column within a section in bold.

Side by side (Table 2's 7B | 13B column groups): with several baselines (or ``--by-model``),
every run joins the group of the baseline with the same ``model`` (the run's ``model.name``),
RelAcc is taken against that group's baseline, and rows of different models are matched on
(section, method name). The method name is the run's label without a leading ``"<model>/"``
(the default labels are ``"<model>/<method>-R<budget>"``); the baselines share one row.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from crop.eval import BENCHMARKS
from crop.eval.relacc import relacc

COLUMN_TITLES = {"gqa": "GQA", "mme": "MME", "textvqa": "VQA^T", "scienceqa": "SQA^I", "vqav2": "VQA^V2",
                 "pope": "POPE"}


@dataclass
class Row:
    label: str
    section: str
    scores: dict[str, float | None]
    relacc: float | None = None
    model: str = ""


def default_section(budget: int | float | None) -> str:
    if budget is None:
        return "All Tokens"
    if isinstance(budget, float):
        return f"Retain {100 * budget:.4g}% Tokens"
    return f"Retain {budget} Tokens"


def load_row(run_dir: str | Path) -> Row:
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no summary.json (is it a `crop eval` output folder?)")
    s = json.loads(path.read_text(encoding="utf-8"))
    scores = {b: e.get("score") for b, e in s.get("benchmarks", {}).items()}
    section = s.get("section") or default_section(s.get("budget"))
    return Row(label=s.get("label") or Path(run_dir).name, section=section, scores=scores,
               model=s.get("model") or "")


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def build_rows(runs: list[str], baseline: str, benchmarks: list[str]) -> list[Row]:
    base = load_row(baseline)
    rows = [base] + [load_row(r) for r in runs if not _same(r, baseline)]
    for row in rows:
        row.relacc = relacc(row.scores, base.scores, benchmarks)
    order = list(dict.fromkeys([base.section] + [r.section for r in rows]))
    return sorted(rows, key=lambda r: (order.index(r.section), r is not base))


def method_name(row: Row) -> str:
    """The label without a leading ``"<model>/"``: the key that matches rows across models."""
    prefix = f"{row.model}/"
    return row.label[len(prefix):] if row.model and row.label.startswith(prefix) else row.label


@dataclass
class GroupedTable:
    """Rows of several models side by side: ``cells[(section, name)][model]`` is that model's Row."""

    models: list[str]
    keys: list[tuple[str, str]]            # (section, method name), in table order
    cells: dict[tuple[str, str], dict[str, Row]]


def build_grouped(runs: list[str], baselines: list[str], benchmarks: list[str],
                  baseline_name: str | None = None) -> GroupedTable:
    """Group runs by model under their baselines (one per model), RelAcc within each group."""
    bases = [load_row(b) for b in baselines]
    models = [b.model for b in bases]
    if len(set(models)) != len(models):
        raise ValueError(f"--baseline: two baselines of the same model {models}; give one per model")
    labels = list(dict.fromkeys(b.label for b in bases))
    base_name = baseline_name or " / ".join(labels)
    base_of = dict(zip(models, bases))
    keys: list[tuple[str, str]] = [(bases[0].section, base_name)]
    cells: dict[tuple[str, str], dict[str, Row]] = {keys[0]: {}}
    for b in bases:
        b.relacc = relacc(b.scores, b.scores, benchmarks)
        cells[keys[0]][b.model] = b
    for run in runs:
        if any(_same(run, b) for b in baselines):
            continue
        row = load_row(run)
        if row.model not in base_of:
            raise ValueError(f"{run}: model {row.model!r} has no baseline (baselines are of {models})")
        row.relacc = relacc(row.scores, base_of[row.model].scores, benchmarks)
        key = (row.section, method_name(row))
        slot = cells.setdefault(key, {})
        if row.model in slot:
            raise ValueError(f"{run}: a second {row.model!r} run for section {key[0]!r}, method {key[1]!r}")
        slot[row.model] = row
        if key not in keys:
            keys.append(key)
    order, first = list(dict.fromkeys(k[0] for k in keys)), keys[0]
    keys.sort(key=lambda k: (order.index(k[0]), k != first))  # stable: run order within a section
    return GroupedTable(models, keys, cells)


def _fmt(bench: str, value: float | None, decimals: int) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if bench == "mme" else f"{value:.{decimals}f}"


def _value(r: Row | None, c: str) -> float | None:
    if r is None:
        return None
    return r.relacc if c == "relacc" else r.scores.get(c)


def _text(c: str, v: float | None, decimals: int) -> str:
    return "-" if v is None else (f"{v:.1f}%" if c == "relacc" else _fmt(c, v, decimals))


def _cells(group: list[Row | None], cols: list[str], decimals: int) -> list[list[str]]:
    """Formatted cells per row of one section of one model; the column best in bold."""
    present = [r for r in group if r is not None]
    best = {c: max((v for r in present if (v := _value(r, c)) is not None), default=None) for c in cols}
    out = []
    for r in group:
        row = []
        for c in cols:
            v = _value(r, c)
            text = _text(c, v, decimals)
            row.append(f"**{text}**" if v is not None and len(present) > 1 and v == best[c] else text)
        out.append(row)
    return out


def to_csv(rows: list[Row], benchmarks: list[str], decimals: int = 1) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "method"] + [COLUMN_TITLES.get(b, b) for b in benchmarks] + ["RelAcc"])
    for r in rows:
        w.writerow([r.section, r.label] + [_fmt(b, r.scores.get(b), decimals) for b in benchmarks]
                   + ["-" if r.relacc is None else f"{r.relacc:.1f}%"])
    return buf.getvalue()


def to_markdown(rows: list[Row], benchmarks: list[str], decimals: int = 1) -> str:
    cols = benchmarks + ["relacc"]
    lines = ["| Method | " + " | ".join(COLUMN_TITLES.get(b, b) for b in benchmarks) + " | RelAcc |",
             "|---|" + "---:|" * len(cols)]
    for section in dict.fromkeys(r.section for r in rows):
        group = [r for r in rows if r.section == section]
        lines.append(f"| *{section}* |" + " |" * len(cols))
        for r, cells in zip(group, _cells(group, cols, decimals)):
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def grouped_csv(table: GroupedTable, benchmarks: list[str], decimals: int = 1) -> str:
    cols = benchmarks + ["relacc"]
    titles = [COLUMN_TITLES.get(b, b) for b in benchmarks] + ["RelAcc"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "method"] + [f"{m} {t}" for m in table.models for t in titles])
    for key in table.keys:
        slot = table.cells[key]
        w.writerow(list(key) + [_text(c, _value(slot.get(m), c), decimals) for m in table.models for c in cols])
    return buf.getvalue()


def grouped_markdown(table: GroupedTable, benchmarks: list[str], decimals: int = 1) -> str:
    """Header row of model names over their column groups, then the benchmark names, then sections."""
    cols = benchmarks + ["relacc"]
    titles = [COLUMN_TITLES.get(b, b) for b in benchmarks] + ["RelAcc"]
    width = len(cols) * len(table.models)
    lines = ["| Method | " + " | ".join(" | ".join([m] + [""] * (len(cols) - 1)) for m in table.models) + " |",
             "|---|" + "---:|" * width,
             "| | " + " | ".join(" | ".join(titles) for _ in table.models) + " |"]
    for section in dict.fromkeys(k[0] for k in table.keys):
        keys = [k for k in table.keys if k[0] == section]
        lines.append(f"| *{section}* |" + " |" * width)
        per_model = [_cells([table.cells[k].get(m) for k in keys], cols, decimals) for m in table.models]
        for i, key in enumerate(keys):
            cells = [cell for model_cells in per_model for cell in model_cells[i]]
            lines.append(f"| {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders written by `crop eval`")
    parser.add_argument("--baseline", required=True, nargs="+",
                        help="run folder(s) of the unpruned model(s) (RelAcc = 100%%); one per model, "
                             "several put the models side by side")
    parser.add_argument("--by-model", action="store_true", help="model column groups even with one baseline")
    parser.add_argument("--baseline-name", help="row name of the baselines in a side-by-side table")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--decimals", type=int, default=1)
    parser.add_argument("--md", help="write Markdown here (default: print it)")
    parser.add_argument("--csv", help="write CSV here")


def run(args: argparse.Namespace) -> int:
    if len(args.baseline) > 1 or args.by_model:
        table = build_grouped(args.runs, args.baseline, args.benchmarks, args.baseline_name)
        md = grouped_markdown(table, args.benchmarks, args.decimals)
        csv_text = grouped_csv(table, args.benchmarks, args.decimals)
    else:
        rows = build_rows(args.runs, args.baseline[0], args.benchmarks)
        md = to_markdown(rows, args.benchmarks, args.decimals)
        csv_text = to_csv(rows, args.benchmarks, args.decimals)
    if args.md:
        Path(args.md).write_text(md, encoding="utf-8")
    else:
        print(md, end="")
    if args.csv:
        Path(args.csv).write_text(csv_text, encoding="utf-8")
    return 0
