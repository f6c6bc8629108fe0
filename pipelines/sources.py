"""Per-record parsing of the three input formats into *candidates* or *rejects* (pure functions).

A candidate is a small JSON-like dict that carries everything needed to build the final sample
except the image bytes, which only the shard writer reads (``pipelines.finalize``). A reject is
a ``schemas/rejects.schema.json`` record. Nothing is dropped: every input record becomes exactly
one of the two.

Formats (``shared/docs/formats.md``): Visual-CoT per-source metadata JSONL (section 1),
Visual-CoT's LLaVA-format JSON list (section 2) and LLaVA-1.5's instruction JSON list (section 3).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import reprlib
from typing import Any, Sequence

from crop.contract import make_key
from crop.data.safety import clean_text  # one owner for publishable error text (re-exported here)
from crop.geometry import boxes as gboxes
from crop.geometry.regions import box_px_to_region

STAGE_READ, STAGE_PARSE, STAGE_BOXES, STAGE_IMAGE, STAGE_DEDUP = "read", "parse", "boxes", "image", "dedup"
STAGE_WRITE = "write"  # the shard writer's own per-record steps (only internal_error uses it)
VISCOT_LLAVA_SUFFIX = (
    " Please provide the bounding box coordinate of the region that can help you answer the question better."
)
IMAGE_TOKEN = "<image>"
MAX_SIDE_PX = 2**31 - 1
"""Largest image side a record may declare: the sample's ``image_width``/``image_height`` are int32."""

REASONS = (
    "malformed_json", "missing_field", "mistyped_field", "invalid_value", "invalid_unicode",
    "non_finite_number", "empty_bboxs", "malformed_box", "inverted_box", "box_outside_image",
    "degenerate_box_after_clip", "malformed_conversations", "conversation_turn_order",
    "image_token_count", "image_token_misplaced", "image_token_without_image", "missing_image",
    "path_outside_root", "not_a_regular_file", "empty_image", "unreadable_image", "image_too_large",
    "image_size_mismatch", "duplicate_key", "internal_error",
)
"""Every reject reason, in the order ``docs/architecture.md`` explains them (the rejects schema's
enum is the same set; a test holds them together)."""


class Rejected(Exception):
    """Raised inside the parsers; converted to a rejects record by :func:`reject_record`."""

    def __init__(self, stage: str, reason: str, detail: str):
        super().__init__(f"{stage}/{reason}: {detail}")
        self.stage, self.reason, self.detail = stage, reason, detail




def reject_record(source: str, file: str, line: int | None, id_: str | None, err: Rejected) -> dict:
    return {"source": clean_text(str(source), 100), "file": clean_text(str(file), 300), "line": line,
            "id": None if id_ is None else clean_text(id_, 300), "stage": err.stage, "reason": err.reason,
            "detail": clean_text(err.detail)}


def internal_error(stage: str, exc: BaseException) -> Rejected:
    """The reject for an exception that escaped a record's processing (a bug, not bad data): its
    class and message, cleaned so that two runs write the same bytes."""
    return Rejected(stage, "internal_error", f"{type(exc).__name__}: {exc}")


def record_id(payload: Any) -> str | None:
    """The id a reject names (LLaVA ``id``, Visual-CoT ``question_id``), or None; never raises."""
    if not isinstance(payload, dict):
        return None
    v = payload.get("id", payload.get("question_id"))
    if isinstance(v, str):
        return clean_text(v, 300)
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() <= 64:
        return str(v)
    return None


def sort_hash(seed: int, key: str) -> int:
    """Deterministic 63-bit sampling/shuffling key (hashlib, never the salted built-in hash)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") >> 1


# --------------------------------------------------------------------------- field checks
_SURROGATE = re.compile("[\ud800-\udfff]")
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 80, 80, 6, 6


def show(v: Any) -> str:
    """A short, total ``repr`` for reject details: nested, huge or odd values never raise here
    (``repr`` of a 5000-digit int does, and of a deeply nested list can)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 256:
        return f"<int of {v.bit_length()} bits>"
    try:
        return _REPR.repr(v)
    except Exception:  # noqa: BLE001 - a detail must never fail the record
        return f"<{type(v).__name__}>"


