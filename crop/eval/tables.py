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

Incomplete cells: a benchmark whose run summary does not say ``"complete": true`` (answers
missing or duplicated, a ``--limit`` run, an MME without all 14 subtasks, or a summary written
before completeness was recorded) is printed with a trailing ``†`` and a footnote, never bold.
RelAcc refuses to use such a cell -- of the row or of its baseline -- with a one-line error
naming the run and benchmark, unless ``allow_incomplete`` (``--allow-incomplete``) is set; the
RelAcc computed from incomplete cells is marked ``†`` too.

By budget (``--convention kept|layer_avg``, :func:`build_budget_table`): methods as rows, one
column group per token budget (Table 2's 192 / 128 / 64), the benchmarks and RelAcc in each. A
run joins the group of the budget nearest its *measured* mean count on the chosen convention
(``visual_tokens_kept`` or ``visual_tokens_layer_avg`` of its per-question rows, within 15 %),
else a group of its own (``~96 tokens``); the "Tok." column shows the count, so FastV at R = 64,
K = 2 reads 64 on one convention and 96 on the other. The baseline row repeats in every group.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from crop.eval import BENCHMARKS
from crop.eval.relacc import relacc

INCOMPLETE_MARK = "†"
INCOMPLETE_NOTE = (f"{INCOMPLETE_MARK} incomplete: answers missing or duplicated, or the run predates completeness "
                   "records (see the run's <benchmark>/scores.json)")
COLUMN_TITLES = {"gqa": "GQA", "mme": "MME", "textvqa": "VQA^T", "scienceqa": "SQA^I", "vqav2": "VQA^V2",
                 "pope": "POPE"}


@dataclass
class Row:
    label: str
    section: str
    scores: dict[str, float | None]
    relacc: float | None = None
    model: str = ""
    path: str = ""
    incomplete: dict[str, str] = field(default_factory=dict)   # benchmark -> why its cell is incomplete
    relacc_incomplete: bool = False                            # RelAcc used an incomplete cell
    budget: int | float | None = None                          # the run's method.budget
    kept_mean: float | None = None                             # mean visual tokens kept (efficiency)
    method: str = ""                                           # the run's method.name
    budget_mode: str | None = None                             # the run's method.budget_mode


def incomplete_reason(entry: dict) -> str | None:
    """Why a scored benchmark entry of a summary is not complete; None when it is.

    Only an explicit ``"complete": true`` counts: a missing field is not taken as complete.
    """
    if entry.get("score") is None or entry.get("complete") is True:
        return None
    cov = entry.get("coverage") or {}
    if "complete" not in entry:
        return "no completeness record"
    parts = [f"{cov['missing']} of {cov['n_questions']} questions unanswered"] if cov.get("missing") else []
    if cov.get("duplicates"):
        parts.append(f"{cov['duplicates']} duplicate answers")
    return ", ".join(parts) or "incomplete"


def default_section(budget: int | float | None, method: str | None = None,
                    kept_mean: float | None = None, budget_mode: str | None = None) -> str:
    """The section of a run without an explicit ``section``.

    No budget means all tokens only for the unpruned baseline. A method with a fixed token count of
    its own (PLC keeps 68 = 64 + 4 query tokens) has no budget either: it goes under "Retain ~N
    Tokens" from its measured mean kept count, and :func:`place_by_kept` moves it into the nearest
    budget section present (the paper lists CROP-PLC under "Retain Averaged 64 Tokens").
    """
    if budget is None:
        if method in (None, "", "none") or kept_mean is None:
            return "All Tokens"
        return f"Retain ~{kept_mean:.0f} Tokens"
    averaged = "Averaged " if budget_mode == "average" else ""  # the paper's "Retain Averaged R Tokens"
    if isinstance(budget, float):
        return f"Retain {averaged}{100 * budget:.4g}% Tokens"
    return f"Retain {averaged}{budget} Tokens"


def _kept_mean(entries: dict) -> float | None:
    vals = [e["efficiency"]["visual_tokens_kept_mean"] for e in entries.values()
            if isinstance(e.get("efficiency"), dict) and e["efficiency"].get("visual_tokens_kept_mean") is not None]
    return sum(vals) / len(vals) if vals else None


NEAR = 0.15  # a fixed-count method joins a budget section when its kept mean is within 15% of R


def place_by_kept(rows: list[Row]) -> None:
    """Move rows placed by their kept count ("Retain ~N Tokens") into the section of the nearest
    integer budget R present among ``rows`` when ``|N - R| <= NEAR * R``."""
    budgets = {r.budget: r.section for r in rows if isinstance(r.budget, int) and not isinstance(r.budget, bool)}
    for r in rows:
        if r.budget is None and r.kept_mean is not None and r.section.startswith("Retain ~") and budgets:
            best = min(budgets, key=lambda b: abs(b - r.kept_mean))
            if abs(best - r.kept_mean) <= NEAR * best:
                r.section = budgets[best]


def load_row(run_dir: str | Path) -> Row:
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no summary.json (is it a `crop eval` output folder?)")
    s = json.loads(path.read_text(encoding="utf-8"))
    entries = s.get("benchmarks", {})
    scores = {b: e.get("score") for b, e in entries.items()}
    incomplete = {b: why for b, e in entries.items() if (why := incomplete_reason(e)) is not None}
    kept = _kept_mean(entries)
    section = s.get("section") or default_section(s.get("budget"), s.get("method"), kept, s.get("budget_mode"))
    return Row(label=s.get("label") or Path(run_dir).name, section=section, scores=scores,
               model=s.get("model") or "", path=str(run_dir), incomplete=incomplete,
               budget=s.get("budget"), kept_mean=kept, method=s.get("method") or "",
               budget_mode=s.get("budget_mode"))


def row_relacc(row: Row, base: Row, benchmarks: list[str], allow_incomplete: bool = False) -> float | None:
    """``relacc`` of ``row`` against ``base``, refusing incomplete cells unless ``allow_incomplete``."""
    used = [b for b in benchmarks if row.scores.get(b) is not None and base.scores.get(b) is not None]
    bad = [(r, b) for b in used for r in (row, base) if b in r.incomplete]
    if bad and not allow_incomplete:
        r, b = bad[0]
        raise ValueError(f"{r.path or r.label}: {b} is incomplete ({r.incomplete[b]}); RelAcc of {row.label!r} "
                         "refuses incomplete cells (finish the run, or pass --allow-incomplete)")
    row.relacc_incomplete = bool(bad)
    return relacc(row.scores, base.scores, benchmarks)


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def build_rows(runs: list[str], baseline: str, benchmarks: list[str], allow_incomplete: bool = False) -> list[Row]:
    base = load_row(baseline)
    rows = [base] + [load_row(r) for r in runs if not _same(r, baseline)]
    place_by_kept(rows)
    for row in rows:
        row.relacc = row_relacc(row, base, benchmarks, allow_incomplete)
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
                  baseline_name: str | None = None, allow_incomplete: bool = False) -> GroupedTable:
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
        b.relacc = row_relacc(b, b, benchmarks, allow_incomplete)
        cells[keys[0]][b.model] = b
    loaded = [load_row(run) for run in runs if not any(_same(run, b) for b in baselines)]
    place_by_kept(bases + loaded)
    for row in loaded:
        run = row.path
        if row.model not in base_of:
            raise ValueError(f"{run}: model {row.model!r} has no baseline (baselines are of {models})")
        row.relacc = row_relacc(row, base_of[row.model], benchmarks, allow_incomplete)
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


