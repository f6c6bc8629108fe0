"""Golden cases for MME, POPE and ScienceQA-IMG scoring (expected values worked by hand)."""

import json

import pytest

from crop.eval.scorers import BenchmarkFiles, score_answer_file
from crop.eval.scorers import mme, pope, scienceqa

SUFFIX = "Answer the question using a single word or phrase."


# ---------------------------------------------------------------- MME
# MME's calculation.py lower-cases the prediction field of LLaVA's converted file -- the raw answer
# text, which convert_answer_to_mme.py writes without stripping -- and labels it: exactly
# "yes"/"no", else "yes" if "yes" occurs in its first four characters, else "no" if "no" does,
# else "other". Leading spaces are never removed, so they push "yes" out of the window.
@pytest.mark.parametrize("text, label", [
    ("Yes", "yes"), ("No", "no"), ("No.", "no"), ("Yes, there is.", "yes"),
    ("  yes", "other"),         # first four chars "  ye": no strip in the official pipeline
    (" yes", "yes"), ("  no", "no"), ("   no", "other"),
    ("I think yes", "other"),   # first four chars "i th"
    ("ayes", "yes"),            # "yes" inside the first four chars
    ("x no", "no"), ("not sure", "no"), ("Nope", "no"), ("know", "no"),
    ("maybe", "other"), ("", "other"),
])
def test_mme_label_official(text, label):
    # through the whole scorer: one answer to a question whose ground truth is "Yes"
    gt = {("existence", "1.txt", "Q? Please answer yes or no."): "Yes"}
    r = mme.score_records([{"question_id": "existence/1.jpg", "prompt": f"Q?\n{SUFFIX}", "text": text}], gt)
    sub = r["subtasks"]["existence"]
    assert ("other" if sub["other"] else "yes" if sub["acc"] == 100 else "no") == label
    assert mme.parse_label(mme.one_line(text)) == label


def _write_mme(root):
    # "existence": images and txts side by side; "code_reasoning": images/ + questions_answers_YN/
    (root / "existence").mkdir(parents=True)
    (root / "existence" / "1.txt").write_text("Is there a dog? Please answer yes or no.\tYes\n"
                                              "Is there a cat? Please answer yes or no.\tNo\n")
    (root / "existence" / "2.txt").write_text("Is there a car? Please answer yes or no.\tYes\n"
                                              "Is there a bus?  Please answer yes or no.\tNo\n")
    (root / "code_reasoning" / "images").mkdir(parents=True)
    (root / "code_reasoning" / "questions_answers_YN").mkdir()
    (root / "code_reasoning" / "questions_answers_YN" / "7.txt").write_text(
        "Does it print 3? Please answer yes or no.\tYes\nDoes it print 4? Please answer yes or no.\tNo\n")


def test_mme_score(tmp_path):
    _write_mme(tmp_path)
    gt = mme.load_ground_truth(tmp_path)
    assert gt[("code_reasoning", "7.txt", "Does it print 3? Please answer yes or no.")] == "Yes"
    answers = [
        {"question_id": "existence/1.jpg", "prompt": f"Is there a dog?\n{SUFFIX}", "text": "Yes"},   # right
        {"question_id": "existence/1.jpg", "prompt": f"Is there a cat?\n{SUFFIX}", "text": "No."},   # right
        {"question_id": "existence/2.jpg", "prompt": f"Is there a car?\n{SUFFIX}", "text": "yes"},   # right
        # GT has two spaces before "Please": found through the fallback; "Maybe" -> other -> wrong
        {"question_id": "existence/2.jpg", "prompt": f"Is there a bus?\n{SUFFIX}", "text": "Maybe"},
        {"question_id": "code_reasoning/images/7.png", "prompt": f"Does it print 3?\n{SUFFIX}", "text": "Yes"},
        {"question_id": "code_reasoning/images/7.png", "prompt": f"Does it print 4?\n{SUFFIX}", "text": "No"},
    ]
    r = mme.score_records(answers, gt)
    # existence: acc 3/4 = 75, acc+ 1/2 = 50 -> 125; code_reasoning: 100 + 100 = 200
    assert r["subtasks"]["existence"]["score"] == pytest.approx(125)
    assert r["subtasks"]["existence"]["other"] == 1
    assert r["perception"] == pytest.approx(125) and r["cognition"] == pytest.approx(200)
    assert r["score"] == pytest.approx(325)
    # every question of this ground truth is answered once, but 12 of the 14 subtasks do not exist:
    # calculation.py would fail opening their result files, so the score is not a complete MME
    assert (r["n_questions"], r["n_answered"], r["missing"], r["duplicates"]) == (6, 6, 0, 0)
    assert not r["complete"] and "count" in r["missing_subtasks"] and "existence" not in r["missing_subtasks"]


