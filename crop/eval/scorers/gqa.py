"""GQA accuracy: LLaVA-1.5's ``convert_gqa_for_eval.py`` followed by GQA's ``eval.py`` accuracy.

* Conversion (LLaVA): ``prediction = text.rstrip('.').lower()`` -- trailing periods only, no
  whitespace strip, no other normalization.
* Scoring (GQA ``eval.py``, accuracy part): predictions are read into a dict by ``questionId``
  (a duplicate id keeps its last prediction, here too); for every question of
  ``testdev_balanced_questions.json`` with ``isBalanced`` true, correct iff the prediction string
  equals ``answer`` exactly; predictions for other questions are ignored. The official script
  raises when a balanced question has no prediction; here ``strict=True`` does the same and the
  default scores the answered questions (a partial run), with ``missing`` > 0 and ``complete``
  false (deliberate: partial runs can be inspected; ``crop table`` refuses them for RelAcc).
* Break-downs the script also prints: ``open`` (structural type ``query``) vs ``binary`` (all
  other structural types), per structural and per semantic type.

Question ids are compared as strings (GQA's file keys are strings).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from crop.eval.scorers.common import BenchmarkFiles, coverage, iter_answers, percent, read_json, read_jsonl

NAME = "gqa"


def convert_prediction(text: str) -> str:
    return text.rstrip(".").lower()


def convert_answers(answers: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The ``testdev_balanced_predictions.json`` rows LLaVA writes for GQA's eval script."""
    return [{"questionId": row["question_id"], "prediction": convert_prediction(row["text"])}
            for row in iter_answers(answers, NAME)]


def score_records(answers: list[dict[str, Any]], questions: dict[str, dict[str, Any]],
                  strict: bool = False) -> dict[str, Any]:
    converted = convert_answers(answers)
    predictions = {str(p["questionId"]): p["prediction"] for p in converted}  # last one kept, as eval.py
    unknown = [qid for qid in predictions if qid not in questions]
    if unknown:
        raise KeyError(f"gqa: {len(unknown)} answered question ids are not in the questions file, e.g. {unknown[0]!r}")
    acc: list[float] = []
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_structural: dict[str, list[float]] = defaultdict(list)
    by_semantic: dict[str, list[float]] = defaultdict(list)
    for qid, q in questions.items():
        if not q.get("isBalanced", True):
            continue
        if qid not in predictions:
            if strict:
                raise KeyError(f"gqa: no prediction for question {qid} (the official script requires all)")
            continue
        score = 1.0 if predictions[qid] == q["answer"] else 0.0
        acc.append(score)
        types = q.get("types", {})
        structural = types.get("structural", "")
        by_answer_type["open" if structural == "query" else "binary"].append(score)
        by_structural[structural].append(score)
        by_semantic[types.get("semantic", "")].append(score)

    def pct(d: dict[str, list[float]]) -> dict[str, float]:
        return {k: percent(sum(v), len(v)) for k, v in sorted(d.items())}

    balanced = {qid: 1 for qid, q in questions.items() if q.get("isBalanced", True)}
    cov = coverage(balanced, (str(p["questionId"]) for p in converted if str(p["questionId"]) in balanced))
    return {"benchmark": NAME, "metric": "accuracy", "score": percent(sum(acc), len(acc)), "n": len(acc),
            **cov, **pct(by_answer_type),
            "per_structural_type": pct(by_structural), "per_semantic_type": pct(by_semantic)}


def score_files(answers_path: str, files: BenchmarkFiles, strict: bool = False) -> dict[str, Any]:
    questions = read_json(files.need("annotation_file", NAME))
    return score_records(read_jsonl(answers_path), questions, strict=strict)
