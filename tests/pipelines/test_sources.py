"""Pure per-record parsing: every rejects reason the parsers can raise, and the happy paths."""

import io
import json

import pytest
from PIL import Image

from pipelines.finalize import finalize, inspect_image
from pipelines.sources import (
    Rejected,
    boxes_to_region,
    parse_cot_line,
    parse_llava_item,
    parse_viscot_llava_item,
    reject_record,
    sort_hash,
)

GOOD = {"question": "What is red?", "answer": "box", "image": "a.jpg", "width": 800, "height": 600,
        "bboxs": [[100, 75, 200, 150]], "dataset": "gqa", "split": "train"}
KW = dict(seed=0, grid=8, policy="union")


def cot(obj) -> dict:
    text = obj if isinstance(obj, str) else json.dumps(obj)
    return parse_cot_line("gqa", ["cot/gqa"], "gqa_cot_train.jsonl", 7, text, **KW)


def test_cot_line_happy_path():
    c = cot({**GOOD, "full_answer": "extra fields are fine"})
    # 800/8 = 100 px and 600/8 = 75 px blocks: x 100..200 -> block 1 only (both edges are
    # boundaries), y 75..150 -> block 1 only (75 and 150 are boundaries too)
    assert c["boxes_info"]["region"] == [1, 1, 1, 1]
    assert c["key"].startswith("gqa-") and "." not in c["key"]
    assert c["line"] == 7 and c["image_dirs"] == ["cot/gqa"]


