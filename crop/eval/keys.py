"""Question keys: the one rule that names a question row across ``crop predict-regions``,
``crop eval`` (answer ``metadata.key``, efficiency rows, resume), region files and scoring.

Why a key and not the question id: LLaVA's question files repeat ids. TextVQA's
``llava_textvqa_val_v051_ocr.jsonl`` uses the *image* id as ``question_id`` (several questions
per image) and MME's ``llava_mme.jsonl`` uses the image path (two questions per image). A region
file keyed by ``question_id`` would then hold one region for several questions.

The rule (:func:`question_keys`): walk the question file in order; the first row with an id gets
``<id>``, the n-th repeat (n = 1, 2, ...) gets ``<id>#<n>``. ``<id>`` is ``str(question_id)``
with ``%`` written ``%25`` and ``#`` written ``%23``, so the part before ``#`` never holds a
``#`` and two different (id, occurrence) pairs can never give the same key (ids of real
benchmarks hold neither character, so their keys are the plain ids). Ids are compared as
strings: ``1`` and ``"1"`` are the same question id, as in every scorer.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence


def escape_id(question_id: Any) -> str:
    """``str(question_id)`` with ``%`` -> ``%25`` and ``#`` -> ``%23`` (injective, ``#``-free)."""
    return str(question_id).replace("%", "%25").replace("#", "%23")


def question_key(question_id: Any, occurrence: int) -> str:
    """Key of the ``occurrence``-th row (0 = first) carrying ``question_id``."""
    if occurrence < 0:
        raise ValueError(f"occurrence must be >= 0, got {occurrence}")
    base = escape_id(question_id)
    return base if occurrence == 0 else f"{base}#{occurrence}"


def question_keys(question_ids: Iterable[Any]) -> list[str]:
    """Keys of question rows in file order: ``<id>`` then ``<id>#1``, ``<id>#2`` for repeats."""
    seen: Counter = Counter()
    keys = []
    for qid in question_ids:
        sid = str(qid)
        keys.append(question_key(sid, seen[sid]))
        seen[sid] += 1
    return keys


def row_keys(rows: Sequence[Mapping[str, Any]], where: str) -> list[str]:
    """Keys of the rows of a region file or a ``predict-regions`` JSONL input.

    A row's explicit ``key`` is taken as is (it was written by this rule); the other rows get
    :func:`question_keys` over their ``question_id`` (or, lacking one, their 0-based row index)
    in file order. Rows may name their ``benchmark``: keys are then per benchmark (one file can
    hold the regions of all six, whose ids overlap: POPE's 1, 2, ... and ScienceQA's "1", "2",
    ...). A (benchmark, key) given twice is an error naming both rows: one region per question.
    """
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: row {i + 1} is not a JSON object")
    keys: list[str | None] = [None if row.get("key") is None else str(row["key"]) for row in rows]
    for bench in dict.fromkeys(row.get("benchmark") for row in rows):
        implicit = [i for i, k in enumerate(keys) if k is None and rows[i].get("benchmark") == bench]
        for i, key in zip(implicit, question_keys(rows[i].get("question_id", i) for i in implicit)):
            keys[i] = key
    first: dict[tuple[Any, str], int] = {}
    for i, key in enumerate(keys):
        scoped = (rows[i].get("benchmark"), str(key))
        if scoped in first:
            bench = f"benchmark {scoped[0]!r} " if scoped[0] is not None else ""
            raise ValueError(f"{where}: rows {first[scoped] + 1} and {i + 1} have the same {bench}question key {key!r}")
        first[scoped] = i
    return [str(k) for k in keys]