def _mme_full_gt():
    """One image with two questions in each of the 14 subtasks (answers Yes, No)."""
    return {(t, "1.txt", q): a for t in mme.PERCEPTION + mme.COGNITION
            for q, a in (("A? Please answer yes or no.", "Yes"), ("B? Please answer yes or no.", "No"))}


def _mme_answers(texts):
    """Answers in question-file order for _mme_full_gt; texts = {(subtask, 'A'|'B'): text}."""
    return [{"question_id": f"{t}/1.jpg", "prompt": f"{q}?\n{SUFFIX}", "text": texts.get((t, q), "Yes" if q == "A" else "No")}
            for t in mme.PERCEPTION + mme.COGNITION for q in "AB"]


def test_mme_leading_spaces_are_not_stripped():
    # LLaVA's converter writes the raw text; calculation.py labels "  yes" as "other" (wrong), so
    # existence scores acc 1/2 + acc+ 0/1 = 50 and the total drops from 2800 to 2650
    r = mme.score_records(_mme_answers({("existence", "A"): "  yes"}), _mme_full_gt())
    assert r["subtasks"]["existence"]["other"] == 1
    assert r["subtasks"]["existence"]["score"] == pytest.approx(50)
    assert r["score"] == pytest.approx(2650) and r["complete"]


def test_mme_missing_and_duplicate_answers_are_reported():
    answers = _mme_answers({})
    full = mme.score_records(answers, _mme_full_gt())
    assert full["score"] == pytest.approx(2800) and full["complete"] and full["missing_subtasks"] == []
    # one answer dropped, another answered twice: the same number of rows as a full file. The
    # original (lines chunked in pairs) would pair the wrong questions; here the count of distinct
    # questions says what happened and the file is not complete
    dup = answers[2]
    partial = answers[1:] + [{**dup, "text": "No"}]   # existence/A dropped; count/A twice, the last "No" wins
    r = mme.score_records(partial, _mme_full_gt())
    assert len(partial) == len(answers)
    assert (r["n_questions"], r["n_answered"], r["missing"], r["duplicates"]) == (28, 27, 1, 1)
    assert not r["complete"]
    # existence/A unanswered: acc 1/1, no image with both answers -> 100;
    # count/A's last answer "No" is wrong: acc 1/2, acc+ 0 -> 50
    assert r["subtasks"]["existence"]["score"] == pytest.approx(100)
    assert r["subtasks"]["count"]["score"] == pytest.approx(50)
    # a whole subtask missing: it scores 0 and the result is incomplete
    no_ocr = [a for a in answers if not a["question_id"].startswith("OCR/")]
    r = mme.score_records(no_ocr, _mme_full_gt())
    assert r["score"] == pytest.approx(2600) and r["missing_subtasks"] == ["OCR"] and not r["complete"]


def test_mme_reordered_answers_score_as_in_question_order():
    # calculation.py pairs consecutive lines as one image; LLaVA writes answers in question-file
    # order, where an image's two questions are adjacent. Interleaving two images' answers would
    # make the original pair questions of different images; here images are paired by question,
    # so the score equals the one of the question-ordered file (a documented difference)
    gt = {("existence", f, q): a for f in ("1.txt", "2.txt")
          for q, a in (("A? Please answer yes or no.", "Yes"), ("B? Please answer yes or no.", "No"))}
    ordered = [{"question_id": f"existence/{f}.jpg", "prompt": f"{q}?\n{SUFFIX}", "text": t}
               for f, q, t in (("1", "A", "Yes"), ("1", "B", "Yes"), ("2", "A", "Yes"), ("2", "B", "No"))]
    interleaved = [ordered[0], ordered[2], ordered[1], ordered[3]]
    a, b = mme.score_records(ordered, gt), mme.score_records(interleaved, gt)
    # acc 3/4, acc+ 1/2 (image 2 only) -> 125
    assert a["subtasks"]["existence"]["score"] == pytest.approx(125) == b["subtasks"]["existence"]["score"]


def test_mme_unknown_question(tmp_path):
    _write_mme(tmp_path)
    gt = mme.load_ground_truth(tmp_path)
    with pytest.raises(KeyError, match="no ground truth"):
        mme.score_records([{"question_id": "existence/1.jpg", "prompt": "Is there a fox?", "text": "no"}], gt)


# ---------------------------------------------------------------- POPE
@pytest.mark.parametrize("text, label", [
    ("Yes", "yes"), ("No", "no"), ("No.", "no"),
    ("no, there is not", "no"),      # commas deleted, words: no there is not
    ("There is no dog.", "no"),
    ("NO", "yes"), ("Not", "yes"),   # only 'No', 'no', 'not' count
    ("Yes. No.", "yes"),             # only the text before the first period
    ("", "yes"),
    ("no\n", "yes"),                 # split on single spaces: the word is "no\n"
])
def test_pope_answer_to_label(text, label):
    assert pope.answer_to_label(text) == label


