"""Golden cases for the EvalAI / official-VQA answer processors (worked by hand in comments)."""

import pytest

from crop.eval.scorers.common import soft_accuracy
from crop.eval.scorers.normalize import EVALAI_CONTRACTIONS, evalai_normalize

EVALAI_CASES = [
    # (raw answer, expected)                      # rule exercised
    ("Yes", "yes"),                               # lower-cased first
    ("The cat.", "cat"),                          # period not before a digit removed; article dropped
    ("3.5", "3.5"),                               # period before a digit kept
    ("two dogs", "2 dogs"),                       # number words up to ten -> digits
    ("none", "0"),                                # 'none' is in the number map
    ("It is the one", "it is 1"),                 # article dropped, 'one' -> 1
    ("dont", "don't"),                            # contraction table
    ("couldnt've", "couldn't've"),                # one apostrophe missing -> full form
    ("couldntve", "couldntve"),                   # both missing: not a key, unchanged
    ("somebody'd", "somebodyd"),                  # the table's one reversed entry
    ("Hello, world?", "hello world"),             # ',' and '?' deleted by word_tokenize
    ("1,000", "1000"),                            # comma deleted before the digit-comma rule can fire
    ("ice-cream", "ice cream"),                   # '-' touching no space -> replaced by a space
    # "a-b (c)": '-' touches no space -> ' '; '(' has ' (' in the text -> deleted; ')' touches no
    # space -> ' '; words [a, b, c] -> article 'a' dropped -> "b c"
    ("a-b (c)", "b c"),
    ("Man's hat", "man 's hat"),                  # "'s" split off, apostrophe is not a mark
    ("red\nand\tblue", "red and blue"),           # newline / tab -> space
    ("Ten!", "10"),                               # '!' -> ' ', then 'ten' -> 10
    # 40 periods each followed by 'x' or the end: only the first 32 are removed (count=re.UNICODE)
    ("x." * 40, "x" * 33 + "." + "x." * 7),
]


@pytest.mark.parametrize("raw, expected", EVALAI_CASES)
def test_evalai_normalize(raw, expected):
    assert evalai_normalize(raw) == expected


def test_contraction_table_size_and_identity_entries():
    # 95 full forms give 117 "one apostrophe dropped" keys, plus 3 odd entries: the published
    # dict has 120 entries.
    assert len(EVALAI_CONTRACTIONS) == 120
    assert EVALAI_CONTRACTIONS["let's"] == "let's" and EVALAI_CONTRACTIONS["she's"] == "she's"
    assert EVALAI_CONTRACTIONS["'ows'at"] == "'ow's'at" and EVALAI_CONTRACTIONS["ow's'at"] == "'ow's'at"


SOFT_CASES = [
    # refs (counts), pred, expected: mean over the 10 refs of min(1, matches among the other 9 / 3)
    (["yes"] * 10, "yes", 1.0),                   # 9 matches each -> 1
    (["red"] * 3 + ["blue"] * 7, "red", 0.9),     # red refs: 2/3 (x3), blue refs: 3/3 (x7) -> 9/10
    (["red"] * 2 + ["blue"] * 8, "red", 0.6),     # red: 1/3 (x2), blue: 2/3 (x8) -> 6/10
    (["red"] * 1 + ["blue"] * 9, "red", 0.3),     # red: 0 (x1), blue: 1/3 (x9) -> 3/10
    (["red"] * 4 + ["blue"] * 6, "red", 1.0),     # red: 3/3, blue: 4/3 -> capped 1
    (["blue"] * 10, "red", 0.0),
]


@pytest.mark.parametrize("refs, pred, expected", SOFT_CASES)
def test_soft_accuracy(refs, pred, expected):
    assert soft_accuracy(pred, refs) == pytest.approx(expected)


def test_soft_accuracy_needs_references():
    with pytest.raises(ValueError, match="at least one reference"):
        soft_accuracy("x", [])
