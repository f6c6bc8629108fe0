"""``crop table``: a Table-2-style results table (Markdown and CSV) from several run folders.

    crop table runs/llava7b-none runs/llava7b-ilp-r192 runs/llava7b-fastv-r192 \\
        --baseline runs/llava7b-none --md table.md --csv table.csv

Each run folder is a ``crop eval`` output (``summary.json``). Rows are grouped into sections
(the run's ``section``, e.g. "Retain Averaged 192 Tokens (↓ 66.7%)"; the baseline's section
comes first), columns are the benchmarks in the paper's order plus RelAcc against the baseline
(``crop.eval.relacc``). Markdown marks the best value of each column within a section in bold.
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


def load_row(run_dir: str | Path) -> Row:
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no summary.json (is it a `crop eval` output folder?)")
    s = json.loads(path.read_text(encoding="utf-8"))
    scores = {b: e.get("score") for b, e in s.get("benchmarks", {}).items()}
    section = s.get("section") or (f"Retain {s['budget']} Tokens" if s.get("budget") is not None else "All Tokens")
    return Row(label=s.get("label") or Path(run_dir).name, section=section, scores=scores)


def build_rows(runs: list[str], baseline: str, benchmarks: list[str]) -> list[Row]:
    base = load_row(baseline)
    rows = [base] + [load_row(r) for r in runs if Path(r).resolve() != Path(baseline).resolve()]
    for row in rows:
        row.relacc = relacc(row.scores, base.scores, benchmarks)
    order = list(dict.fromkeys([base.section] + [r.section for r in rows]))
    return sorted(rows, key=lambda r: (order.index(r.section), r is not base))


def _fmt(bench: str, value: float | None, decimals: int) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if bench == "mme" else f"{value:.{decimals}f}"


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

        def value(r: Row, c: str) -> float | None:
            return r.relacc if c == "relacc" else r.scores.get(c)

        best = {c: max((v for r in group if (v := value(r, c)) is not None), default=None) for c in cols}
        for r in group:
            cells = []
            for c in cols:
                v = value(r, c)
                text = "-" if v is None else (f"{v:.1f}%" if c == "relacc" else _fmt(c, v, decimals))
                cells.append(f"**{text}**" if v is not None and len(group) > 1 and v == best[c] else text)
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders written by `crop eval`")
    parser.add_argument("--baseline", required=True, help="run folder of the unpruned model (RelAcc = 100%%)")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--decimals", type=int, default=1)
    parser.add_argument("--md", help="write Markdown here (default: print it)")
    parser.add_argument("--csv", help="write CSV here")


def run(args: argparse.Namespace) -> int:
    rows = build_rows(args.runs, args.baseline, args.benchmarks)
    md = to_markdown(rows, args.benchmarks, args.decimals)
    if args.md:
        Path(args.md).write_text(md, encoding="utf-8")
    else:
        print(md, end="")
    if args.csv:
        Path(args.csv).write_text(to_csv(rows, args.benchmarks, args.decimals), encoding="utf-8")
    return 0