def test_pope_split_metrics():
    # TP: 0, 4; FP: 1; TN: 2; FN: 3 -> acc 3/5, precision 2/3, recall 2/3, f1 2/3, yes 3/5
    m = pope.split_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(60) and m["precision"] == pytest.approx(200 / 3)
    assert m["recall"] == pytest.approx(200 / 3) and m["f1"] == pytest.approx(200 / 3)
    assert m["yes_ratio"] == pytest.approx(60)


def _pope_files(tmp_path):
    ann = tmp_path / "coco"
    ann.mkdir()
    labels = {"adversarial": ["yes", "no"], "random": ["no", "yes"]}
    questions = []
    qid = 0
    for split, labs in labels.items():
        rows = []
        for i, lab in enumerate(labs):
            qid += 1
            rows.append({"question_id": i + 1, "image": f"{split}{i}.jpg", "text": "Is there a x?", "label": lab})
            questions.append({"question_id": qid, "image": f"{split}{i}.jpg", "text": f"Is there a x?\n{SUFFIX}",
                              "category": split})
        (ann / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    qf = tmp_path / "llava_pope_test.jsonl"
    qf.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return BenchmarkFiles(question_file=str(qf), annotation_dir=str(ann))


def test_pope_score_files_out_of_order(tmp_path):
    files = _pope_files(tmp_path)
    # question ids 1,2 adversarial (labels yes, no), 3,4 random (labels no, yes); answers shuffled
    answers = [{"question_id": 4, "text": "Yes"}, {"question_id": 1, "text": "Yes"},
               {"question_id": 3, "text": "Yes"}, {"question_id": 2, "text": "No"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    r = score_answer_file("pope", str(tmp_path / "a.jsonl"), files)
    # adversarial: both right -> acc 100, f1 100; random: preds yes,yes vs labels no,yes
    # -> TP 1 FP 1 -> acc 50, precision 1/2, recall 1, f1 2/3
    assert r["splits"]["adversarial"]["accuracy"] == 100 and r["splits"]["random"]["accuracy"] == 50
    assert r["splits"]["random"]["f1"] == pytest.approx(200 / 3)
    assert r["score"] == pytest.approx((100 + 200 / 3) / 2) and r["mean_accuracy"] == pytest.approx(75)
    assert r["complete"]
    r_acc = score_answer_file("pope", str(tmp_path / "a.jsonl"), files, headline_metric="accuracy")
    assert r_acc["score"] == pytest.approx(75)


def test_pope_misaligned_files(tmp_path):
    files = _pope_files(tmp_path)
    rows = [json.loads(l) for l in open(files.question_file)]
    rows[0]["image"] = "other.jpg"
    with pytest.raises(ValueError, match="not aligned"):
        pope.score_records([{"question_id": 1, "text": "yes"}], rows, pope.load_labels(files.annotation_dir))


# ---------------------------------------------------------------- ScienceQA-IMG
@pytest.mark.parametrize("text, letter", [
    ("A", "A"), ("B. tiger", "B"), ("The answer is C.", "C"),
    ("The answer is C, or The answer is D.", "FAILED"),   # two matches
    ("The answer is Cx", "C"),                           # '.' is a wildcard in the pattern
    ("b", "FAILED"), ("C.", "FAILED"),                    # lower case; "C." is shorter than 3
    ("AB", "FAILED"), ("FAILED", "FAILED"),
])
def test_scienceqa_parse_letter(text, letter):
    assert scienceqa.parse_letter(text) == letter


def test_scienceqa_choice_index():
    assert scienceqa.choice_index("B", 3) == 1
    assert scienceqa.choice_index("E", 3) == -1        # letter beyond the choices
    assert scienceqa.choice_index("FAILED", 5) == -1


def test_scienceqa_score_files(tmp_path):
    problems = {"p1": {"choices": ["x", "y"], "answer": 0, "image": "image.png"},
                "p2": {"choices": ["x", "y"], "answer": 1, "image": "image.png"},
                "p3": {"choices": ["x", "y"], "answer": 0, "image": None},
                "p4": {"choices": ["x", "y"], "answer": 0, "image": "image.png"},
                "p5": {"choices": ["x"], "answer": 0, "image": None}}   # not in the split
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["p1", "p2", "p3", "p4"]}))
    answers = [{"question_id": "p1", "prompt": "<image>\nQ", "text": "A"},   # right, image
               {"question_id": "p2", "prompt": "<image>\nQ", "text": "A"},   # wrong, image
               {"question_id": "p3", "prompt": "Q", "text": "B"}]           # wrong, text-only
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    r = score_answer_file("scienceqa", str(tmp_path / "a.jsonl"), BenchmarkFiles(base_dir=str(tmp_path)))
    # all: 1 of 4 right (p4 unanswered -> FAILED); IMG: p1, p2 only (p4's prompt is 'Unknown') -> 1/2
    assert r["accuracy"] == 25 and r["img_accuracy"] == 50 and r["score"] == 50
    assert r["missing"] == 1 and not r["complete"]