def _marked(r: Row | None, c: str) -> bool:
    """Whether the cell (benchmark or RelAcc column) of ``r`` is incomplete."""
    return r is not None and (r.relacc_incomplete if c == "relacc" else c in r.incomplete)


def _text(c: str, v: float | None, decimals: int, incomplete: bool = False) -> str:
    if v is None:
        return "-"
    text = f"{v:.1f}%" if c == "relacc" else _fmt(c, v, decimals)
    return text + INCOMPLETE_MARK if incomplete else text


def _cell(r: Row | None, c: str, decimals: int) -> str:
    return _text(c, _value(r, c), decimals, _marked(r, c))


def _cells(group: list[Row | None], cols: list[str], decimals: int) -> list[list[str]]:
    """Formatted cells per row of one section of one model; the best complete value of a column in bold."""
    present = [r for r in group if r is not None]
    best = {c: max((v for r in present if (v := _value(r, c)) is not None and not _marked(r, c)), default=None)
            for c in cols}
    out = []
    for r in group:
        row = []
        for c in cols:
            v = _value(r, c)
            text = _cell(r, c, decimals)
            bold = v is not None and not _marked(r, c) and len(present) > 1 and v == best[c]
            row.append(f"**{text}**" if bold else text)
        out.append(row)
    return out


