"""The localizer template (paper App. A) and the answer-string formatter and parsers."""

from __future__ import annotations

import pytest

from crop.formatting import (
    REGION_PROMPT_SUFFIX,
    RegionParseError,
    format_region,
    parse_region_lenient,
    parse_region_strict,
    render_region_prompt,
)
from crop.geometry import Region

# The sentence from the paper's Appendix A, typed out here rather than imported.
PAPER_SUFFIX = "Please identify the region that can help you answer the question better."


def test_prompt_suffix_is_the_papers_sentence():
    assert REGION_PROMPT_SUFFIX == PAPER_SUFFIX


@pytest.mark.parametrize(
    "question, with_image, expected",
    [
        pytest.param(
            "What words are on the card?", True,
            "<image>\nWhat words are on the card? " + PAPER_SUFFIX, id="with-image-token",
        ),
        pytest.param(
            "  What colour is the bus?\n", True,
            "<image>\nWhat colour is the bus? " + PAPER_SUFFIX, id="question-whitespace-stripped",
        ),
        pytest.param("Is it red?", False, "Is it red? " + PAPER_SUFFIX, id="without-image-token"),
    ],
)
def test_render_region_prompt(question, with_image, expected):
    assert render_region_prompt(question, with_image_token=with_image) == expected


FORMAT = [
    pytest.param((1, 2, 3, 4), True, "1 2 3 4.", id="with-period"),
    pytest.param((1, 2, 3, 4), False, "1 2 3 4", id="without-period"),
    pytest.param((0, 0, 7, 7), True, "0 0 7 7.", id="full"),
    pytest.param(Region(5, 0, 5, 0), True, "5 0 5 0.", id="single-block-region-type"),
]


@pytest.mark.parametrize("region, period, expected", FORMAT)
def test_format_region(region, period, expected):
    assert format_region(region, trailing_period=period) == expected


def test_format_region_default_keeps_the_papers_trailing_period():
    # Appendix A: "<x_min> <y_min> <x_max> <y_max>." -- the project decided the period is part of
    # the target.
    assert format_region((2, 1, 5, 2)) == "2 1 5 2."


@pytest.mark.parametrize(
    "region, fragment",
    [((0, 0, 8, 7), "x_max=8 is outside 0..7"), ((5, 0, 2, 7), "x_min=5 > x_max=2")],
    ids=["out-of-range", "swapped"],
)
def test_format_region_rejects_invalid(region, fragment):
    with pytest.raises(ValueError) as info:
        format_region(region)
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------------------------
# strict parser
# ---------------------------------------------------------------------------------------------

STRICT_OK = [
    pytest.param("1 2 3 4", (1, 2, 3, 4), id="plain"),
    pytest.param("1 2 3 4.", (1, 2, 3, 4), id="trailing-period"),
    pytest.param("  1 2 3 4.  ", (1, 2, 3, 4), id="surrounding-spaces"),
    pytest.param("\n0 0 7 7\n", (0, 0, 7, 7), id="surrounding-newlines"),
    pytest.param("3 3 3 3", (3, 3, 3, 3), id="single-block"),
]


@pytest.mark.parametrize("text, expected", STRICT_OK)
def test_parse_region_strict_ok(text, expected):
    got = parse_region_strict(text)
    assert got == Region(*expected)
    assert isinstance(got, Region)


SHAPE = "expected 'x_min y_min x_max y_max'"
STRICT_BAD = [
    # malformed shape: the message says what was expected and echoes the text
    pytest.param("1,2,3,4", SHAPE, id="commas"),
    pytest.param("1 2 3", SHAPE, id="three-values"),
    pytest.param("1 2 3 4 5", SHAPE, id="five-values"),
    pytest.param("a b c d", SHAPE, id="letters"),
    pytest.param("", SHAPE, id="empty"),
    pytest.param("1 2 3 4..", SHAPE, id="two-periods"),
    pytest.param("1.5 2 3 4", SHAPE, id="decimal"),
    pytest.param("The region is 1 2 3 4.", SHAPE, id="prose"),
    pytest.param("[1, 2, 3, 4]", SHAPE, id="bracketed-list"),
    # out of range: names the coordinate and the allowed range
    pytest.param("0 0 8 7", "x_max=8 is outside 0..7", id="x_max-8"),
    pytest.param("0 0 7 8.", "y_max=8 is outside 0..7", id="y_max-8"),
    pytest.param("-1 0 3 3", "x_min=-1 is outside 0..7", id="negative"),
    # swapped min/max: names both values
    pytest.param("5 0 2 7", "x_min=5 > x_max=2", id="x-swapped"),
    pytest.param("0 6 7 1", "y_min=6 > y_max=1", id="y-swapped"),
]


