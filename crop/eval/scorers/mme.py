"""MME: LLaVA-1.5's ``convert_answer_to_mme.py`` followed by MME's ``eval_tool/calculation.py``.

Conversion (LLaVA):

* ``question_id`` is ``<subtask>/<...>/<image>``: subtask = first path part, ground-truth file =
  image stem + ``.txt``;
* prediction: ``text.strip().lower()``; starts with ``yes`` -> ``Yes``, starts with ``no`` -> ``No``
  (so ``not``, ``none``, ``nothing`` are ``No``), otherwise kept as lower-cased text;
* the question to look up is the prompt without ``Answer the question using a single word or
  phrase.`` (stripped), plus `` Please answer yes or no.`` when absent; if that key is not in the
  ground truth, the same with two spaces before ``Please`` (some MME files have them).

Ground truth: each subtask folder of ``MME_Benchmark_release_version`` holds ``<stem>.txt`` files
with ``question<TAB>answer`` lines, either beside the images or under
``questions_answers_YN/`` (when an ``images/`` folder exists).

Calculation (MME): prediction lower-cased; ``yes``/``no`` as is, else ``yes`` if its first four
characters contain ``yes``, else ``no`` if they contain ``no``, else ``other`` (always wrong).
Per subtask: acc = correct questions / questions, acc+ = images with both questions right /
images, subtask score = (acc + acc+) x 100. Perception = sum of 10 subtasks (max 2000),
cognition = sum of 4 (max 800); the paper reports perception + cognition (max 2800).

Deviation, documented: tabs/newlines inside a prediction are turned into spaces (the original
writes them into a tab-separated text file, which breaks its own parser). Images are paired by
their ground-truth file rather than by line order (identical for answer files in question-file
order). With ``strict=False`` an image with one answer counts in acc but not in acc+, and missing
subtasks score 0; ``complete`` says whether every subtask had all its questions answered.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from crop.eval.scorers.common import BenchmarkFiles, iter_answers, read_jsonl

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


def convert_prediction(text: str) -> str:
    pred = text.strip().lower()
    if pred.startswith("yes"):
        return "Yes"
    if pred.startswith("no"):
        return "No"
    return pred


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
    """MME's yes/no/other rule on a (converted) prediction."""
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
    # subtask -> image file -> list of correct flags
    results: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    other: dict[str, int] = defaultdict(int)
    for row in iter_answers(answers, NAME):
        subtask, file = split_question_id(str(row["question_id"]))
        question = lookup_question(row.get("prompt", ""), subtask, file, gt)
        pred = convert_prediction(" ".join(row["text"].replace("\t", " ").split("\n")))
        label = parse_label(pred)
        other[subtask] += label == "other"
        results[subtask][file].append(label == gt[(subtask, file, question)].lower())

    expected: dict[str, int] = defaultdict(int)
    for subtask, _, _ in gt:
        expected[subtask] += 1
    subtasks: dict[str, dict[str, Any]] = {}
    complete = True
    for subtask in PERCEPTION + COGNITION:
        images = results.get(subtask, {})
        flags = [f for per_image in images.values() for f in per_image]
        pairs = [per_image for per_image in images.values() if len(per_image) == 2]
        if any(len(v) > 2 for v in images.values()):
            raise ValueError(f"mme: {subtask} has an image with more than two answers")
        acc = sum(flags) / len(flags) if flags else 0.0
        acc_plus = sum(all(p) for p in pairs) / len(pairs) if pairs else 0.0
        complete &= len(flags) == expected.get(subtask, 0) and len(flags) > 0
        subtasks[subtask] = {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "score": 100 * (acc + acc_plus),
                             "n": len(flags), "other": other.get(subtask, 0)}
    perception = sum(subtasks[t]["score"] for t in PERCEPTION)
    cognition = sum(subtasks[t]["score"] for t in COGNITION)
    return {"benchmark": NAME, "metric": "perception + cognition", "score": perception + cognition,
            "perception": perception, "cognition": cognition, "n": sum(s["n"] for s in subtasks.values()),
            "complete": complete, "subtasks": subtasks}


def score_files(answers_path: str, files: BenchmarkFiles) -> dict[str, Any]:
    gt = load_ground_truth(files.need("mme_root", NAME))
    return score_records(read_jsonl(answers_path), gt)