def check_text(where: str, s: str) -> str:
    """``s`` unless it holds a lone surrogate (valid JSON ``"\\ud83d"``, not valid Unicode text):
    such a string cannot be encoded as UTF-8 (keys, Beam coders and shards all need that)."""
    m = _SURROGATE.search(s)
    if m:
        raise Rejected(STAGE_PARSE, "invalid_unicode",
                       f"{where} holds a lone surrogate U+{ord(m.group()):04X} at character {m.start()}: "
                       "not valid Unicode text")
    return s


def _field(obj: dict, name: str, types: type | tuple, what: str) -> Any:
    if name not in obj:
        raise Rejected(STAGE_PARSE, "missing_field", f"field {name!r} is missing")
    v = obj[name]
    if isinstance(v, float) and not math.isfinite(v):
        raise Rejected(STAGE_PARSE, "non_finite_number", f"field {name!r} is {v!r}")
    if isinstance(v, bool) or not isinstance(v, types):
        raise Rejected(STAGE_PARSE, "mistyped_field", f"field {name!r} must be {what}, got {show(v)}")
    if isinstance(v, str):
        check_text(f"field {name!r}", v)
    return v


def _size(obj: dict, name: str) -> int:
    v = _field(obj, name, int, "a positive integer")
    if not 0 < v <= MAX_SIDE_PX:
        raise Rejected(STAGE_PARSE, "invalid_value",
                       f"field {name!r} must be an integer in 1..{MAX_SIDE_PX}, got {show(v)}")
    return v


def _id(obj: dict, name: str) -> str:
    """An id field (int or string in the real files) as the string ``source_id``."""
    v = _field(obj, name, (int, str), "an int or string")
    if isinstance(v, int) and v.bit_length() > 64:
        raise Rejected(STAGE_PARSE, "invalid_value", f"field {name!r} is an integer of {v.bit_length()} bits")
    return str(v)


def _image_path(where: str, v: str) -> str:
    """A non-empty path string; whether it stays inside the image root is the reader's check."""
    if not v:
        raise Rejected(STAGE_PARSE, "invalid_value", f"{where} is an empty path")
    if "\x00" in v:
        raise Rejected(STAGE_PARSE, "invalid_value", f"{where} holds a NUL character: {show(v)}")
    return v


def _raw_boxes(bboxs: Any) -> list[list[float]]:
    """Shape and value checks of every box: ``malformed_box`` (not four numbers),
    ``non_finite_number``, ``invalid_value`` (beyond float range), ``inverted_box`` (x2 < x1 or
    y2 < y1)."""
    if not isinstance(bboxs, list):
        raise Rejected(STAGE_PARSE, "mistyped_field", f"field 'bboxs' must be a list of boxes, got {show(bboxs)}")
    if not bboxs:
        raise Rejected(STAGE_BOXES, "empty_bboxs", "field 'bboxs' is an empty list")
    out = []
    for i, b in enumerate(bboxs):
        if not isinstance(b, list) or len(b) != 4:
            raise Rejected(STAGE_BOXES, "malformed_box", f"box {i} must be 4 numbers [x1, y1, x2, y2], got {show(b)}")
        vals = []
        for v in b:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise Rejected(STAGE_BOXES, "malformed_box", f"box {i} value {show(v)} is not a number in {show(b)}")
            if isinstance(v, float) and not math.isfinite(v):
                raise Rejected(STAGE_BOXES, "non_finite_number", f"box {i} value {v!r} is not finite in {show(b)}")
            try:
                vals.append(float(v))
            except OverflowError:
                raise Rejected(STAGE_BOXES, "invalid_value", f"box {i} value {show(v)} is beyond float range") from None
        if vals[2] < vals[0] or vals[3] < vals[1]:
            raise Rejected(STAGE_BOXES, "inverted_box", f"box {i} {show(b)} has x2 < x1 or y2 < y1")
        out.append(vals)
    return out