@pytest.mark.parametrize("text, fragment", STRICT_BAD)
def test_parse_region_strict_rejects(text, fragment):
    with pytest.raises(RegionParseError) as info:
        parse_region_strict(text)
    assert fragment in str(info.value)
    # the offending answer is quoted so a log line can be traced back
    assert repr(text) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_region_strict_other_grid():
    assert parse_region_strict("0 0 3 3", grid=4) == Region(0, 0, 3, 3)
    with pytest.raises(RegionParseError, match="x_max=4 is outside 0..3"):
        parse_region_strict("0 0 4 3", grid=4)


# ---------------------------------------------------------------------------------------------
# lenient parser: first four in-range integers, swapped pairs put in order; None if < 4.
# Decimals ("0.1", "4.5") are not integers and are skipped entirely (neither digit counts).
# ---------------------------------------------------------------------------------------------

LENIENT = [
    pytest.param("1 2 3 4", (1, 2, 3, 4), id="plain"),
    pytest.param("The region is 1 2 3 4.", (1, 2, 3, 4), id="prose-with-period"),
    pytest.param("1 2 3 4.", (1, 2, 3, 4), id="own-target-format"),
    pytest.param("1. 2. 3. 4.", (1, 2, 3, 4), id="periods-after-each"),
    pytest.param("The region is 1 2 3 4 .", (1, 2, 3, 4), id="prose-spaced-period"),
    pytest.param("1,2,3,4", (1, 2, 3, 4), id="commas"),
    pytest.param("x_min=1, y_min=2, x_max=3, y_max=4", (1, 2, 3, 4), id="named"),
    pytest.param("[1, 2, 3, 4]", (1, 2, 3, 4), id="bracketed"),
    # decimals are skipped: 0.1 contributes nothing, then 2 3 4 5
    pytest.param("[0.1, 2, 3, 4, 5]", (2, 3, 4, 5), id="decimal-skipped"),
    pytest.param("3.5 1 2 3 4", (1, 2, 3, 4), id="leading-decimal-skipped"),
    # out-of-range values are skipped: 8 is not in 0..7, then 0 0 7 1 -> y swapped -> 0 0 7 1
    pytest.param("0 0 8 7 1", (0, 0, 7, 1), id="out-of-range-skipped"),
    pytest.param("-1 0 1 2 3", (0, 1, 2, 3), id="negative-skipped"),
    pytest.param("12 1 2 3 4", (1, 2, 3, 4), id="two-digit-skipped"),
    # swapped pairs are put in order: x 5,2 -> 2..5; y 1,3 stays
    pytest.param("5 1 2 3", (2, 1, 5, 3), id="x-swapped-reordered"),
    pytest.param("0 7 7 0", (0, 0, 7, 7), id="both-swapped-reordered"),
    # only the first four count
    pytest.param("1 2 3 4 5 6 7", (1, 2, 3, 4), id="extra-ignored"),
    # fewer than four in-range integers -> None
    pytest.param("1 2 3", None, id="three"),
    pytest.param("", None, id="empty"),
    pytest.param("no numbers here", None, id="no-numbers"),
    pytest.param("9 9 9 9 1 2", None, id="only-two-in-range"),
    pytest.param("1 2 3 4.5", None, id="decimal-fourth"),
]


@pytest.mark.parametrize("text, expected", LENIENT)
def test_parse_region_lenient(text, expected):
    got = parse_region_lenient(text)
    if expected is None:
        assert got is None
    else:
        assert got == Region(*expected)
        assert isinstance(got, Region)


def test_parse_region_lenient_other_grid():
    # on a 4x4 grid 5 and 4 are out of range and skipped
    assert parse_region_lenient("5 0 4 1 3 2", grid=4) == Region(0, 1, 3, 2)


@pytest.mark.parametrize(
    "region", [(0, 0, 7, 7), (1, 2, 3, 4), (6, 0, 7, 5)], ids=["full", "middle", "edge"]
)
def test_strict_parse_of_formatted_region(region):
    for period in (True, False):
        assert parse_region_strict(format_region(region, trailing_period=period)) == region
