"""Shared pieces of the scorers: reading answer files and the ten-answer soft accuracy.

Answer files follow LLaVA-1.5's format (``model_vqa_loader.py``): one JSON object per line with
``question_id``, ``prompt`` (the question text as given to the model, without the chat
template), ``text`` (the decoded answer, stripped), ``answer_id``, ``model_id``, ``metadata``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Iterable, Iterator, Mapping


@dataclass(frozen=True)
class BenchmarkFiles:
    """Official input files a scorer may need; which ones depends on the benchmark.

    question_file:   LLaVA-1.5 question file (``llava_*.jsonl``, or ``llava_test_CQM-A.json``).
    annotation_file: benchmark annotations (``TextVQA_0.5.1_val.json``,
                     ``testdev_balanced_questions.json``, VQAv2 ``*_annotations.json``).
    annotation_dir:  POPE's folder of ``coco_pope_<split>.json`` files.
    base_dir:        ScienceQA folder with ``problems.json`` and ``pid_splits.json``.
    mme_root:        ``MME_Benchmark_release_version`` (per-subtask folders of question txts).
    split:           ScienceQA split name (``test``).
    """

    question_file: str | None = None
    annotation_file: str | None = None
    annotation_dir: str | None = None
    base_dir: str | None = None
    mme_root: str | None = None
    split: str = "test"

    def need(self, field: str, benchmark: str) -> Path:
        value = getattr(self, field)
        if not value:
            raise ValueError(f"{benchmark}: scoring needs `{field}` (flag --{field.replace('_', '-')})")
        path = Path(value)
        if not path.exists():
            raise FileNotFoundError(f"{benchmark}: {field} {path} does not exist")
        return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not a JSON object ({err})") from err
    return rows


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def iter_answers(answers: Iterable[dict[str, Any]], benchmark: str) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(answers):
        if not isinstance(row, dict) or "question_id" not in row or not isinstance(row.get("text"), str):
            raise ValueError(f"{benchmark}: answer row {i} needs question_id and a text string: {row!r:.200}")
        yield row


def soft_accuracy(pred: str, refs: list[str]) -> float:
    """VQA leave-one-out accuracy: mean over the references r_i of min(1, #{j != i: r_j == pred} / 3).

    With ten references this is the familiar "3 of 10 humans agree" rule averaged over the ten
    subsets of nine. Inputs must already be normalized by the caller's rule.
    """
    if not refs:
        raise ValueError("soft_accuracy needs at least one reference answer")
    total = 0.0
    for i in range(len(refs)):
        matches = sum(1 for j, ref in enumerate(refs) if j != i and ref == pred)
        total += min(1.0, matches / 3.0)
    return total / len(refs)


COVERAGE_FIELDS = ("n_questions", "n_answered", "missing", "duplicates", "complete")


def coverage(expected: Mapping[Hashable, int], answered: Iterable[Hashable]) -> dict[str, Any]:
    """How an answer file covers the benchmark's questions, counted on distinct questions.

    ``expected``: question identity -> how many questions of the reference file carry it (1,
    except where the reference itself repeats a question, e.g. two identical TextVQA rows);
    ``answered``: the identity of every answer row, in any order (answers to questions outside
    ``expected`` must be filtered or rejected by the caller).

    * ``n_questions``: questions of the reference; ``n_answered``: those with an answer;
    * ``missing`` = ``n_questions - n_answered``; ``duplicates``: answer rows beyond one per question;
    * ``complete``: at least one question, none missing, no duplicates. Counting rows instead
      would let one missing answer plus one duplicated answer pass for a complete file.
    """
    counts = Counter(answered)
    n_questions = sum(expected.values())
    n_answered = sum(min(counts.get(k, 0), n) for k, n in expected.items())
    duplicates = sum(max(0, n - expected.get(k, 0)) for k, n in counts.items())
    missing = n_questions - n_answered
    return {"n_questions": n_questions, "n_answered": n_answered, "missing": missing,
            "duplicates": duplicates, "complete": n_questions > 0 and missing == 0 and duplicates == 0}


def percent(num: float, den: int) -> float:
    return 100.0 * num / den if den else 0.0
