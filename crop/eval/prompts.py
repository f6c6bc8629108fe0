"""Question files -> evaluation items, and the prompts LLaVA-1.5's evaluation gives the model.

LLaVA-1.5 evaluates with greedy decoding and these user messages:

* short-answer benchmarks (GQA, MME, TextVQA, VQAv2, POPE): the question file's ``text`` as is;
  LLaVA's files already end with ``"\\nAnswer the question using a single word or phrase."``,
  and TextVQA's carry ``"\\nReference OCR token: ..."`` between question and suffix;
* ScienceQA (``llava_test_CQM-A.json``): the first human turn without ``<image>``, stripped, plus
  ``"\\nAnswer with the option's letter from the given choices directly."``; the answer file's
  ``prompt`` starts with ``"<image>\\n"`` for problems with an image (the scorer's IMG rule).

The conversation template is ``vicuna_v1``: ``"<system> USER: <image>\\n<message> ASSISTANT:"``
(:mod:`crop.models.llava_conversation`, shared with ``crop train-plc``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crop.eval.keys import question_keys
from crop.models.llava_conversation import IMAGE_PLACEHOLDER, VICUNA_V1_SYSTEM, generation_prompt  # noqa: F401 (VICUNA_V1_SYSTEM re-exported)

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
OPTION_LETTER_SUFFIX = "Answer with the option's letter from the given choices directly."
OCR_PREFIX = "Reference OCR token: "


@dataclass(frozen=True)
class EvalItem:
    """One question to answer.

    key:     stable id for resuming and for region files: ``str(question_id)``, or
             ``"<question_id>#<n>"`` for the n-th repeat of an id (LLaVA's TextVQA file uses the
             image id as question id).
    message: the user message without the image placeholder.
    prompt:  what the answer file records as ``prompt`` (LLaVA's ``cur_prompt``).
    question: the bare question (first line of the message), for a localizer.
    """

    key: str
    question_id: Any
    image: str | None
    message: str
    prompt: str
    question: str
    category: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def short_answer_text(question: str) -> str:
    """LLaVA-style question text for a short-answer benchmark."""
    return f"{question}\n{SHORT_ANSWER_SUFFIX}"


def textvqa_text(question: str, ocr_tokens: list[str]) -> str:
    """LLaVA's TextVQA question text: question, the OCR reference line (when any), suffix."""
    ocr = f"\n{OCR_PREFIX}{', '.join(ocr_tokens)}" if ocr_tokens else ""
    return f"{question}{ocr}\n{SHORT_ANSWER_SUFFIX}"


def _with_keys(rows: list[dict[str, Any]]) -> list[str]:
    return question_keys(row["question_id"] for row in rows)  # the one key rule: crop.eval.keys


def load_jsonl_questions(path: str | Path) -> list[EvalItem]:
    """LLaVA's ``llava_*.jsonl`` question files (``question_id``, ``image``, ``text``, ``category``)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in ("question_id", "image", "text") if k not in row]
            if missing:
                raise ValueError(f"{path}:{line_no}: question row lacks {missing}")
            rows.append(row)
    return [EvalItem(key=key, question_id=row["question_id"], image=row["image"], message=row["text"],
                     prompt=row["text"], question=row["text"].split("\n")[0], category=row.get("category"))
            for key, row in zip(_with_keys(rows), rows)]


def load_scienceqa_questions(path: str | Path) -> list[EvalItem]:
    """LLaVA's ``llava_test_CQM-A.json`` (a JSON list of conversations, ``image`` optional)."""
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    items = []
    sqa_keys = question_keys(row.get("id") for row in rows)  # the one key rule: crop.eval.keys
    for i, row in enumerate(rows):
        try:
            human = row["conversations"][0]["value"]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{path}: record {i} has no first conversation turn") from err
        qs = human.replace(IMAGE_PLACEHOLDER, "").strip()
        message = f"{qs}\n{OPTION_LETTER_SUFFIX}"
        image = row.get("image")
        prompt = f"{IMAGE_PLACEHOLDER}\n{message}" if image else message
        lines = qs.split("\n")
        question = next((l[len("Question: "):] for l in lines if l.startswith("Question: ")), lines[0])
        items.append(EvalItem(key=sqa_keys[i], question_id=row["id"], image=image, message=message,
                              prompt=prompt, question=question))
    return items


def load_questions(benchmark: str, path: str | Path) -> list[EvalItem]:
    if benchmark == "scienceqa":
        return load_scienceqa_questions(path)
    return load_jsonl_questions(path)


def vicuna_v1_prompt(message: str, has_image: bool, image_placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """``conv_templates['vicuna_v1']`` with one user turn and an open assistant turn (built by
    :mod:`crop.models.llava_conversation`, which ``crop train-plc`` renders its samples with)."""
    return generation_prompt(message, has_image, image_placeholder)


def chat_template_prompt(processor: Any, message: str, has_image: bool) -> str:
    """The processor's own chat template (Qwen2-VL, LLaVA-NeXT variants without vicuna)."""
    content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": message}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