@pytest.mark.parametrize("obj, stage, reason", [
    ('{"question": "cut', "read", "malformed_json"),
    ('[1, 2]', "parse", "mistyped_field"),
    ({k: v for k, v in GOOD.items() if k != "width"}, "parse", "missing_field"),
    ({k: v for k, v in GOOD.items() if k != "bboxs"}, "parse", "missing_field"),
    ({**GOOD, "height": "600"}, "parse", "mistyped_field"),
    ({**GOOD, "width": True}, "parse", "mistyped_field"),
    ({**GOOD, "width": 0}, "parse", "invalid_value"),  # right type, bad value
    ({**GOOD, "height": 2**31}, "parse", "invalid_value"),  # beyond the sample's int32 image_height
    ({**GOOD, "image": ""}, "parse", "invalid_value"),
    ({**GOOD, "image": "a\x00.jpg"}, "parse", "invalid_value"),
    ({**GOOD, "question": "\ud83d"}, "parse", "invalid_unicode"),  # issue 15: crashed make_key
    ({**GOOD, "answer": "smile \ud83d"}, "parse", "invalid_unicode"),  # issue 15: crashed Beam's coder
    ({**GOOD, "image": "\udc00.jpg"}, "parse", "invalid_unicode"),
    ({**GOOD, "width": 10**40}, "parse", "invalid_value"),
    ('{"question": ' + "9" * 5000 + '}', "read", "malformed_json"),  # beyond Python's int digit limit
    ("[" * 100_000 + "]" * 100_000, "read", "malformed_json"),  # beyond the recursion limit
    ({**GOOD, "bboxs": [[1, 2, 10**400, 4]]}, "boxes", "invalid_value"),  # beyond float range
    ({**GOOD, "bboxs": [[1, 2, [3], 4]]}, "boxes", "malformed_box"),
    ({**GOOD, "bboxs": [{"x": 1}]}, "boxes", "malformed_box"),
    ({**GOOD, "question": None}, "parse", "mistyped_field"),
    ({**GOOD, "bboxs": "1 2 3 4"}, "parse", "mistyped_field"),
    ('{"question": "q", "answer": "a", "image": "a.jpg", "width": NaN, "height": 5, "bboxs": [[0,0,1,1]]}',
     "parse", "non_finite_number"),
    ({**GOOD, "bboxs": [[1, 2, float("inf"), 4]]}, "boxes", "non_finite_number"),
    ({**GOOD, "bboxs": []}, "boxes", "empty_bboxs"),
    ({**GOOD, "bboxs": [[1, 2, 3]]}, "boxes", "malformed_box"),
    ({**GOOD, "bboxs": [[5, 2, 3, 4]]}, "boxes", "inverted_box"),  # shape fine, values inverted
    ({**GOOD, "bboxs": [[900, 10, 950, 50]]}, "boxes", "box_outside_image"),
    ({**GOOD, "bboxs": [[100, 50, 100, 80]]}, "boxes", "degenerate_box_after_clip"),
    ({**GOOD, "bboxs": [[-50, 10, 0, 80]]}, "boxes", "box_outside_image"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_cot_line_rejects(obj, stage, reason):
    with pytest.raises(Rejected) as e:
        cot(obj)
    assert (e.value.stage, e.value.reason) == (stage, reason)
    assert e.value.detail
    reject_record("gqa", "f", 1, None, e.value)["detail"].encode("utf-8")  # publishable as it is


def test_multi_box_union_clips_and_drops_bad_boxes():
    info = boxes_to_region([[0, 0, 100, 100], [700, 500, 900, 700], [900, 900, 950, 950]], 800, 600, "union", 8)
    # union of the first two, the second clipped to 800x600; the third lies outside and is dropped
    assert info["union_box"] == [0.0, 0.0, 800.0, 600.0]
    assert info["region"] == [0, 0, 7, 7]
    assert (info["n_boxes"], info["n_clipped"], info["n_dropped"]) == (3, 1, 1)


@pytest.mark.parametrize("policy, region", [("first", [0, 0, 0, 1]), ("largest", [4, 4, 7, 7])])
def test_multi_box_policies(policy, region):
    info = boxes_to_region([[0, 0, 100, 100], [400, 300, 800, 600]], 800, 600, policy, 8)
    assert info["region"] == region


def test_sort_hash_is_stable_and_seeded():
    assert sort_hash(0, "gqa-abc") == sort_hash(0, "gqa-abc")
    assert sort_hash(0, "gqa-abc") != sort_hash(1, "gqa-abc")
    assert 0 <= sort_hash(3, "x") < 2**63


@pytest.mark.parametrize("obj, reason", [
    ({"image": "a.jpg", "conversations": []}, "missing_field"),
    ({"id": 1.5, "conversations": []}, "mistyped_field"),
    ({"id": 1, "image": 3, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     "mistyped_field"),
    ({"id": 1}, "missing_field"),
    ({"id": 1, "conversations": [{"from": "human", "value": "q"}]}, "malformed_conversations"),
    ({"id": 1, "conversations": [{"from": "system", "value": "q"}, {"from": "gpt", "value": "a"}]},
     "malformed_conversations"),
    ({"id": 1, "conversations": [{"from": ["human"], "value": "q"}, {"from": "gpt", "value": "a"}]},
     "malformed_conversations"),  # an unhashable role once raised TypeError
    ("not an object", "mistyped_field"),
    ({"id": 1, "image": "", "conversations": [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}]},
     "invalid_value"),
    ({"id": 10**30, "conversations": []}, "invalid_value"),
    ({"id": "\ud83d", "conversations": []}, "invalid_unicode"),
    ({"id": 1, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "\udfff"}]},
     "invalid_unicode"),
])
def test_llava_rejects(obj, reason):
    with pytest.raises(Rejected) as e:
        parse_llava_item(obj, "llava.json", 0, seed=0)
    assert e.value.reason == reason


def test_llava_int_and_str_ids_and_text_only():
    conv = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    a = parse_llava_item({"id": 12, "conversations": conv, "model": ""}, "f.json", 0, seed=0)
    b = parse_llava_item({"id": "12", "conversations": conv}, "f.json", 1, seed=0)
    assert a["source_id"] == b["source_id"] == "12" and a["key"] == b["key"]  # duplicates by design
    assert a["image_rel"] is None and a["kind"] == "instruction"


def test_viscot_llava_item_uses_pixel_box_after_hashes():
    obj = {"dataset": "vsr", "split": "train", "question_id": 5,
           "image": ["cot/vsr/a.jpg", "cot/vsr/a.jpg###[10, 20, 30, 40]"],
           "conversations": [{"from": "human", "value": "<image>\nWhere? Please provide the bounding box "
                              "coordinate of the region that can help you answer the question better."},
                             {"from": "gpt", "value": "[0.1, 0.2, 0.3, 0.4]"},
                             {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "left"}]}
    c = parse_viscot_llava_item(obj, "viscot_363k.json", 0, seed=0, known_sources=["vsr"])
    assert c["question"] == "Where?" and c["answer"] == "left"
    assert c["boxes"] == [[10.0, 20.0, 30.0, 40.0]] and c["boxes_info"] is None
    with pytest.raises(Rejected, match="not a known source"):
        parse_viscot_llava_item({**obj, "dataset": "coco"}, "f", 0, seed=0, known_sources=["vsr"])


def _jpeg(w=64, h=48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def _png(w=64, h=48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("check", ["header", "full"])
def test_truncated_images_are_unreadable(check):
    for data in (_jpeg()[:-300], _png()[:-20], b"not an image at all"):
        with pytest.raises(Rejected) as e:
            inspect_image(data, check)
        assert e.value.reason == "unreadable_image"


def test_inspect_image_reports_true_format():
    assert inspect_image(_png(30, 20)) == (30, 20, "png")
    assert inspect_image(_jpeg(30, 20)) == (30, 20, "jpg")


@pytest.mark.parametrize("fmt", ["TIFF", "EPS", "PPM"])
def test_formats_the_loader_cannot_read_are_rejected(fmt):
    """Only the formats shards may hold (those the training loader decodes) are opened at all;
    TIFF, EPS (whose plugin calls Ghostscript) etc. are unreadable_image rejects."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format=fmt)
    with pytest.raises(Rejected) as e:
        inspect_image(buf.getvalue())
    assert e.value.reason == "unreadable_image"


def test_finalize_size_mismatch_and_region_record():
    c = parse_cot_line("gqa", ["cot/gqa"], "gqa_cot_train.jsonl", 1,
                       json.dumps({**GOOD, "width": 64, "height": 48, "bboxs": [[0, 0, 8, 6]]}), **KW)
    rec, ext, info = finalize(c, "cot/gqa/a.jpg", _jpeg(64, 48), grid=8, policy="union",
                              trailing_period=True, check="header")
    assert rec["conversations"][1]["value"] == "0 0 0 0." and ext == "jpg"
    with pytest.raises(Rejected) as e:
        finalize(c, "cot/gqa/a.jpg", _jpeg(65, 48), grid=8, policy="union", trailing_period=True, check="header")
    assert e.value.reason == "image_size_mismatch" and "65x48" in e.value.detail


def test_cot_line_bytes_are_strict_utf8():
    """Raw JSONL lines arrive as bytes: valid UTF-8 (non-ASCII included) parses; anything else is a
    malformed_json reject, never a record with replacement characters."""
    line = json.dumps({**GOOD, "question": "Qué color tiene el autobús?"}, ensure_ascii=False).encode("utf-8")
    c = parse_cot_line("gqa", ["cot/gqa"], "gqa_cot_train.jsonl", 7, line, **KW)
    assert c["question"] == "Qué color tiene el autobús?"
    bad = line.replace("Qué".encode("utf-8"), b"Qu\xe9")  # Latin-1 byte inside a UTF-8 file
    with pytest.raises(Rejected) as e:
        parse_cot_line("gqa", ["cot/gqa"], "gqa_cot_train.jsonl", 7, bad, **KW)
    assert e.value.reason == "malformed_json" and "not UTF-8" in str(e.value.detail)


def test_builder_writes_exactly_the_contract_image_extensions():
    from crop.contract import IMAGE_MEMBER_EXTS
    from pipelines.finalize import EXT_BY_FORMAT

    assert sorted(EXT_BY_FORMAT.values()) == sorted(IMAGE_MEMBER_EXTS)


# LLaVA-1.5's conventions (haotian-liu/LLaVA llava/train/train.py: preprocess_v1 asserts that turn j
# comes from roles[j % 2]; one image's features are spliced per <image> token), one reason each.
H, G = "human", "gpt"


def _turns(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


@pytest.mark.parametrize("image, conv, reason", [
    ("a.jpg", _turns((G, "<image>\nq"), (H, "a")), "conversation_turn_order"),  # first turn from gpt
    ("a.jpg", _turns((H, "<image>\nq"), (H, "again"), (G, "a")), "conversation_turn_order"),  # no alternation
    ("a.jpg", _turns((H, "<image>\nq"), (G, "a"), (H, "unanswered")), "conversation_turn_order"),  # ends with human
    ("a.jpg", _turns((H, "<image>\n<image>\nq"), (G, "a")), "image_token_count"),  # two tokens
    ("a.jpg", _turns((H, "<image>\nq"), (G, "a"), (H, "<image>"), (G, "b")), "image_token_count"),
    ("a.jpg", _turns((H, "q"), (G, "a")), "image_token_count"),  # image but no token
    ("a.jpg", _turns((H, "q"), (G, "a"), (H, "<image>\nnow?"), (G, "b")), "image_token_misplaced"),
    ("a.jpg", _turns((H, "q"), (G, "<image>")), "image_token_misplaced"),
    (None, _turns((H, "<image>\nq"), (G, "a")), "image_token_without_image"),  # text-only record
])
def test_llava_conversation_conventions(image, conv, reason):
    obj = {"id": 7, "conversations": conv, **({"image": image} if image else {})}
    with pytest.raises(Rejected) as e:
        parse_llava_item(obj, "llava.json", 0, seed=0)
    assert e.value.reason == reason and e.value.detail


@pytest.mark.parametrize("human", ["<image>\nWhat?", "What?\n<image>"])
def test_llava_image_token_at_start_or_end_of_first_turn_is_accepted(human):
    conv = _turns((H, human), (G, "a"), (H, "more?"), (G, "no"))
    c = parse_llava_item({"id": 7, "image": "a.jpg", "conversations": conv}, "llava.json", 0, seed=0)
    assert c["conversations"] == conv and c["image_rel"] == "a.jpg"


def test_viscot_llava_source_tag_is_total():
    """The reader counts a viscot_363k element under its dataset tag: any JSON value there (a
    list is unhashable) counts as "unknown" instead of raising in the reader."""
    from pipelines.sources import viscot_llava_source

    known = {"vsr": ["cot/vsr"]}
    assert viscot_llava_source({"dataset": "vsr"}, known) == "vsr"
    for bad in ({"dataset": ["vsr"]}, {"dataset": {"a": 1}}, {"dataset": None}, [1], "x", None):
        assert viscot_llava_source(bad, known) == "unknown"


def test_reject_details_hold_no_memory_address():
    """Pillow's error names the BytesIO it was given (``<_io.BytesIO object at 0x7f..>``): the
    address differs between runs, so rejects.jsonl would too."""
    with pytest.raises(Rejected) as e:
        inspect_image(b"not an image at all")
    rec = reject_record("gqa", "f", 1, None, e.value)
    assert "0x" not in rec["detail"] and "BytesIO" in rec["detail"]


def test_decompression_bomb_is_image_too_large_with_its_pixel_count():
    import struct
    import zlib

    def png(w, h):  # a 1-bit PNG: a few KB of zeros that declare w*h pixels
        def chunk(tag, data):
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
        raw = zlib.compress(b"\0" * ((w + 7) // 8 + 1) * h, 9)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                + chunk(b"IDAT", raw) + chunk(b"IEND", b""))

    for w, h in ((10_000, 9_000), (20_000, 20_000)):  # between 1x and 2x Pillow's limit, and above 2x
        with pytest.raises(Rejected) as e:
            inspect_image(png(w, h))
        assert e.value.reason == "image_too_large" and str(w * h) in e.value.detail


def test_jpeg_with_a_long_trailer_is_accepted_and_a_truncated_one_is_not():
    """Cameras and editors append data after the end-of-image marker; the old check looked for
    FFD9 in the last 4096 bytes only and rejected such files."""
    data = _jpeg(64, 48)
    assert inspect_image(data + b"\x00trailer" * 1000) == (64, 48, "jpg")
    for cut in (len(data) - 2, len(data) // 2):
        with pytest.raises(Rejected) as e:
            inspect_image(data[:cut] + b"\x00" * 5000)
        assert e.value.reason == "unreadable_image"


def test_jpeg_end_ignores_an_exif_thumbnails_end_marker():
    """An EXIF thumbnail inside APP1 has its own FFD8..FFD9; walking segments skips it."""
    from pipelines.finalize import jpeg_end

    thumb = _jpeg(16, 12)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(buf, format="JPEG", exif=b"Exif\0\0II*\0" + thumb)
    data = buf.getvalue()
    assert jpeg_end(data) == len(data)
    assert jpeg_end(data[: data.rindex(b"\xff\xda") + 20]) is None  # cut in the scan: the thumbnail's FFD9 does not count


def test_reasons_list_is_the_schema_enum():
    import schemas
    from pipelines.sources import REASONS

    doc = json.loads(schemas.path("rejects").read_text())
    assert list(REASONS) == doc["properties"]["reason"]["enum"]
