"""TextVQA accuracy as LLaVA-1.5's ``eval_textvqa.py`` computes it (EvalAI soft accuracy).

Matching rule of the original: LLaVA's question file uses the TextVQA *image* id as
``question_id`` (several questions share it), so an answer is joined to its annotation by
``(image_id, question.lower())``, the question being recovered from the answer's ``prompt``:

* prompt starting with ``OCR tokens: `` -> the text between ``Question: `` and `` Short answer:``;
* prompt of 3 lines holding ``Reference OCR token: `` -> line 2 if the prompt starts with that
  marker, else line 1;
* prompt of 2 lines -> line 1;
* anything else is an error (the original asserts).

Score per answer: EvalAI-normalize prediction and the ten references, then the leave-one-out
accuracy (``common.soft_accuracy``); the original asserts exactly ten references. Headline:
mean x 100 over the answer rows, as the original: a question without an answer is not in the
denominator and a duplicated answer row is scored twice. Both are reported (``missing``,
``duplicates``, counted per (image id, question) against the annotation file) and make
``complete`` false, so a partial file cannot pass for a full one.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from crop.eval.scorers.common import (BenchmarkFiles, coverage, iter_answers, percent, read_json, read_jsonl,
                                      soft_accuracy)
from crop.eval.scorers.normalize import evalai_normalize

NAME = "textvqa"
_OCR_PROMPT = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def question_from_prompt(prompt: str) -> str:
    """The lower-cased question inside an answer's ``prompt`` (rules in the module docstring)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_PROMPT.search(prompt)
        if match is None:
            raise ValueError(f"textvqa: OCR-style prompt without 'Question: ... Short answer:': {prompt!r:.200}")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"textvqa: cannot find the question in prompt {prompt!r:.200} "
                         "(expected 2 lines, or 3 with 'Reference OCR token: ')")
    return question.lower()


def index_annotations(data: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(image_id, lower-cased question) -> the ten reference answers (later duplicates win)."""
    return {(str(a["image_id"]), a["question"].lower()): a["answers"] for a in data}


def annotation_counts(data: list[dict[str, Any]]) -> Counter:
    """(image_id, lower-cased question) -> how many annotation entries carry it (the questions)."""
    return Counter((str(a["image_id"]), a["question"].lower()) for a in data)


def score_records(answers: list[dict[str, Any]], annotations: dict[tuple[str, str], list[str]],
                  expected: Counter | None = None) -> dict[str, Any]:
    """``expected``: :func:`annotation_counts` of the annotation file (default: one per key)."""
    per_question = []
    keys = []
    for row in iter_answers(answers, NAME):
        key = (str(row["question_id"]), question_from_prompt(row.get("prompt", "")))
        keys.append(key)
        if key not in annotations:
            raise KeyError(f"textvqa: no annotation for image {key[0]!r} question {key[1]!r}")
        refs = [evalai_normalize(a) for a in annotations[key]]
        if len(refs) != 10:
            raise ValueError(f"textvqa: {key} has {len(refs)} reference answers, the metric needs 10")
        per_question.append(soft_accuracy(evalai_normalize(row["text"]), refs))
    n = len(per_question)
    cov = coverage(expected if expected is not None else Counter(annotations.keys()), keys)
    return {"benchmark": NAME, "metric": "accuracy", "score": percent(sum(per_question), n), "n": n, **cov}


def score_files(answers_path: str, files: BenchmarkFiles) -> dict[str, Any]:
    data = read_json(files.need("annotation_file", NAME))["data"]
    return score_records(read_jsonl(answers_path), index_annotations(data), annotation_counts(data))