def _footnote(rows: list[Row | None], cols: list[str]) -> str:
    """The ``†`` legend, when a table shows an incomplete cell."""
    shown = any(_marked(r, c) and _value(r, c) is not None for r in rows for c in cols)
    return f"\n{INCOMPLETE_NOTE}\n" if shown else ""


def to_csv(rows: list[Row], benchmarks: list[str], decimals: int = 1) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "method"] + [COLUMN_TITLES.get(b, b) for b in benchmarks] + ["RelAcc"])
    for r in rows:
        w.writerow([r.section, r.label] + [_cell(r, c, decimals) for c in benchmarks + ["relacc"]])
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
    return "\n".join(lines) + "\n" + _footnote(list(rows), cols)


def grouped_csv(table: GroupedTable, benchmarks: list[str], decimals: int = 1) -> str:
    cols = benchmarks + ["relacc"]
    titles = [COLUMN_TITLES.get(b, b) for b in benchmarks] + ["RelAcc"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "method"] + [f"{m} {t}" for m in table.models for t in titles])
    for key in table.keys:
        slot = table.cells[key]
        w.writerow(list(key) + [_cell(slot.get(m), c, decimals) for m in table.models for c in cols])
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
    return "\n".join(lines) + "\n" + _footnote([r for slot in table.cells.values() for r in slot.values()], cols)


# ----------------------------------------------------------------------------- budget conventions
# Table 2 by budget: methods as rows, one column group per token budget, placed on either
# convention (docs/baselines.md): tokens kept after the last pruning stage, or the visual tokens
# averaged over all decoder layers (a method keeping 576 tokens for K layers and 64 after is not
# "64 tokens" on that basis, and lands in another column group or one of its own).
CONVENTIONS = {"kept": "visual_tokens_kept", "layer_avg": "visual_tokens_layer_avg"}
CONVENTION_TITLES = {"kept": "visual tokens kept after pruning", "layer_avg": "visual tokens averaged over the LLM layers"}


def prunes_before_llm(method: str) -> bool:
    """Whether ``method`` changes only what enters the LLM (both conventions then agree)."""
    from crop.pruning.registry import METHODS

    if method == "plc":  # crop eval's PLC: the compressed projector's tokens at every layer
        return True
    spec = METHODS.get(method)
    return spec is not None and spec.stage in ("none", "before_llm")


def token_count(row: Row, convention: str) -> float | None:
    """Mean visual tokens of a run on ``convention`` over every answered question.

    Read from the per-question rows (``<run>/<benchmark>/efficiency.jsonl``). A row without the
    layer-averaged count (written before it existed) counts its kept tokens when the method prunes
    before the LLM (equal on both conventions); otherwise the run's count is unknown (None).
    """
    field_name = CONVENTIONS[convention]
    vals: list[float] = []
    for bench in row.scores:
        path = Path(row.path) / bench / "efficiency.jsonl"
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            value = rec.get(field_name)
            if value is None and convention == "layer_avg" and prunes_before_llm(row.method):
                value = rec.get("visual_tokens_kept")
            if value is None:
                return None
            vals.append(float(value))
    return sum(vals) / len(vals) if vals else None


