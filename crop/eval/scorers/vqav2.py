"""VQAv2: LLaVA-1.5's submission converter and a local scorer with the official VQA rules.

The paper's VQAv2 numbers are test-dev scores, which only the EvalAI server computes (its
annotations are private). What we can do here:

* ``submission(...)`` -- LLaVA's ``convert_vqav2_for_submission.py``: the answer file is read
  into a dict by ``question_id`` (a duplicated id keeps its *last* answer); for every question of
  the *full* test split question file (``llava_vqav2_mscoco_test2015.jsonl``), in that file's
  order, emit ``{"question_id", "answer"}`` with the EvalAI-normalized prediction, or ``""`` when
  the answer file has none (test-dev answers are a subset of test). Answers to questions outside
  the split are dropped. Upload the JSON to EvalAI, which scores ``""`` as 0 for every test-dev
  question without an answer: missing answers count in the denominator.
* ``score_records(...)`` -- the same pipeline scored locally against val-style annotation files
  (``v2_mscoco_val2014_annotations.json``) with the official ``vqaEval.py`` rule: every question
  of the evaluated set gets the submission's answer (last answer of its id, ``""`` when none),
  then newlines/tabs become spaces and both sides are stripped; ONLY when the ten references
  are not all identical are references and prediction passed through punctuation and
  digit/article processing; score = leave-one-out ``min(1, matches / 3)`` averaged over the ten
  references, mean over *all* evaluated questions. Per answer-type accuracies too.
  The evaluated set is the question file's ids when one is given (a val subset), else every
  question of the annotation file. ``missing`` / ``duplicates`` are reported beside the score.

Ids are compared as strings (``5`` and ``"5"`` are one question); the upload keeps the split
file's own ids.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from crop.eval.scorers.common import (BenchmarkFiles, coverage, iter_answers, percent, read_json, read_jsonl,
                                      soft_accuracy)
from crop.eval.scorers.normalize import evalai_normalize, vqa_process_digit_article, vqa_process_punctuation

NAME = "vqav2"


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def official_accuracy(submitted: str, references: list[str]) -> float:
    """Accuracy of one submitted answer under ``vqaEval.py`` (references as in the annotations)."""
    refs = [_clean(r) for r in references]
    pred = _clean(submitted)
    if len(set(refs)) > 1:
        refs = [vqa_process_digit_article(vqa_process_punctuation(r)) for r in refs]
        pred = vqa_process_digit_article(vqa_process_punctuation(pred))
    return soft_accuracy(pred, refs)


def last_answers(answers: list[dict[str, Any]]) -> dict[str, str]:
    """question id (as a string) -> text of its last answer row (the converter's dict)."""
    return {str(row["question_id"]): row["text"] for row in iter_answers(answers, NAME)}


def submission(answers: list[dict[str, Any]], split_questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """EvalAI upload rows, one per question of the split file, in that file's order."""
    texts = last_answers(answers)
    return [{"question_id": q["question_id"],
             "answer": evalai_normalize(texts[str(q["question_id"])]) if str(q["question_id"]) in texts else ""}
            for q in split_questions]


def answer_coverage(answers: list[dict[str, Any]], questions: list[dict[str, Any]]) -> dict[str, Any]:
    """``coverage`` of an answer file against a question file (answers outside it are not counted)."""
    ids = {str(q["question_id"]): 1 for q in questions}
    return coverage(ids, (qid for row in iter_answers(answers, NAME) if (qid := str(row["question_id"])) in ids))


def score_records(answers: list[dict[str, Any]], annotations: list[dict[str, Any]],
                  question_ids: list[Any] | None = None) -> dict[str, Any]:
    """Local accuracy; ``question_ids``: the evaluated questions (default: all annotated ones)."""
    by_id = {str(a["question_id"]): a for a in annotations}
    evaluated = list(dict.fromkeys(str(q) for q in question_ids)) if question_ids is not None else list(by_id)
    for qid in evaluated:
        if qid not in by_id:
            raise KeyError(f"vqav2: question {qid!r} of the question file is not in the annotation file")
    rows = list(iter_answers(answers, NAME))
    ids = dict.fromkeys(evaluated, 1)
    for row in rows:
        if str(row["question_id"]) not in ids:
            raise KeyError(f"vqav2: answer for question {row['question_id']!r}, which is not among the "
                           f"{len(ids)} evaluated questions (wrong question or annotation file?)")
    texts = last_answers(rows)
    per_type: dict[str, list[float]] = defaultdict(list)
    scores = []
    for qid in evaluated:
        ann = by_id[qid]
        submitted = evalai_normalize(texts[qid]) if qid in texts else ""   # the converter's "" -> 0
        acc = official_accuracy(submitted, [a["answer"] for a in ann["answers"]])
        scores.append(acc)
        per_type[ann.get("answer_type", "unknown")].append(acc)
    n = len(scores)
    return {"benchmark": NAME, "metric": "accuracy (local, val-style annotations)",
            "score": percent(sum(scores), n), "n": n, **coverage(ids, (str(r["question_id"]) for r in rows)),
            "per_answer_type": {t: percent(sum(v), len(v)) for t, v in sorted(per_type.items())}}


def score_files(answers_path: str, files: BenchmarkFiles) -> dict[str, Any]:
    data = read_json(files.need("annotation_file", NAME))
    annotations = data["annotations"] if isinstance(data, dict) else data
    question_ids = ([q["question_id"] for q in read_jsonl(files.question_file)]
                    if files.question_file else None)
    return score_records(read_jsonl(answers_path), annotations, question_ids)
