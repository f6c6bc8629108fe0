"""Answer normalization of the two VQA-family evaluators, quirks included.

Two processors exist in the public tooling and they differ in small ways that change scores:

* ``evalai_normalize`` -- the EvalAI answer processor that LLaVA-1.5 ships in
  ``llava/eval/m4c_evaluator.py`` (from MMF). TextVQA scoring runs it on the prediction and on
  all ten references; LLaVA's VQAv2 submission converter runs it on every prediction.
* ``vqa_process_punctuation`` / ``vqa_process_digit_article`` -- the official VQA evaluator
  (``vqaEval.py`` of the VQA API, the rule behind the EvalAI VQAv2 server). Same tables; it has no
  ``word_tokenize`` step (no lower-casing before punctuation, no ``'s`` split) and it normalizes
  references and prediction only when the ten references disagree (see ``vqav2.py``).

Quirks reproduced on purpose (each one has a golden test):

* the period rule ``(?!<=\\d)(\\.)(?!\\d)`` has a typo (``(?!<=`` instead of ``(?<!``), so it
  removes every period not followed by a digit, and ``re.UNICODE`` is passed where ``sub``
  expects ``count``: at most 32 periods are removed;
* a punctuation mark is deleted when it touches a space anywhere in the text (or when the text
  holds a digit-comma-digit group) and replaced by a space otherwise;
* EvalAI's ``word_tokenize`` deletes ``,`` and ``?`` and splits ``'s`` before anything else, so the
  comma rule of ``process_punctuation`` can never fire there;
* number words up to ten become digits (``none`` becomes ``0``), articles are dropped, then the
  contraction table maps spelled-out forms (``dont`` -> ``don't``).
"""

from __future__ import annotations

import re

# --- contraction tables ----------------------------------------------------------------------
# Full forms known to the evaluators. The EvalAI table maps every spelling with exactly one
# apostrophe missing to the full form ("couldnt've" and "couldn'tve" -> "couldn't've"; the
# spelling without any apostrophe is NOT a key for two-apostrophe forms).
_FULL_FORMS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've "
    "it'll ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't "
    "'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've somebody'll "
    "somebody's someone'd someone'd've someone'll someone's something'd something'd've "
    "something'll that's there'd there'd've there're there's they'd they'd've they'll they're "
    "they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd "
    "where's where've who'd who'd've who'll who's who've why'll why're why's won't would've "
    "wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()

# Entries that do not follow the "one apostrophe missing" rule (identity maps and one entry
# that goes the other way round).
_ODD_ENTRIES = {"let's": "let's", "she's": "she's", "somebody'd": "somebodyd"}


def _one_apostrophe_dropped(full: str) -> list[str]:
    positions = [i for i, ch in enumerate(full) if ch == "'"]
    return [full[:i] + full[i + 1:] for i in positions]


def _build_evalai_contractions() -> dict[str, str]:
    table: dict[str, str] = {}
    for full in _FULL_FORMS:
        for variant in _one_apostrophe_dropped(full):
            table[variant] = full
    table.update(_ODD_ENTRIES)
    return table


EVALAI_CONTRACTIONS: dict[str, str] = _build_evalai_contractions()

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# The published pattern, typo included: "(?!<=\d)" is a look-ahead for the literal "<=" and a
# digit, which can never match in front of a period, so only "(?!\d)" has an effect.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_MAX_PERIODS_STRIPPED = int(re.UNICODE)  # passed as `count` by the originals: 32

EVALAI_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                      ">", "<", "@", "`", ",", "?", "!")
_EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")

# The current official VQA evaluator (GT-Vision-Lab/VQA, "Fixed processing answers bug") uses the
# same marks and contraction table; only its digit-comma-digit test is written differently.
VQA_PUNCTUATION = EVALAI_PUNCTUATION
_VQA_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")


def _process_punctuation(text: str, marks: tuple[str, ...], comma_strip: re.Pattern) -> str:
    # The test looks at the ORIGINAL text for every mark, the replacement acts on the running one.
    has_digit_comma = comma_strip.search(text) is not None
    out = text
    for mark in marks:
        if (mark + " " in text or " " + mark in text) or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_MAX_PERIODS_STRIPPED)


def _process_digit_article(text: str, contractions: dict[str, str]) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(contractions.get(w, w) for w in words)


def evalai_process_punctuation(text: str) -> str:
    return _process_punctuation(text, EVALAI_PUNCTUATION, _EVALAI_COMMA_STRIP)


def evalai_process_digit_article(text: str) -> str:
    return _process_digit_article(text, EVALAI_CONTRACTIONS)


def evalai_normalize(answer: str) -> str:
    """EvalAI/MMF answer processor as LLaVA-1.5 uses it for TextVQA and VQAv2 submissions."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = evalai_process_punctuation(text)
    return evalai_process_digit_article(text)


def vqa_process_punctuation(text: str) -> str:
    return _process_punctuation(text, VQA_PUNCTUATION, _VQA_COMMA_STRIP)


def vqa_process_digit_article(text: str) -> str:
    return _process_digit_article(text, EVALAI_CONTRACTIONS)