def place_budget(count: float, budgets: list[int]) -> int | None:
    """The budget whose group a run with ``count`` tokens joins: the nearest within ``NEAR``."""
    if not budgets:
        return None
    best = min(budgets, key=lambda b: (abs(b - count), -b))
    return best if abs(best - count) <= NEAR * best else None


def budget_free_name(row: Row) -> str:
    """The row name: the label without ``"<model>/"`` and without a default ``-R<budget>`` suffix."""
    from crop.eval.config import budget_label

    name = method_name(row)
    suffix = budget_label(row.budget, row.budget_mode or "rect")
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else name


@dataclass
class BudgetTable:
    """``cells[(name, group)]``: the run of row ``name`` in budget group ``group``."""

    convention: str
    groups: list[str]
    keys: list[str]
    cells: dict[tuple[str, str], Row]
    tokens: dict[str, float]             # run path -> mean count on the convention
    baseline: str


def build_budget_table(runs: list[str], baseline: str, benchmarks: list[str], convention: str,
                       budgets: list[int] | None = None, allow_incomplete: bool = False) -> BudgetTable:
    """Place every run in the budget group nearest its measured count on ``convention``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got {convention!r}")
    base = load_row(baseline)
    base.relacc = row_relacc(base, base, benchmarks, allow_incomplete)
    loaded = [load_row(r) for r in runs if not _same(r, baseline)]
    if budgets is None:
        budgets = sorted({r.budget for r in loaded if isinstance(r.budget, int) and not isinstance(r.budget, bool)},
                         reverse=True)
    budgets = [int(b) for b in budgets]
    tokens: dict[str, float] = {}
    for row in [base] + loaded:
        count = token_count(row, convention)
        if count is None:
            raise ValueError(f"{row.path}: its per-question rows have no {CONVENTIONS[convention]} "
                             "(written by an older crop eval); re-run it, or use --convention kept")
        tokens[row.path] = count
    placed: list[tuple[Row, str]] = []
    extra: dict[str, float] = {}
    for row in loaded:
        row.relacc = row_relacc(row, base, benchmarks, allow_incomplete)
        b = place_budget(tokens[row.path], budgets)
        group = str(b) if b is not None else f"~{tokens[row.path]:.0f}"
        if b is None:
            extra[group] = tokens[row.path]
        placed.append((row, group))
    groups = [str(b) for b in budgets] + sorted(extra, key=lambda g: -extra[g])
    groups = [g for g in groups if any(grp == g for _, grp in placed)] or groups
    base_name = budget_free_name(base)
    keys, cells = [base_name], {(base_name, g): base for g in groups}
    for row, group in placed:
        name = budget_free_name(row)
        if (name, group) in cells:
            raise ValueError(f"{row.path}: a second run of {name!r} in the {group}-token group "
                             f"({cells[(name, group)].path}); give the runs distinct labels")
        cells[(name, group)] = row
        if name not in keys:
            keys.append(name)
    return BudgetTable(convention, groups, keys, cells, tokens, base_name)


def _group_title(group: str) -> str:
    return f"{group} tokens"


def _tok(table: BudgetTable, r: Row | None) -> str:
    return "-" if r is None else f"{table.tokens[r.path]:.1f}"


def budget_markdown(table: BudgetTable, benchmarks: list[str], decimals: int = 1) -> str:
    """Header row of budget groups, then "Tok." (the measured count) + benchmarks + RelAcc per group."""
    cols = benchmarks + ["relacc"]
    titles = ["Tok."] + [COLUMN_TITLES.get(b, b) for b in benchmarks] + ["RelAcc"]
    width = len(titles) * len(table.groups)
    lines = [f"Budgets on {CONVENTION_TITLES[table.convention]} (`{CONVENTIONS[table.convention]}`); "
             "Tok. = the run's measured mean.", "",
             "| Method | " + " | ".join(" | ".join([_group_title(g)] + [""] * (len(titles) - 1))
                                     for g in table.groups) + " |",
             "|---|" + "---:|" * width,
             "| | " + " | ".join(" | ".join(titles) for _ in table.groups) + " |"]
    methods = [k for k in table.keys if k != table.baseline]
    per_group = {g: _cells([table.cells.get((k, g)) for k in methods], cols, decimals) for g in table.groups}
    base_cells = [[_tok(table, table.cells[(table.baseline, g)])] +
                  [_cell(table.cells[(table.baseline, g)], c, decimals) for c in cols] for g in table.groups]
    lines.append(f"| {table.baseline} | " + " | ".join(" | ".join(c) for c in base_cells) + " |")
    for i, key in enumerate(methods):
        parts = []
        for g in table.groups:
            r = table.cells.get((key, g))
            parts.append(" | ".join([_tok(table, r)] + (per_group[g][i] if r is not None else ["-"] * len(cols))))
        lines.append(f"| {key} | " + " | ".join(parts) + " |")
    rows = list(table.cells.values())
    return "\n".join(lines) + "\n" + _footnote(rows, cols)


def budget_csv(table: BudgetTable, benchmarks: list[str], decimals: int = 1) -> str:
    cols = benchmarks + ["relacc"]
    titles = ["Tok."] + [COLUMN_TITLES.get(b, b) for b in benchmarks] + ["RelAcc"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["convention", "method"] + [f"{_group_title(g)} {t}" for g in table.groups for t in titles])
    for key in table.keys:
        out = []
        for g in table.groups:
            r = table.cells.get((key, g))
            out += [_tok(table, r)] + [_cell(r, c, decimals) for c in cols]
        w.writerow([CONVENTIONS[table.convention], key] + out)
    return buf.getvalue()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders written by `crop eval`")
    parser.add_argument("--baseline", required=True, nargs="+",
                        help="run folder(s) of the unpruned model(s) (RelAcc = 100%%); one per model, "
                             "several put the models side by side")
    parser.add_argument("--by-model", action="store_true", help="model column groups even with one baseline")
    parser.add_argument("--baseline-name", help="row name of the baselines in a side-by-side table")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS),
                        help="columns, in order (default: the paper's six); RelAcc is taken over these")
    parser.add_argument("--decimals", type=int, default=1, help="decimals of the scores (default 1; MME is an integer)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="compute RelAcc even from incomplete cells (partial or duplicated answers); marked †")
    parser.add_argument("--convention", choices=sorted(CONVENTIONS),
                        help="methods as rows and one column group per token budget, each run placed by its "
                             "measured count: kept = visual tokens after the last pruning stage, layer_avg = "
                             "visual tokens averaged over the LLM's layers (docs/baselines.md)")
    parser.add_argument("--budgets", nargs="+", type=int,
                        help="the column groups of --convention (default: the runs' integer budgets); a run "
                             f"more than {NEAR:.0%}% from every budget gets a group of its own")
    parser.add_argument("--md", help="write Markdown here (default: print it)")
    parser.add_argument("--csv", help="write CSV here")


def run(args: argparse.Namespace) -> int:
    if args.convention:
        if len(args.baseline) > 1 or args.by_model:
            raise ValueError("--convention lays out one model (one baseline); run it once per model")
        table = build_budget_table(args.runs, args.baseline[0], args.benchmarks, args.convention, args.budgets,
                                   args.allow_incomplete)
        md = budget_markdown(table, args.benchmarks, args.decimals)
        csv_text = budget_csv(table, args.benchmarks, args.decimals)
    elif len(args.baseline) > 1 or args.by_model:
        table = build_grouped(args.runs, args.baseline, args.benchmarks, args.baseline_name, args.allow_incomplete)
        md = grouped_markdown(table, args.benchmarks, args.decimals)
        csv_text = grouped_csv(table, args.benchmarks, args.decimals)
    else:
        rows = build_rows(args.runs, args.baseline[0], args.benchmarks, args.allow_incomplete)
        md = to_markdown(rows, args.benchmarks, args.decimals)
        csv_text = to_csv(rows, args.benchmarks, args.decimals)
    if args.md:
        Path(args.md).write_text(md, encoding="utf-8")
    else:
        print(md, end="")
    if args.csv:
        Path(args.csv).write_text(csv_text, encoding="utf-8")
    return 0
