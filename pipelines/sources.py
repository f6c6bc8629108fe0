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
from typing import Any, Sequence

from crop.contract import make_key
from crop.geometry import boxes as gboxes
from crop.geometry.regions import box_px_to_region

STAGE_READ, STAGE_PARSE, STAGE_BOXES, STAGE_IMAGE, STAGE_DEDUP = "read", "parse", "boxes", "image", "dedup"
VISCOT_LLAVA_SUFFIX = (
    " Please provide the bounding box coordinate of the region that can help you answer the question better."
)


class Rejected(Exception):
    """Raised inside the parsers; converted to a rejects record by :func:`reject_record`."""

    def __init__(self, stage: str, reason: str, detail: str):
        super().__init__(f"{stage}/{reason}: {detail}")
        self.stage, self.reason, self.detail = stage, reason, detail


def reject_record(source: str, file: str, line: int | None, id_: str | None, err: Rejected) -> dict:
    return {"source": source, "file": file, "line": line, "id": id_, "stage": err.stage,
            "reason": err.reason, "detail": err.detail[:500]}


def sort_hash(seed: int, key: str) -> int:
    """Deterministic 63-bit sampling/shuffling key (hashlib, never the salted built-in hash)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") >> 1


# --------------------------------------------------------------------------- field checks
def _field(obj: dict, name: str, types: type | tuple, what: str) -> Any:
    if name not in obj:
        raise Rejected(STAGE_PARSE, "missing_field", f"field {name!r} is missing")
    v = obj[name]
    if isinstance(v, float) and not math.isfinite(v):
        raise Rejected(STAGE_PARSE, "non_finite_number", f"field {name!r} is {v!r}")
    if isinstance(v, bool) or not isinstance(v, types):
        raise Rejected(STAGE_PARSE, "mistyped_field", f"field {name!r} must be {what}, got {v!r}"[:300])
    return v


def _size(obj: dict, name: str) -> int:
    v = _field(obj, name, int, "a positive integer")
    if v <= 0:
        raise Rejected(STAGE_PARSE, "mistyped_field", f"field {name!r} must be a positive integer, got {v}")
    return v


def _raw_boxes(bboxs: Any) -> list[list[float]]:
    if not isinstance(bboxs, list):
        raise Rejected(STAGE_PARSE, "mistyped_field", f"field 'bboxs' must be a list of boxes, got {bboxs!r}"[:300])
    if not bboxs:
        raise Rejected(STAGE_BOXES, "empty_bboxs", "field 'bboxs' is an empty list")
    out = []
    for b in bboxs:
        try:
            out.append(list(gboxes.as_box(b)))
        except gboxes.BoxRejected as e:
            raise Rejected(STAGE_BOXES, e.reason, e.detail) from None
    return out


# --------------------------------------------------------------------------- boxes -> region
def boxes_to_region(raw_boxes: Sequence[Sequence[float]], width: int, height: int, policy: str,
                    grid: int) -> dict:
    """Clip every box, drop the unusable ones, merge by ``policy``, map to a block region.

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
    if policy == "union":
        box = gboxes.union_box(kept)
    elif policy == "first":
        box = kept[0]
    elif policy == "largest":
        box = max(kept, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    else:
        raise ValueError(f"unknown multi-box policy {policy!r}")
    region = box_px_to_region(box, width, height, grid)
    return {"union_box": [float(v) for v in box], "region": list(region),
            "n_boxes": len(raw_boxes), "n_clipped": n_clipped,
            "n_dropped": len(raw_boxes) - len(kept)}


def _candidate(**kw: Any) -> dict:
    base = {"kind": None, "key": None, "source": None, "source_id": None, "source_file": None,
            "line": None, "image_rel": None, "image_dirs": None, "width": None, "height": None,
            "question": None, "answer": None, "conversations": None, "boxes": None,
            "boxes_info": None, "sort_hash": None}
    base.update(kw)
    return base


# --------------------------------------------------------------------------- Visual-CoT JSONL
def parse_cot_line(source: str, image_dirs: Sequence[str], file: str, line: int, text: str | bytes,
                   *, seed: int, grid: int, policy: str) -> dict:
    """One line of ``<source>_cot_train.jsonl`` -> candidate (raises :class:`Rejected`).

    Raw bytes are decoded as strict UTF-8: a line that is not UTF-8 is rejected as
    ``malformed_json`` rather than written with replacement characters."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Rejected(STAGE_READ, "malformed_json", f"not UTF-8: {e.reason} at byte {e.start}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise Rejected(STAGE_READ, "malformed_json", f"{e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise Rejected(STAGE_PARSE, "mistyped_field", f"line is a JSON {type(obj).__name__}, not an object")
    question = _field(obj, "question", str, "a string")
    answer = _field(obj, "answer", str, "a string")
    image = _field(obj, "image", str, "a string")
    width, height = _size(obj, "width"), _size(obj, "height")
    raw = _raw_boxes(_field(obj, "bboxs", list, "a list of [x1, y1, x2, y2] boxes"))
    info = boxes_to_region(raw, width, height, policy, grid)
    source_id = f"{image}|{question}"
    key = make_key(source, source_id)
    return _candidate(kind="region", key=key, source=source, source_id=source_id, source_file=file,
                      line=line, image_rel=image, image_dirs=list(image_dirs), width=width,
                      height=height, question=question.strip(), answer=answer.strip(), boxes=raw,
                      boxes_info=info, sort_hash=sort_hash(seed, key))


# --------------------------------------------------------------------------- Visual-CoT LLaVA JSON
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
        raise Rejected(STAGE_PARSE, "mistyped_field", f"field 'dataset' {source!r} is not a known source")
    qid = _field(obj, "question_id", (int, str), "an int or string")
    image = _field(obj, "image", list, "a list [path, 'path###[x1, y1, x2, y2]']")
    if len(image) != 2 or not all(isinstance(s, str) for s in image) or "###" not in image[1]:
        raise Rejected(STAGE_PARSE, "mistyped_field", f"field 'image' must be [path, 'path###[box]'], got {image!r}"[:300])
    try:
        box = json.loads(image[1].split("###", 1)[1])
    except json.JSONDecodeError:
        raise Rejected(STAGE_PARSE, "mistyped_field", f"box after '###' is not JSON: {image[1]!r}"[:300]) from None
    raw = _raw_boxes([box])
    conv = _conversations(obj)
    if len(conv) < 4:
        raise Rejected(STAGE_PARSE, "malformed_conversations", f"expected 4 turns, got {len(conv)}")
    question = conv[0]["value"].replace("<image>", "").strip()
    if question.endswith(VISCOT_LLAVA_SUFFIX.strip()):
        question = question[: -len(VISCOT_LLAVA_SUFFIX.strip())].strip()
    source_id = str(qid)
    key = make_key(source, source_id)
    return _candidate(kind="region", key=key, source=source, source_id=source_id, source_file=file,
                      line=index + 1, image_rel=image[0], image_dirs=[""], question=question,
                      answer=conv[3]["value"].strip(), boxes=raw, sort_hash=sort_hash(seed, key))


# --------------------------------------------------------------------------- LLaVA-1.5 JSON
def _conversations(obj: dict) -> list[dict]:
    conv = obj.get("conversations")
    if "conversations" not in obj:
        raise Rejected(STAGE_PARSE, "missing_field", "field 'conversations' is missing")
    if not isinstance(conv, list) or len(conv) < 2:
        raise Rejected(STAGE_PARSE, "malformed_conversations", "conversations must be a list of >= 2 turns")
    out = []
    for i, turn in enumerate(conv):
        if (not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt")
                or not isinstance(turn.get("value"), str)):
            raise Rejected(STAGE_PARSE, "malformed_conversations",
                           f"turn {i} must be {{'from': 'human'|'gpt', 'value': str}}, got {turn!r}"[:300])
        out.append({"from": turn["from"], "value": turn["value"]})
    return out


def parse_llava_item(obj: Any, file: str, index: int, *, seed: int) -> dict:
    """One element of ``llava_v1_5_mix665k.json`` -> instruction candidate.

    ``id`` is an int or a string in the real file; both become the string ``source_id``.
    Records without ``image`` are text-only and stay so (image fields null).
    """
    if not isinstance(obj, dict):
        raise Rejected(STAGE_PARSE, "mistyped_field", f"element is a JSON {type(obj).__name__}, not an object")
    rid = _field(obj, "id", (int, str), "an int or string")
    image = obj.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise Rejected(STAGE_PARSE, "mistyped_field", f"field 'image' must be a path string, got {image!r}"[:300])
    conv = _conversations(obj)
    source_id = str(rid)
    key = make_key("llava", source_id)
    return _candidate(kind="instruction", key=key, source="llava", source_id=source_id,
                      source_file=file, line=index + 1, image_rel=image,
                      image_dirs=[""] if image else None, conversations=conv,
                      sort_hash=sort_hash(seed, key))
