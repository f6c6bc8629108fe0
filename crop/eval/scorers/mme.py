"""MME: LLaVA-1.5's ``convert_answer_to_mme.py`` followed by MME's ``eval_tool/calculation.py``.

Conversion (LLaVA):

* ``question_id`` is ``<subtask>/<...>/<image>``: subtask = first path part, ground-truth file =
  image stem + ``.txt``;
* the prediction is written as the raw answer ``text`` (no strip, no case change) into
  ``<subtask>.txt`` as ``file<TAB>question<TAB>gt<TAB>text``, rows in answer-file order;
* the question to look up is the prompt without ``Answer the question using a single word or
  phrase.`` (stripped), plus `` Please answer yes or no.`` when absent; if that key is not in the
  ground truth, the same with two spaces before ``Please`` (some MME files have them).

Ground truth: each subtask folder of ``MME_Benchmark_release_version`` holds ``<stem>.txt`` files
with ``question<TAB>answer`` lines, either beside the images or under
``questions_answers_YN/`` (when an ``images/`` folder exists).

Calculation (MME ``calculation.py``): the prediction field is lower-cased, never stripped; ``yes``
/ ``no`` as is, else ``yes`` if its first four characters contain ``yes``, else ``no`` if they
contain ``no``, else ``other`` (always wrong). So ``"  yes"`` is ``other`` but ``" yes"`` and
``"  no"`` are not (:func:`parse_label`). Per subtask: acc = correct questions / questions, acc+
= images with both questions right / images, subtask score = (acc + acc+) x 100. Perception =
sum of 10 subtasks (max 2000), cognition = sum of 4 (max 800); the paper reports perception +
cognition (max 2800).

Deliberate differences, each where the original crashes or misreads its own file:

* tabs/newlines inside a prediction become spaces (the original writes them into its
  tab-separated file and then fails to split the line);
* the two answers of an image are paired by their ground-truth question, not by consecutive
  lines (identical for answer files in question-file order; the original pairs the wrong
  questions once one answer is missing, duplicated or moved, and asserts on an odd count);
* a duplicated answer to one question keeps the last one (the original keeps both lines);
* a partial file scores what is there (acc over answered questions, acc+ over images with both
  answered) where the original fails on a missing subtask file or an odd line count; a subtask
  without answers scores 0. ``missing`` / ``duplicates`` count ground-truth questions, and
  ``complete`` is false unless all 14 subtasks are in the ground truth and every question has
  exactly one answer, so such a score never passes for a complete one.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from crop.eval.scorers.common import BenchmarkFiles, coverage, iter_answers, read_jsonl

NAME = "mme"
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
              "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
YES_NO_SUFFIX = "Please answer yes or no."

GroundTruth = dict[tuple[str, str, str], str]


def load_ground_truth(mme_root: str | Path) -> GroundTruth:
    """(subtask, txt file name, question) -> "Yes"/"No" from the MME release folder."""
    gt: GroundTruth = {}
    root = Path(mme_root)
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        qa_dir = sub / "questions_answers_YN" if (sub / "images").is_dir() else sub
        if not qa_dir.is_dir():
            raise FileNotFoundError(f"mme: {sub} has images/ but no questions_answers_YN/")
        for txt in sorted(qa_dir.glob("*.txt")):
            for line_no, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.strip().split("\t")
                if len(parts) != 2:
                    raise ValueError(f"mme: {txt}:{line_no} is not 'question<TAB>answer'")
                gt[(sub.name, txt.name, parts[0])] = parts[1]
    return gt


def one_line(text: str) -> str:
    """The prediction as the converter's tab-separated line can hold it (tabs/newlines -> spaces)."""
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def lookup_question(prompt: str, subtask: str, file: str, gt: GroundTruth) -> str:
    """The ground-truth question matching an answer's prompt (LLaVA's fallbacks, in order)."""
    if SHORT_ANSWER_SUFFIX in prompt:
        prompt = prompt.replace(SHORT_ANSWER_SUFFIX, "").strip()
    if YES_NO_SUFFIX not in prompt:
        prompt = prompt + " " + YES_NO_SUFFIX
        if (subtask, file, prompt) not in gt:
            prompt = prompt.replace(" " + YES_NO_SUFFIX, "  " + YES_NO_SUFFIX)
    if (subtask, file, prompt) not in gt:
        prompt = prompt.replace(" " + YES_NO_SUFFIX, "  " + YES_NO_SUFFIX)
    if (subtask, file, prompt) not in gt:
        raise KeyError(f"mme: no ground truth for {subtask}/{file} question {prompt!r}")
    return prompt


def parse_label(pred: str) -> str:
    """MME's yes/no/other rule on the raw prediction text (lower-cased here, never stripped).

    The original sees the text followed by the line's newline; that changes nothing: the newline
    can neither make the text equal ``yes``/``no`` nor add ``yes``/``no`` to its first four characters.
    """
    pred = pred.lower()
    if pred in ("yes", "no"):
        return pred
    head = pred[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def split_question_id(question_id: str) -> tuple[str, str]:
    subtask = question_id.split("/")[0]
    stem = question_id.split("/")[-1].split(".")[0]
    return subtask, stem + ".txt"


def score_records(answers: list[dict[str, Any]], gt: GroundTruth) -> dict[str, Any]:
    # subtask -> image file -> question -> correct; a later answer to the same question replaces it
    results: dict[str, dict[str, dict[str, bool]]] = defaultdict(lambda: defaultdict(dict))
    labels: dict[tuple[str, str, str], str] = {}
    answered = []
    for row in iter_answers(answers, NAME):
        subtask, file = split_question_id(str(row["question_id"]))
        question = lookup_question(row.get("prompt", ""), subtask, file, gt)
        label = parse_label(one_line(row["text"]))
        labels[(subtask, file, question)] = label
        results[subtask][file][question] = label == gt[(subtask, file, question)].lower()
        answered.append((subtask, file, question))

    subtasks: dict[str, dict[str, Any]] = {}
    for subtask in PERCEPTION + COGNITION:
        images = results.get(subtask, {})
        flags = [f for per_image in images.values() for f in per_image.values()]
        pairs = [list(per_image.values()) for per_image in images.values() if len(per_image) == 2]
        if any(len(v) > 2 for v in images.values()):
            raise ValueError(f"mme: {subtask} has an image with more than two questions")
        acc = sum(flags) / len(flags) if flags else 0.0
        acc_plus = sum(all(p) for p in pairs) / len(pairs) if pairs else 0.0
        subtasks[subtask] = {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "score": 100 * (acc + acc_plus),
                             "n": len(flags),
                             "other": sum(l == "other" for (t, _, _), l in labels.items() if t == subtask)}
    perception = sum(subtasks[t]["score"] for t in PERCEPTION)
    cognition = sum(subtasks[t]["score"] for t in COGNITION)
    cov = coverage(dict.fromkeys(gt, 1), answered)
    in_gt = {t for t, _, _ in gt}
    missing_subtasks = [t for t in PERCEPTION + COGNITION if t not in in_gt or not results.get(t)]
    cov["complete"] = cov["complete"] and not missing_subtasks
    return {"benchmark": NAME, "metric": "perception + cognition", "score": perception + cognition,
            "perception": perception, "cognition": cognition, "n": sum(s["n"] for s in subtasks.values()),
            **cov, "missing_subtasks": missing_subtasks, "subtasks": subtasks}


def score_files(answers_path: str, files: BenchmarkFiles) -> dict[str, Any]:
    gt = load_ground_truth(files.need("mme_root", NAME))
    return score_records(read_jsonl(answers_path), gt)
