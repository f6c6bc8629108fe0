"""Golden cases for TextVQA, VQAv2 and GQA scoring (expected values worked by hand)."""

import json

import pytest

from crop.eval.scorers import BenchmarkFiles, score_answer_file
from crop.eval.scorers import gqa, textvqa, vqav2

SUFFIX = "Answer the question using a single word or phrase."


# ---------------------------------------------------------------- TextVQA
@pytest.mark.parametrize("prompt, question", [
    (f"What is it?\nReference OCR token: A, B\n{SUFFIX}", "what is it?"),      # 3 lines, OCR line 2
    (f"Reference OCR token: A\nWhat brand?\n{SUFFIX}", "what brand?"),          # 3 lines, OCR first
    (f"Which Year?\n{SUFFIX}", "which year?"),                                   # 2 lines
    ("OCR tokens: a, b. Question: Why Not? Short answer:", "why not?"),         # BLIP-style prompt
])
def test_textvqa_question_from_prompt(prompt, question):
    assert textvqa.question_from_prompt(prompt) == question


@pytest.mark.parametrize("prompt", ["one line only", f"a\nb\nc\n{SUFFIX}", f"q\nextra line\n{SUFFIX}"])
def test_textvqa_prompt_shapes_the_original_rejects(prompt):
    with pytest.raises(ValueError, match="cannot find the question"):
        textvqa.question_from_prompt(prompt)


def test_textvqa_score_records():
    annotations = textvqa.index_annotations([
        {"image_id": "img1", "question": "What brand?", "answers": ["Coca Cola"] * 3 + ["coke"] * 7},
        {"image_id": "img1", "question": "What colour?", "answers": ["Dog"] * 10},
    ])
    answers = [
        # "Coca-Cola." -> '-' becomes a space, the period is stripped -> "coca cola": 3 of 10 refs
        # -> (3 x 2/3 + 7 x 1) / 10 = 0.9
        {"question_id": "img1", "prompt": f"What brand?\nReference OCR token: COCA\n{SUFFIX}", "text": "Coca-Cola."},
        # unanimous "Dog" is normalized too in TextVQA -> "dog" == "dog" -> 1.0
        {"question_id": "img1", "prompt": f"What colour?\n{SUFFIX}", "text": "dog"},
    ]
    result = textvqa.score_records(answers, annotations)
    assert result["n"] == 2 and result["score"] == pytest.approx(100 * (0.9 + 1.0) / 2)


def test_textvqa_unknown_question_and_wrong_reference_count():
    ann = textvqa.index_annotations([{"image_id": "i", "question": "q?", "answers": ["a"] * 9}])
    with pytest.raises(KeyError, match="no annotation"):
        textvqa.score_records([{"question_id": "j", "prompt": f"q?\n{SUFFIX}", "text": "a"}], ann)
    with pytest.raises(ValueError, match="needs 10"):
        textvqa.score_records([{"question_id": "i", "prompt": f"q?\n{SUFFIX}", "text": "a"}], ann)


def test_textvqa_score_files(tmp_path):
    ann = {"data": [{"image_id": "i", "question": "Q?", "answers": ["yes"] * 10}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "a.jsonl").write_text(json.dumps({"question_id": "i", "prompt": f"Q?\n{SUFFIX}", "text": "Yes"}) + "\n")
    result = score_answer_file("textvqa", str(tmp_path / "a.jsonl"), BenchmarkFiles(annotation_file=str(tmp_path / "ann.json")))
    assert result["score"] == 100.0


# ---------------------------------------------------------------- VQAv2
@pytest.mark.parametrize("submitted, refs, expected", [
    ("yes", ["yes"] * 10, 1.0),
    # unanimous references are NOT normalized by vqaEval.py: "Dog" != "dog" -> 0
    ("dog", ["Dog"] * 10, 0.0),
    # references disagree -> both sides normalized: "Dog." -> "dog"; 4 of 10 -> all subsets >= 3 -> 1
    ("dog", ["Dog."] * 4 + ["cat"] * 6, 1.0),
    ("red", ["red"] * 3 + ["blue"] * 7, 0.9),
    ("2", ["two"] * 2 + ["2"] * 8, 1.0),   # disagree -> "two" -> "2": 10 matches
])
def test_vqav2_official_accuracy(submitted, refs, expected):
    assert vqav2.official_accuracy(submitted, refs) == pytest.approx(expected)


def test_vqav2_score_records_and_submission():
    annotations = [
        {"question_id": 1, "answer_type": "yes/no", "answers": [{"answer": "yes"}] * 10},
        {"question_id": 2, "answer_type": "number", "answers": [{"answer": "2"}] * 10},
    ]
    answers = [{"question_id": 1, "text": "Yes."},      # EvalAI-normalized -> "yes" -> 1.0
               {"question_id": 2, "text": "Three"}]     # -> "3" -> 0.0
    result = vqav2.score_records(answers, annotations)
    assert result["score"] == 50.0 and result["per_answer_type"] == {"number": 0.0, "yes/no": 100.0}
    split = [{"question_id": 1}, {"question_id": 2}, {"question_id": 3}]
    assert vqav2.submission(answers, split) == [
        {"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "3"}, {"question_id": 3, "answer": ""}]


# ---------------------------------------------------------------- GQA
@pytest.mark.parametrize("text, converted", [
    ("Yes.", "yes"),
    ("Table..", "table"),      # every trailing period
    (" yes", " yes"),          # no whitespace strip
    ("yes. ", "yes. "),        # period not trailing -> kept
    ("The table", "the table"),
])
def test_gqa_convert_prediction(text, converted):
    assert gqa.convert_prediction(text) == converted


def _gqa_questions():
    return {
        "1": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify", "semantic": "rel"}},
        "2": {"answer": "table", "isBalanced": True, "types": {"structural": "query", "semantic": "obj"}},
        "3": {"answer": "red", "isBalanced": True, "types": {"structural": "query", "semantic": "attr"}},
        "4": {"answer": "no", "isBalanced": False, "types": {"structural": "verify", "semantic": "rel"}},
    }


def test_gqa_score_records():
    answers = [{"question_id": "1", "text": "Yes."},         # correct (binary)
               {"question_id": "2", "text": "The table"},    # wrong: "the table" != "table" (open)
               {"question_id": 3, "text": "Red"}]            # correct (open); int id compared as string
    result = gqa.score_records(answers, _gqa_questions())
    # balanced: 1, 2, 3 -> 2 of 3 right; question 4 is unbalanced and ignored
    assert result["score"] == pytest.approx(200 / 3) and result["n"] == 3 and result["complete"]
    assert result["binary"] == 100.0 and result["open"] == 50.0
    assert result["per_semantic_type"] == {"attr": 100.0, "obj": 0.0, "rel": 100.0}


def test_gqa_missing_predictions():
    answers = [{"question_id": "1", "text": "yes"}]
    result = gqa.score_records(answers, _gqa_questions())
    assert result["missing"] == 2 and not result["complete"] and result["score"] == 100.0
    with pytest.raises(KeyError, match="no prediction for question 2"):
        gqa.score_records(answers, _gqa_questions(), strict=True)
    with pytest.raises(KeyError, match="not in the questions file"):
        gqa.score_records([{"question_id": "99", "text": "x"}], _gqa_questions())
