"""Golden cases for MME, POPE and ScienceQA-IMG scoring (expected values worked by hand)."""

import json

import pytest

from crop.eval.scorers import BenchmarkFiles, score_answer_file
from crop.eval.scorers import mme, pope, scienceqa

SUFFIX = "Answer the question using a single word or phrase."


# ---------------------------------------------------------------- MME
@pytest.mark.parametrize("text, converted", [
    ("Yes, there is.", "Yes"), ("No", "No"), ("not sure", "No"), ("Nope", "No"),
    ("  yes", "Yes"), ("I think yes", "i think yes"),
])
def test_mme_convert_prediction(text, converted):
    assert mme.convert_prediction(text) == converted


@pytest.mark.parametrize("pred, label", [
    ("Yes", "yes"), ("No", "no"),
    ("i think yes", "other"),   # first four chars "i th"
    ("ayes", "yes"),            # "yes" inside the first four chars
    ("x no", "no"),             # "no" inside "x no"
    ("maybe", "other"),
])
def test_mme_parse_label(pred, label):
    assert mme.parse_label(pred) == label


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
    assert not r["complete"]   # 12 of the 14 subtasks have no answers


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