# --------------------------------------------------------------------------- boxes -> region
def boxes_to_region(raw_boxes: Sequence[Sequence[float]], width: int, height: int, policy: str,
                    grid: int, max_regions: int = 4) -> dict:
    """Clip every box, drop the unusable ones, merge by ``policy``, map to a block region.

    ``regions`` (issue 21): the boxes' block regions merged where they overlap or touch, at most
    ``max_regions`` kept apart (:func:`crop.geometry.multi_region.boxes_px_to_regions`), returned as
    ``regions``; ``region`` stays the union's region (``region_blocks``, for single-region readers).

    Boxes that are entirely outside or degenerate after clipping are dropped when at least one
    other box survives (counted in ``n_dropped``); if none survives the record is rejected with
    the first box's reason.
    """
    kept, first_err, n_clipped = [], None, 0
    for b in raw_boxes:
        try:
            clipped, was_clipped = gboxes.validate_box(b, width, height)
        except gboxes.BoxRejected as e:
            first_err = first_err or e
            continue
        kept.append(clipped)
        n_clipped += was_clipped
    if not kept:
        raise Rejected(STAGE_BOXES, first_err.reason, first_err.detail)
    regions = None
    if policy == "regions":
        from crop.geometry.multi_region import boxes_px_to_regions

        box = gboxes.union_box(kept)
        regions = [list(r) for r in boxes_px_to_regions(kept, width, height, max_regions, grid)]
    elif policy == "union":
        box = gboxes.union_box(kept)
    elif policy == "first":
        box = kept[0]
    elif policy == "largest":
        box = max(kept, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    else:
        raise ValueError(f"unknown multi-box policy {policy!r}")
    region = box_px_to_region(box, width, height, grid)
    out = {"union_box": [float(v) for v in box], "region": list(region),
           "n_boxes": len(raw_boxes), "n_clipped": n_clipped,
           "n_dropped": len(raw_boxes) - len(kept)}
    if regions is not None:
        out["regions"] = regions
    return out


def _candidate(**kw: Any) -> dict:
    base = {"kind": None, "key": None, "source": None, "source_id": None, "source_file": None,
            "line": None, "image_rel": None, "image_dirs": None, "width": None, "height": None,
            "question": None, "answer": None, "conversations": None, "boxes": None,
            "boxes_info": None, "sort_hash": None}
    base.update(kw)
    return base


# --------------------------------------------------------------------------- Visual-CoT JSONL
def parse_cot_line(source: str, image_dirs: Sequence[str], file: str, line: int, text: str | bytes,
                   *, seed: int, grid: int, policy: str, max_regions: int = 4) -> dict:
    """One line of ``<source>_cot_train.jsonl`` -> candidate (raises :class:`Rejected`).

    Raw bytes are decoded as strict UTF-8: a line that is not UTF-8 is rejected as
    ``malformed_json`` rather than written with replacement characters. JSON that Python cannot
    hold (nesting deeper than the recursion limit, an integer of more than 4300 digits) is
    ``malformed_json`` too."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Rejected(STAGE_READ, "malformed_json", f"not UTF-8: {e.reason} at byte {e.start}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise Rejected(STAGE_READ, "malformed_json", f"{e.msg} at column {e.colno}") from None
    except (ValueError, RecursionError) as e:  # int digits limit; nesting beyond the recursion limit
        raise Rejected(STAGE_READ, "malformed_json", f"{type(e).__name__}: {str(e)[:120]}") from None
    if not isinstance(obj, dict):
        raise Rejected(STAGE_PARSE, "mistyped_field", f"line is a JSON {type(obj).__name__}, not an object")
    question = _field(obj, "question", str, "a string")
    answer = _field(obj, "answer", str, "a string")
    image = _image_path("field 'image'", _field(obj, "image", str, "a string"))
    width, height = _size(obj, "width"), _size(obj, "height")
    raw = _raw_boxes(_field(obj, "bboxs", list, "a list of [x1, y1, x2, y2] boxes"))
    info = boxes_to_region(raw, width, height, policy, grid, max_regions)
    source_id = f"{image}|{question}"
    key = make_key(source, source_id)
    return _candidate(kind="region", key=key, source=source, source_id=source_id, source_file=file,
                      line=line, image_rel=image, image_dirs=list(image_dirs), width=width,
                      height=height, question=question.strip(), answer=answer.strip(), boxes=raw,
                      boxes_info=info, sort_hash=sort_hash(seed, key))


# --------------------------------------------------------------------------- Visual-CoT LLaVA JSON
def viscot_llava_source(obj: Any, known_sources: Sequence[str] | dict) -> str:
    """The source an element of ``viscot_363k.json`` is counted under (its ``dataset`` tag, or
    ``"unknown"``); total: the tag may be any JSON value."""
    ds = obj.get("dataset") if isinstance(obj, dict) else None
    return ds if isinstance(ds, str) and ds in known_sources else "unknown"


def parse_viscot_llava_item(obj: Any, file: str, index: int, *, seed: int,
                            known_sources: Sequence[str]) -> dict:
    """One element of ``viscot_363k.json`` -> candidate whose region waits for the image size.

    The text box in the conversation is normalized to the padded square; we use the exact pixel
    box after ``###`` in ``image[1]`` instead (formats.md section 2).
    """
    if not isinstance(obj, dict):
        raise Rejected(STAGE_PARSE, "mistyped_field", f"element is a JSON {type(obj).__name__}, not an object")
    source = _field(obj, "dataset", str, "a source tag")
    if source not in known_sources:
        raise Rejected(STAGE_PARSE, "invalid_value", f"field 'dataset' {show(source)} is not a known source")
    source_id = _id(obj, "question_id")
    image = _field(obj, "image", list, "a list [path, 'path###[x1, y1, x2, y2]']")
    if len(image) != 2 or not all(isinstance(s, str) for s in image):
        raise Rejected(STAGE_PARSE, "mistyped_field",
                       f"field 'image' must be [path, 'path###[box]'], got {show(image)}")
    path = _image_path("field 'image'[0]", check_text("field 'image'[0]", image[0]))
    check_text("field 'image'[1]", image[1])
    if "###" not in image[1]:
        raise Rejected(STAGE_PARSE, "invalid_value", f"field 'image'[1] has no '###[box]': {show(image[1])}")
    try:
        box = json.loads(image[1].split("###", 1)[1])
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise Rejected(STAGE_PARSE, "invalid_value", f"box after '###' is not JSON: {show(image[1])}") from None
    raw = _raw_boxes([box])
    conv = _conversations(obj)
    if len(conv) < 4:
        raise Rejected(STAGE_PARSE, "malformed_conversations", f"expected 4 turns, got {len(conv)}")
    question = conv[0]["value"].replace(IMAGE_TOKEN, "").strip()
    if question.endswith(VISCOT_LLAVA_SUFFIX.strip()):
        question = question[: -len(VISCOT_LLAVA_SUFFIX.strip())].strip()
    key = make_key(source, source_id)
    return _candidate(kind="region", key=key, source=source, source_id=source_id, source_file=file,
                      line=index + 1, image_rel=path, image_dirs=[""], question=question,
                      answer=conv[3]["value"].strip(), boxes=raw, sort_hash=sort_hash(seed, key))


# --------------------------------------------------------------------------- LLaVA-1.5 JSON
def _conversations(obj: dict) -> list[dict]:
    """The turns as ``{"from", "value"}`` dicts (structure only; see :func:`check_llava_turns`)."""
    conv = obj.get("conversations")
    if "conversations" not in obj:
        raise Rejected(STAGE_PARSE, "missing_field", "field 'conversations' is missing")
    if not isinstance(conv, list) or len(conv) < 2:
        raise Rejected(STAGE_PARSE, "malformed_conversations", "conversations must be a list of >= 2 turns")
    out = []
    for i, turn in enumerate(conv):
        role = turn.get("from") if isinstance(turn, dict) else None
        if (not isinstance(turn, dict) or not isinstance(role, str) or role not in ("human", "gpt")
                or not isinstance(turn.get("value"), str)):
            raise Rejected(STAGE_PARSE, "malformed_conversations",
                           f"turn {i} must be {{'from': 'human'|'gpt', 'value': str}}, got {show(turn)}")
        out.append({"from": role, "value": check_text(f"conversations turn {i}", turn["value"])})
    return out


def check_llava_turns(conv: list[dict], has_image: bool) -> None:
    """LLaVA-1.5's training conventions, each failure its own reason.

    Facts from ``haotian-liu/LLaVA`` (``llava/train/train.py``): ``preprocess_v1`` asserts that
    turn ``j`` comes from ``roles[j % 2]`` (human, gpt alternating from a human turn; a record
    starting with gpt only loses that turn); ``preprocess_multimodal`` moves the ``<image>`` token
    of a turn to its start, and the model splices one image's features per ``<image>`` token, so an
    image record needs exactly one token (formats.md: always in the first human turn) and a
    text-only record none. A final human turn has no answer to learn from.
    """
    if conv[0]["from"] != "human":
        raise Rejected(STAGE_PARSE, "conversation_turn_order", "turn 0 is from gpt; conversations start with human")
    for i in range(1, len(conv)):
        if conv[i]["from"] == conv[i - 1]["from"]:
            raise Rejected(STAGE_PARSE, "conversation_turn_order",
                           f"turns {i - 1} and {i} are both from {conv[i]['from']}; human and gpt must alternate")
    if conv[-1]["from"] != "gpt":
        raise Rejected(STAGE_PARSE, "conversation_turn_order",
                       f"the last turn ({len(conv) - 1}) is from human; conversations end with gpt")
    counts = [t["value"].count(IMAGE_TOKEN) for t in conv]
    total = sum(counts)
    if not has_image:
        if total:
            raise Rejected(STAGE_PARSE, "image_token_without_image",
                           f"text-only record has {total} <image> token(s) (turns {[i for i, n in enumerate(counts) if n]})")
        return
    if total != 1:
        raise Rejected(STAGE_PARSE, "image_token_count", f"image record has {total} <image> tokens, expected exactly 1")
    if counts[0] != 1:
        raise Rejected(STAGE_PARSE, "image_token_misplaced",
                       f"the <image> token is in turn {counts.index(1)}, not in the first human turn")


def parse_llava_item(obj: Any, file: str, index: int, *, seed: int) -> dict:
    """One element of ``llava_v1_5_mix665k.json`` -> instruction candidate.

    ``id`` is an int or a string in the real file; both become the string ``source_id``.
    Records without ``image`` (or with ``"image": null``) are text-only and stay so (image fields
    null). Conversations are checked against LLaVA-1.5's conventions (:func:`check_llava_turns`).
    """
    if not isinstance(obj, dict):
        raise Rejected(STAGE_PARSE, "mistyped_field", f"element is a JSON {type(obj).__name__}, not an object")
    source_id = _id(obj, "id")
    image = obj.get("image")
    if image is not None:
        if not isinstance(image, str):
            raise Rejected(STAGE_PARSE, "mistyped_field", f"field 'image' must be a path string, got {show(image)}")
        _image_path("field 'image'", check_text("field 'image'", image))
    conv = _conversations(obj)
    check_llava_turns(conv, has_image=image is not None)
    key = make_key("llava", source_id)
    return _candidate(kind="instruction", key=key, source="llava", source_id=source_id,
                      source_file=file, line=index + 1, image_rel=image,
                      image_dirs=[""] if image is not None else None, conversations=conv,
                      sort_hash=sort_hash(seed, key))
