"""Missing, duplicated and reordered answers: each scorer follows its official script, and every
scorer reports the same coverage fields, counted on distinct questions of the reference file."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crop.eval.scorers import BenchmarkFiles, score_answer_file
from crop.eval.scorers import gqa, pope, scienceqa, textvqa, vqav2
from crop.eval.scorers.common import COVERAGE_FIELDS, coverage

SUFFIX = "Answer the question using a single word or phrase."


def _cov(r):
    return tuple(r[f] for f in COVERAGE_FIELDS)


def test_coverage_counts_distinct_questions():
    # one missing + one duplicated answer: as many rows as questions, yet not complete
    assert coverage({"a": 1, "b": 1}, ["a", "a"]) == {
        "n_questions": 2, "n_answered": 1, "missing": 1, "duplicates": 1, "complete": False}
    # a question the reference itself holds twice (two identical TextVQA rows) needs two answers
    assert coverage({"a": 2}, ["a", "a"])["complete"] and coverage({"a": 2}, ["a"])["missing"] == 1
    assert not coverage({}, [])["complete"]


# ---------------------------------------------------------------- VQAv2
ANNOTATIONS = [{"question_id": 1, "answer_type": "yes/no", "answers": [{"answer": "yes"}] * 10},
               {"question_id": 2, "answer_type": "number", "answers": [{"answer": "2"}] * 10},
               {"question_id": 3, "answer_type": "other", "answers": [{"answer": "red"}] * 10}]


def test_vqav2_missing_answers_count_as_zero():
    # LLaVA's convert_vqav2_for_submission.py writes "" for every question of the split without an
    # answer and the VQA evaluator scores "" as 0: question 3 stays in the denominator
    r = vqav2.score_records([{"question_id": 1, "text": "Yes"}, {"question_id": 2, "text": "2"}], ANNOTATIONS)
    assert r["score"] == pytest.approx(200 / 3) and r["n"] == 3
    assert _cov(r) == (3, 2, 1, 0, False)


def test_vqav2_duplicate_question_keeps_last_answer():
    # the converter reads answers into a dict keyed by question_id: the last answer of an id wins
    answers = [{"question_id": 1, "text": "no"}, {"question_id": 2, "text": "2"}, {"question_id": 3, "text": "red"},
               {"question_id": 1, "text": "yes"}]
    r = vqav2.score_records(answers, ANNOTATIONS)
    assert r["score"] == pytest.approx(100) and _cov(r) == (3, 3, 0, 1, False)
    assert vqav2.submission(answers, [{"question_id": 1}])[0]["answer"] == "yes"
    # reordered answers change nothing
    assert vqav2.score_records(answers[::-1][1:] + [answers[-1]], ANNOTATIONS)["score"] == pytest.approx(100)


def test_vqav2_question_file_sets_the_evaluated_questions(tmp_path):
    (tmp_path / "ann.json").write_text(json.dumps({"annotations": ANNOTATIONS}))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question_id": i, "image": "x.jpg", "text": "?"}) + "\n"
                                              for i in (1, 2)))
    (tmp_path / "a.jsonl").write_text(json.dumps({"question_id": "1", "text": "yes"}) + "\n")   # ids as strings
    files = BenchmarkFiles(annotation_file=str(tmp_path / "ann.json"), question_file=str(tmp_path / "q.jsonl"))
    r = score_answer_file("vqav2", str(tmp_path / "a.jsonl"), files)
    assert r["score"] == pytest.approx(50) and _cov(r) == (2, 1, 1, 0, False)
    with pytest.raises(KeyError, match="not among the 2 evaluated questions"):
        vqav2.score_records([{"question_id": 3, "text": "red"}], ANNOTATIONS, question_ids=[1, 2])


# ---------------------------------------------------------------- TextVQA
def _textvqa():
    data = [{"image_id": "img", "question": "What brand?", "answers": ["coke"] * 10},
            {"image_id": "img", "question": "What year?", "answers": ["1999"] * 10},
            {"image_id": "img2", "question": "What colour?", "answers": ["red"] * 10}]
    return textvqa.index_annotations(data), textvqa.annotation_counts(data)


def test_textvqa_missing_and_duplicate_rows_follow_eval_textvqa():
    # LLaVA's eval_textvqa.py averages over the answer rows: an unanswered question is not in the
    # denominator and a repeated row is scored again. Both are reported and make the file incomplete.
    index, counts = _textvqa()
    brand = {"question_id": "img", "prompt": f"What brand?\n{SUFFIX}", "text": "Coke"}
    year = {"question_id": "img", "prompt": f"What year?\n{SUFFIX}", "text": "2000"}
    r = textvqa.score_records([brand, year, {**year, "text": "1999"}], index, counts)
    assert r["score"] == pytest.approx(100 * 2 / 3) and r["n"] == 3
    assert _cov(r) == (3, 2, 1, 1, False)
    # repeated question ids (the image id) are told apart by the question, in any order
    colour = {"question_id": "img2", "prompt": f"What colour?\n{SUFFIX}", "text": "red"}
    r = textvqa.score_records([colour, {**year, "text": "1999"}, brand], index, counts)
    assert r["score"] == pytest.approx(100) and r["complete"]


# ---------------------------------------------------------------- GQA
def test_gqa_duplicates_keep_last_and_missing_are_reported():
    questions = {"1": {"answer": "yes", "isBalanced": True}, "2": {"answer": "table", "isBalanced": True},
                 "3": {"answer": "no", "isBalanced": False}}
    # GQA's eval.py builds a dict of predictions by questionId: the last prediction of an id wins;
    # predictions of unbalanced questions are not scored
    answers = [{"question_id": "1", "text": "no"}, {"question_id": "3", "text": "no"}, {"question_id": "1", "text": "Yes."}]
    r = gqa.score_records(answers, questions)
    assert r["score"] == 100.0 and _cov(r) == (2, 1, 1, 1, False)


# ---------------------------------------------------------------- POPE
def _pope(tmp_path):
    ann = tmp_path / "coco"
    ann.mkdir()
    (ann / "coco_pope_random.json").write_text("".join(
        json.dumps({"image": f"{i}.jpg", "label": lab}) + "\n" for i, lab in enumerate(["yes", "no", "yes"])))
    questions = [{"question_id": i + 1, "image": f"{i}.jpg", "text": "?", "category": "random"} for i in range(3)]
    return questions, pope.load_labels(ann)


def test_pope_missing_plus_duplicate_is_not_complete(tmp_path):
    questions, labels = _pope(tmp_path)
    # three rows for three questions, but question 3 is unanswered and question 1 answered twice:
    # counting rows called this complete. eval_pope.py zips answers and labels by position (the
    # duplicate would be paired with question 2's label); here the last answer of question 1
    # counts and question 3 is left out
    answers = [{"question_id": 1, "text": "No"}, {"question_id": 2, "text": "No"}, {"question_id": 1, "text": "Yes"}]
    r = pope.score_records(answers, questions, labels)
    assert _cov(r) == (3, 2, 1, 1, False)
    assert r["splits"]["random"]["n"] == 2 and r["splits"]["random"]["accuracy"] == 100.0
    full = pope.score_records(answers[1:] + [{"question_id": 3, "text": "Yes"}], questions, labels)
    assert _cov(full) == (3, 3, 0, 0, True)


# ---------------------------------------------------------------- ScienceQA
def test_scienceqa_duplicate_keeps_last_and_missing_raises_img_accuracy():
    problems = {"p1": {"choices": ["x", "y"], "answer": 0}, "p2": {"choices": ["x", "y"], "answer": 1}}
    # eval_science_qa.py: answers in a dict by question_id (last wins); a split problem without an
    # answer gets prompt "Unknown", which has no "<image>", so it leaves the IMG denominator
    answers = [{"question_id": "p1", "prompt": "<image>\nQ", "text": "B"},
               {"question_id": "p1", "prompt": "<image>\nQ", "text": "A"}]
    r = scienceqa.score_records(answers, problems, ["p1", "p2"])
    assert r["img_accuracy"] == 100.0 and r["accuracy"] == 50.0
    assert _cov(r) == (2, 1, 1, 1, False)


# ---------------------------------------------------------------- all six: the same fields
def test_every_scorer_reports_the_same_coverage_fields(tmp_path):
    from crop.eval.scorers import mme

    questions, labels = _pope(tmp_path)
    index, counts = _textvqa()
    gt = {("existence", "1.txt", "A? Please answer yes or no."): "Yes"}
    results = [
        gqa.score_records([], {"1": {"answer": "yes"}}),
        mme.score_records([], gt),
        textvqa.score_records([], index, counts),
        scienceqa.score_records([], {"p": {"choices": ["a"], "answer": 0}}, ["p"]),
        vqav2.score_records([], ANNOTATIONS),
        pope.score_records([], questions, labels),
    ]
    for r in results:
        assert set(COVERAGE_FIELDS) <= set(r), r["benchmark"]
        assert r["complete"] is False and r["n_answered"] == 0 and r["missing"] == r["n_questions"] > 0


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 3)), st.lists(st.sampled_from("abcdef"), max_size=12))
def test_coverage_counts_reconcile(expected, answered):
    answered = [a for a in answered if a in expected]   # callers reject or drop answers outside the reference
    cov = coverage(expected, answered)
    assert cov["n_answered"] + cov["missing"] == cov["n_questions"] == sum(expected.values())
    assert cov["n_answered"] + cov["duplicates"] == len(answered)      # every answer row is used or a duplicate
    assert cov["complete"] == (cov["n_questions"] > 0 and sorted(answered) == sorted(
        k for k, n in expected.items() for _ in range(n)))


@pytest.mark.parametrize("row", [{"question_id": 1}, {"question_id": 1, "text": None}, {"text": "yes"}, 7, ["yes"]])
def test_malformed_answer_rows_are_one_line_errors(row):
    with pytest.raises(ValueError, match="answer row 0 needs question_id and a text string"):
        vqav2.score_records([row], ANNOTATIONS)
