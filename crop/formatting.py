"""The localizer sample template (paper App. A) and the answer-string parsers.

Prompt (human turn)::

    <image>\\n{question} Please identify the region that can help you answer the question better.

Target (gpt turn)::

    {x_min} {y_min} {x_max} {y_max}.

Decision on the trailing period: Appendix A prints the target as ``<x_min> <y_min> <x_max>
<y_max>.`` and a localizer trained on the paper's data ends its answer with that period, so our
target keeps it (``TRAILING_PERIOD = True``; recipes can switch it off). Both parsers accept the
answer with or without it.

Several regions (issue 21, beyond the paper): the target lists the rectangles in reading order
(``crop.geometry.multi_region``), separated by ``"; "``, with one trailing period::

    {x_min} {y_min} {x_max} {y_max}; {x_min} {y_min} {x_max} {y_max}.

A one-region list formats exactly as the single-region template, so the single region stays the
default and old targets are valid multi-region targets. :func:`parse_regions_strict` accepts
exactly that shape; :func:`parse_regions_lenient` takes consecutive groups of four in-range
integers.
"""

from __future__ import annotations

import re

from crop.geometry.regions import Region

IMAGE_TOKEN = "<image>"
REGION_PROMPT_SUFFIX = "Please identify the region that can help you answer the question better."
TRAILING_PERIOD = True

_STRICT = re.compile(r"^\s*(-?[0-9]+) (-?[0-9]+) (-?[0-9]+) (-?[0-9]+)\.?\s*$")
# An integer that is not part of a decimal: "4." at the end of a sentence counts, "0.1" does not.
_INT = re.compile(r"(?<![0-9])(?<![0-9]\.)-?[0-9]+(?![0-9])(?!\.[0-9])")


class RegionParseError(ValueError):
    """The localizer's answer is not a valid region; the message says what was wrong."""


def render_region_prompt(question: str, with_image_token: bool = True) -> str:
    """Human turn of a region sample, LLaVA style (``<image>`` on its own first line)."""
    question = question.strip()
    text = f"{question} {REGION_PROMPT_SUFFIX}"
    return f"{IMAGE_TOKEN}\n{text}" if with_image_token else text


def format_region(region: Region | tuple[int, int, int, int], grid: int = 8,
                  trailing_period: bool = TRAILING_PERIOD) -> str:
    """Region -> ``"x_min y_min x_max y_max."``."""
    r = Region(*region).check(grid)
    return " ".join(str(v) for v in r) + ("." if trailing_period else "")


def parse_region_strict(text: str, grid: int = 8) -> Region:
    """Parse exactly four space-separated integers (optional trailing period).

    Raises :class:`RegionParseError` naming the problem: wrong shape, value out of range, or
    swapped min/max.
    """
    m = _STRICT.match(text)
    if not m:
        raise RegionParseError(
            f"expected 'x_min y_min x_max y_max' (four integers, optional '.'), got {text!r}"
        )
    region = Region(*(int(g) for g in m.groups()))
    try:
        return region.check(grid)
    except ValueError as e:
        raise RegionParseError(f"{e} in answer {text!r}") from None


def parse_region_lenient(text: str, grid: int = 8) -> Region | None:
    """Take the first four in-range integers in the text, in order; ``None`` if there are fewer.

    Decimals are skipped entirely (``[0.1, 2, 3, 4, 5]`` -> 2 3 4 5), negative or out-of-range
    integers are skipped, and a sentence-final period does not hide the last number.

    Swapped pairs are put in order (``5 1 2 3`` -> x 2..5): a lenient parse prefers a usable
    region to a fallback.
    """
    values = [int(t) for t in _INT.findall(text) if 0 <= int(t) < grid]
    if len(values) < 4:
        return None
    x0, y0, x1, y1 = values[:4]
    return Region(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


REGION_SEPARATOR = "; "
_STRICT_ONE = r"(-?[0-9]+) (-?[0-9]+) (-?[0-9]+) (-?[0-9]+)"
_STRICT_MANY = re.compile(rf"^\s*{_STRICT_ONE}(?:;\s*{_STRICT_ONE})*\.?\s*$")
_STRICT_GROUP = re.compile(_STRICT_ONE)


def format_regions(regions, grid: int = 8, trailing_period: bool = TRAILING_PERIOD) -> str:
    """Several regions -> ``"x0 y0 x1 y1; x0 y0 x1 y1."`` (in the order given; one region -> the
    single-region target, character for character)."""
    regions = list(regions)
    if not regions:
        raise ValueError("no regions to format")
    body = REGION_SEPARATOR.join(" ".join(str(v) for v in Region(*r).check(grid)) for r in regions)
    return body + ("." if trailing_period else "")


def parse_regions_strict(text: str, grid: int = 8, max_regions: int | None = None) -> list[Region]:
    """Parse ``"x0 y0 x1 y1; ...; x0 y0 x1 y1"`` (optional trailing period) into regions, in order.

    Raises :class:`RegionParseError` naming the problem: wrong shape, a value out of range,
    swapped min/max, or more than ``max_regions`` regions.
    """
    if not _STRICT_MANY.match(text):
        raise RegionParseError(
            f"expected 'x_min y_min x_max y_max' groups separated by ';' (optional '.'), got {text!r}")
    regions = []
    for m in _STRICT_GROUP.finditer(text):
        try:
            regions.append(Region(*(int(g) for g in m.groups())).check(grid))
        except ValueError as e:
            raise RegionParseError(f"{e} in answer {text!r}") from None
    if max_regions is not None and len(regions) > max_regions:
        raise RegionParseError(f"{len(regions)} regions, at most {max_regions} allowed, in answer {text!r}")
    return regions


def parse_regions_lenient(text: str, grid: int = 8, max_regions: int | None = None) -> list[Region]:
    """Consecutive groups of four in-range integers (the :func:`parse_region_lenient` rules per
    group: decimals and out-of-range integers skipped, swapped pairs put in order); an incomplete
    last group is dropped, at most ``max_regions`` groups are kept. ``[]`` when fewer than four."""
    values = [int(t) for t in _INT.findall(text) if 0 <= int(t) < grid]
    out = []
    for i in range(0, len(values) - 3, 4):
        x0, y0, x1, y1 = values[i:i + 4]
        out.append(Region(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    return out[:max_regions] if max_regions is not None else out
