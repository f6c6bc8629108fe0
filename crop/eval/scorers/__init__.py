"""Official-rule scorers, one module per benchmark; each exposes ``score_records`` (pure, on
already-loaded files) and ``score_files(answers_path, BenchmarkFiles)``.

Every result is a dict with ``benchmark``, ``metric``, ``score`` (the number the paper prints:
percent, or MME's perception + cognition on its 2800 scale), ``n`` (the questions the score
averages over), the coverage fields ``n_questions``, ``n_answered``, ``missing``, ``duplicates``
and ``complete`` (counted on distinct questions of the reference file by
``common.coverage``; the same names for all six benchmarks), and break-downs.
"""

from __future__ import annotations

import importlib
from typing import Any

from crop.eval.scorers.common import BenchmarkFiles

SCORERS: dict[str, str] = {
    "gqa": "crop.eval.scorers.gqa",
    "mme": "crop.eval.scorers.mme",
    "textvqa": "crop.eval.scorers.textvqa",
    "scienceqa": "crop.eval.scorers.scienceqa",
    "vqav2": "crop.eval.scorers.vqav2",
    "pope": "crop.eval.scorers.pope",
}


def scorer(benchmark: str):
    if benchmark not in SCORERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(SCORERS)}")
    return importlib.import_module(SCORERS[benchmark])


def score_answer_file(benchmark: str, answers_path: str, files: BenchmarkFiles, **options: Any) -> dict[str, Any]:
    """Score an answer file; ``options`` go to the benchmark's ``score_files`` (e.g. ``strict``
    for GQA, ``headline_metric`` for POPE)."""
    return scorer(benchmark).score_files(answers_path, files, **options)


__all__ = ["SCORERS", "BenchmarkFiles", "scorer", "score_answer_file"]
