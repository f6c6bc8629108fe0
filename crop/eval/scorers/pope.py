"""POPE as LLaVA-1.5's ``eval_pope.py`` scores it, per split (adversarial / popular / random).

Answer -> label (the original's rule, quirks included):

* keep only the text before the first ``.`` (if any), delete commas, split on single spaces;
* ``no`` if one of the words is exactly ``No``, ``no`` or ``not``; ``yes`` otherwise
  (so ``NO`` and ``Not`` are ``yes``, and so is an empty answer).

Per split: TP/FP/TN/FN with ``yes`` as positive, accuracy, precision, recall, F1, yes-ratio.
Splits come from the question file's ``category``; labels from ``coco_pope_<split>.json`` (JSON
lines). The original pairs the i-th answer of a split with the i-th label line; here the i-th
*question of that split in the question file* is paired with the i-th label line (the same
thing for answer files written in question order, and robust to resumed runs), and the image
names of each pair are checked. Deliberate differences, because the original's positional
``zip`` misaligns every later pair: a missing answer leaves its question out (instead of shifting
the rest), and a duplicated ``question_id`` keeps its last answer (as the VQAv2, GQA and
ScienceQA scripts do). ``missing`` / ``duplicates`` are counted on the question file's ids and
make ``complete`` false. Ids are compared as strings.

Headline: the mean over the splits of ``headline_metric`` -- ``f1`` by default, because the
paper's LLaVA-1.5-7B baseline (85.9) is LLaVA-1.5's mean F1 (87.3 / 86.1 / 84.2); the
paper's appendix calls it mean accuracy, so ``accuracy`` is available too. Division by zero (no
``yes`` predictions) makes the original crash; here precision/F1 are 0.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from crop.eval.scorers.common import BenchmarkFiles, coverage, iter_answers, read_jsonl

NAME = "pope"
SPLITS = ("adversarial", "popular", "random")


def answer_to_label(text: str) -> str:
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def split_metrics(preds: list[str], labels: list[str]) -> dict[str, float]:
    tp = sum(p == "yes" and l == "yes" for p, l in zip(preds, labels))
    fp = sum(p == "yes" and l != "yes" for p, l in zip(preds, labels))
    tn = sum(p == "no" and l == "no" for p, l in zip(preds, labels))
    fn = sum(p == "no" and l != "no" for p, l in zip(preds, labels))
    n = len(preds)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100 * (tp + tn) / n if n else 0.0, "precision": 100 * precision, "recall": 100 * recall,
            "f1": 100 * f1, "yes_ratio": 100 * preds.count("yes") / n if n else 0.0,
            "TP": tp, "FP": fp, "TN": tn, "FN": fn, "n": n}


def load_labels(annotation_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """split -> rows of ``coco_pope_<split>.json`` in file order."""
    out = {}
    for path in sorted(Path(annotation_dir).iterdir()):
        if not (path.name.startswith("coco_pope_") and path.name.endswith(".json")):
            raise ValueError(f"pope: unexpected file {path.name} in the annotation folder "
                             "(the official script accepts only coco_pope_<split>.json)")
        out[path.name[len("coco_pope_"):-len(".json")]] = read_jsonl(path)
    return out


def score_records(answers: list[dict[str, Any]], questions: list[dict[str, Any]],
                  labels: dict[str, list[dict[str, Any]]], headline_metric: str = "f1") -> dict[str, Any]:
    if headline_metric not in ("f1", "accuracy"):
        raise ValueError(f"pope: headline_metric must be 'f1' or 'accuracy', not {headline_metric!r}")
    # question_id -> (split, position of the question within its split)
    position: dict[str, tuple[str, int]] = {}
    counters: dict[str, int] = defaultdict(int)
    image_of = {str(q["question_id"]): q.get("image") for q in questions}
    for q in questions:
        qid, split = str(q["question_id"]), q["category"]
        if qid in position:
            raise ValueError(f"pope: question file repeats question_id {qid!r}")
        position[qid] = (split, counters[split])
        counters[split] += 1
    # split -> position -> (predicted, label); a later answer to the same question replaces it
    per_split: dict[str, dict[int, tuple[str, str]]] = defaultdict(dict)
    answered = []
    for row in iter_answers(answers, NAME):
        qid = str(row["question_id"])
        if qid not in position:
            raise KeyError(f"pope: answer for unknown question_id {row['question_id']!r}")
        split, i = position[qid]
        if split not in labels:
            raise KeyError(f"pope: no coco_pope_{split}.json for split {split!r}")
        if i >= len(labels[split]):
            raise ValueError(f"pope: split {split} has more questions than label lines")
        label_row = labels[split][i]
        q_image, l_image = image_of[qid], label_row.get("image")
        if q_image is not None and l_image is not None and q_image != l_image:
            raise ValueError(f"pope: question {row['question_id']} shows {q_image} but label line {i} of "
                             f"{split} is about {l_image}: question and label files are not aligned")
        per_split[split][i] = (answer_to_label(row["text"]), label_row["label"])
        answered.append(qid)
    splits = {}
    for split in sorted(per_split):
        rows = [per_split[split][i] for i in sorted(per_split[split])]
        splits[split] = split_metrics([p for p, _ in rows], [l for _, l in rows])
    cov = coverage(dict.fromkeys(position, 1), answered)
    cov["complete"] = cov["complete"] and set(per_split) == set(labels)
    head = [m[headline_metric] for m in splits.values()]
    return {"benchmark": NAME, "metric": f"mean {headline_metric} over splits",
            "score": sum(head) / len(head) if head else 0.0,
            "mean_accuracy": sum(m["accuracy"] for m in splits.values()) / max(len(splits), 1),
            "mean_f1": sum(m["f1"] for m in splits.values()) / max(len(splits), 1),
            "n": sum(m["n"] for m in splits.values()), **cov, "splits": splits}


def score_files(answers_path: str, files: BenchmarkFiles, headline_metric: str = "f1") -> dict[str, Any]:
    questions = read_jsonl(files.need("question_file", NAME))
    labels = load_labels(files.need("annotation_dir", NAME))
    return score_records(read_jsonl(answers_path), questions, labels, headline_metric)
