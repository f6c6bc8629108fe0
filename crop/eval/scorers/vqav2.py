"""VQAv2: LLaVA-1.5's submission converter and a local scorer with the official VQA rules.

The paper's VQAv2 numbers are test-dev scores, which only the EvalAI server computes (its
annotations are private). What we can do here:

* ``submission(...)`` -- LLaVA's ``convert_vqav2_for_submission.py``: for every question of the
  *full* test split question file (``llava_vqav2_mscoco_test2015.jsonl``), emit
  ``{"question_id", "answer"}`` with the EvalAI-normalized prediction, or ``""`` when the answer
  file has none (test-dev answers are a subset of test). Upload the JSON to EvalAI.
* ``score_records(...)`` -- local accuracy against val-style annotation files
  (``v2_mscoco_val2014_annotations.json``), following the official ``vqaEval.py``: predictions go
  through the same EvalAI normalization as the submission, then newlines/tabs become spaces and
  both sides are stripped; ONLY when the ten references are not all identical are references
  and prediction passed through punctuation and digit/article processing; score = leave-one-out
  ``min(1, matches / 3)`` averaged over the ten references. Per answer-type accuracies too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from crop.eval.scorers.common import BenchmarkFiles, iter_answers, percent, read_json, read_jsonl, soft_accuracy
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


def submission(answers: list[dict[str, Any]], split_questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """EvalAI upload rows, one per question of the split file, in that file's order."""
    texts = {row["question_id"]: row["text"] for row in iter_answers(answers, NAME)}
    return [{"question_id": q["question_id"],
             "answer": evalai_normalize(texts[q["question_id"]]) if q["question_id"] in texts else ""}
            for q in split_questions]


def score_records(answers: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> dict[str, Any]:
    by_id = {a["question_id"]: a for a in annotations}
    per_type: dict[str, list[float]] = defaultdict(list)
    scores = []
    for row in iter_answers(answers, NAME):
        ann = by_id.get(row["question_id"])
        if ann is None:
            raise KeyError(f"vqav2: question {row['question_id']!r} is not in the annotation file")
        acc = official_accuracy(evalai_normalize(row["text"]), [a["answer"] for a in ann["answers"]])
        scores.append(acc)
        per_type[ann.get("answer_type", "unknown")].append(acc)
    n = len(scores)
    return {"benchmark": NAME, "metric": "accuracy (local, val-style annotations)",
            "score": percent(sum(scores), n), "n": n,
            "per_answer_type": {t: percent(sum(v), len(v)) for t, v in sorted(per_type.items())}}


def score_files(answers_path: str, files: BenchmarkFiles) -> dict[str, Any]:
    data = read_json(files.need("annotation_file", NAME))
    annotations = data["annotations"] if isinstance(data, dict) else data
    return score_records(read_jsonl(answers_path), annotations)
