"""ScienceQA-IMG as LLaVA-1.5's ``eval_science_qa.py`` scores it.

For every problem id of ``pid_splits.json[split]`` (``test``), with options ``A``-``E``:

* no answer for the id -> prediction text ``FAILED`` and prompt ``Unknown``;
* the parsed letter is the text itself if it is one of the options; else its first character
  when the text has at least 3 characters, starts with an option letter and continues with
  ``". "`` (``"B. tiger"``); else the single match of ``The answer is ([A-Z]).`` (the ``.`` is a
  regex wildcard) when there is exactly one; else ``FAILED``;
* a letter beyond the problem's number of choices, or ``FAILED``, gives index -1 (the original's
  random-choice fallback sits after a ``return`` and never runs), which is always wrong;
* correct iff the index equals ``answer`` in ``problems.json``.

``accuracy`` is over the whole split; the paper's SQA-IMG is ``img_accuracy``: over answers
whose ``prompt`` contains ``<image>`` (so an unanswered image problem, whose prompt is
``Unknown``, drops out of it, as in the original). Answers are read into a dict by id, so a
duplicated id keeps its last answer, and answers outside the split are ignored, as in the
original. ``missing`` / ``duplicates`` are counted on the split's problem ids and make
``complete`` false: a missing image problem *raises* the official IMG accuracy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from crop.eval.scorers.common import BenchmarkFiles, coverage, iter_answers, percent, read_json, read_jsonl

NAME = "scienceqa"
OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_letter(text: str) -> str:
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def choice_index(letter: str, n_choices: int) -> int:
    return OPTIONS.index(letter) if letter in OPTIONS[:n_choices] else -1


def score_records(answers: list[dict[str, Any]], problems: dict[str, dict[str, Any]],
                  split_ids: list[str]) -> dict[str, Any]:
    rows = list(iter_answers(answers, NAME))
    predictions = {str(row["question_id"]): row for row in rows}  # last one kept, as the original
    in_split = set(split_ids)
    correct = total = img_correct = img_total = 0
    for pid in split_ids:
        prob = problems[pid]
        pred = predictions.get(pid)
        if pred is None:
            text, prompt = "FAILED", "Unknown"
        else:
            text, prompt = pred["text"], pred.get("prompt", "")
        ok = choice_index(parse_letter(text), len(prob["choices"])) == prob["answer"]
        correct += ok
        total += 1
        if "<image>" in prompt:
            img_correct += ok
            img_total += 1
    return {"benchmark": NAME, "metric": "IMG accuracy", "score": percent(img_correct, img_total),
            "img_accuracy": percent(img_correct, img_total), "accuracy": percent(correct, total),
            "n": img_total, "n_total": total,
            **coverage(dict.fromkeys(split_ids, 1), (qid for r in rows if (qid := str(r["question_id"])) in in_split))}


def score_files(answers_path: str, files: BenchmarkFiles) -> dict[str, Any]:
    base = files.need("base_dir", NAME)
    split_ids = read_json(Path(base) / "pid_splits.json")[files.split]
    problems = read_json(Path(base) / "problems.json")
    return score_records(read_jsonl(answers_path), problems, split_ids)
