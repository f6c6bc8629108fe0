"""RelAcc: the paper's "Avg." / "RelAcc" column.

For a method row and the unpruned baseline row of the same model, RelAcc is the mean over
benchmarks of ``score / baseline_score``, printed in percent. Every benchmark enters on its own
scale (MME as perception + cognition, the others in percent): the ratio removes the scale.
A benchmark missing from the row ("-" in the paper) is left out of the mean: the paper's
SparseVLM row for LLaVA-1.5-13B has no VQAv2 and its 92.1% is the mean over the other five.

Checked against the paper's printed rows (tests/eval/test_relacc.py): e.g. Table 5 "prune" at
192 tokens: (58.7/61.9 + 1735/1862 + 56.8/58.2 + 69.2/69.5 + 85.4/85.9) / 5 = 96.9%.
"""

from __future__ import annotations

from typing import Mapping


def relative_scores(scores: Mapping[str, float | None], baseline: Mapping[str, float | None]) -> dict[str, float]:
    """benchmark -> score / baseline, for benchmarks present (not None) in both."""
    out = {}
    for bench, value in scores.items():
        base = baseline.get(bench)
        if value is None or base is None:
            continue
        if base == 0:
            raise ValueError(f"RelAcc: baseline score of {bench} is 0")
        out[bench] = value / base
    return out


def relacc(scores: Mapping[str, float | None], baseline: Mapping[str, float | None],
           benchmarks: list[str] | None = None) -> float | None:
    """Mean relative score in percent over ``benchmarks`` (default: all shared ones); None if none."""
    if benchmarks is not None:  # select first: a benchmark left out of the table cannot fail it
        scores = {b: v for b, v in scores.items() if b in benchmarks}
    rel = relative_scores(scores, baseline)
    if not rel:
        return None
    return 100.0 * sum(rel.values()) / len(rel)
