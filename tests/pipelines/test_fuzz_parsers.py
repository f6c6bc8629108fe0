"""Property-based fuzzing of every per-record step of the build (issue 15): for any input, a
candidate/sample or a reject with a listed reason, never an exception; and read = written + rejected.

Inputs: arbitrary JSON values in every field (strings with lone surrogates, control characters,
``<image>`` tokens, path escapes; huge ints, non-finite floats; nested lists and objects), arbitrary
bytes as JSONL lines, and arbitrary file kinds at the image path (folder, FIFO, symlinks in and out
of the root, empty, truncated, bomb, random bytes). What leaves a step must also survive what
follows it: candidates and rejects are encoded with Beam's own ``FastPrimitivesCoder`` (the coder
that crashed on a lone surrogate as a candidate left Parse) and rejects are checked against
``schemas/rejects.schema.json``.

The default runs are bounded (the whole file in a few seconds); the ``slow`` twins run the same
properties with many more examples (``pytest -m slow tests/pipelines/test_fuzz_parsers.py``).
"""

import io
import json
import os
import struct
import tempfile
import zlib

import pytest
from apache_beam import pvalue
from apache_beam.coders import coders
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from crop import contract
from pipelines import build
from pipelines.finalize import finalize
from pipelines.images import ImageRoot, read_image
from pipelines.recipe import VISUAL_COT_SOURCES, parse_recipe
from pipelines.sources import (
    REASONS,
    Rejected,
    parse_cot_line,
    parse_llava_item,
    parse_viscot_llava_item,
    reject_record,
)

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST_FILES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW_FILES = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CODER = coders.FastPrimitivesCoder()  # what Beam encodes dict elements with between stages
KW = dict(seed=0, grid=8, policy="union")
RECIPE = parse_recipe({"name": "fz", "inputs": {"image_root": "/nonexistent"},
                       "sources": {"gqa": {}, "vsr": {}}, "llava": {}, "shards": {"name": "fz", "max_samples": 50}})

# --------------------------------------------------------------------------- strategies
SPECIAL_TEXT = ["", " ", "\ud83d", "a\udc00b", "\ud83d\ude00", "<image>", "<image>\n<image>", "\x00", "\x1b[31m",
                "\u202e", "../../etc/passwd", "/etc/passwd", "gs://other/x.jpg", "a.jpg", "cot/gqa/a.jpg",
                "human", "gpt", "NaN", "x" * 300]
SPECIAL_NUMBERS = [0, -1, 1, 2**31 - 1, 2**31, 2**63, -(2**63) - 1, 10**400, 1e308, -0.0,
                   float("inf"), float("-inf"), float("nan"), 5e-324, True, False]
text = st.one_of(st.sampled_from(SPECIAL_TEXT), st.text(st.characters(exclude_categories=()), max_size=20))
HUGE_INT = st.just(None).map(lambda _: 10**5000)  # beyond Python's int-to-str digit limit (not repr-able)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(SPECIAL_NUMBERS), HUGE_INT,
                    text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(text, inner, max_size=4), max_leaves=12)
box = st.lists(st.one_of(st.floats(-50, 900), st.integers(-50, 900), scalars), min_size=4, max_size=4)
good_box = st.tuples(st.integers(0, 50), st.integers(0, 50), st.floats(51, 100), st.floats(51, 100)).map(list)


def jsonl_line(rec) -> bytes | None:
    try:
        return json.dumps(rec, ensure_ascii=True).encode("ascii")  # lone surrogates written as \ud83d escapes
    except (ValueError, RecursionError):  # an int beyond Python's digit limit cannot be written
        return None


DROP = object()  # a mutation that removes the field


def mutated(base, fields):
    """Mostly valid records with 0-3 fields replaced by any JSON value or dropped, so that both
    the early checks and the deep paths (keys, boxes, conversations) meet odd values."""
    mutation = st.tuples(st.sampled_from(fields), st.one_of(json_values, st.just(DROP)))

    def apply(rec, muts):
        rec = dict(rec)
        for name, value in muts:
            if value is DROP:
                rec.pop(name, None)
            else:
                rec[name] = value
        return rec
    return st.builds(apply, base, st.lists(mutation, max_size=3))


paths = st.one_of(st.sampled_from(["a.jpg", "cot/gqa/a.jpg", "../x.jpg", "/etc/passwd", "a\x00.jpg", ""]), text)
cot_records = mutated(st.fixed_dictionaries({
    "question": text, "answer": text, "image": paths, "width": st.integers(100, 2000),
    "height": st.integers(100, 2000), "bboxs": st.lists(st.one_of(good_box, good_box, box), min_size=1, max_size=3),
    "dataset": st.just("gqa")},
    optional={"full_answer": json_values}),
    ["question", "answer", "image", "width", "height", "bboxs", "split"])
roles = st.sampled_from(["human", "gpt"])
turns = st.lists(st.fixed_dictionaries({"from": roles, "value": st.one_of(
    text, st.sampled_from(["<image>\nq", "q\n<image>", "a", "<image>"]))}), min_size=0, max_size=6)
alternating = st.integers(1, 3).flatmap(lambda n: st.tuples(
    st.sampled_from(["<image>\n", "", "<image>"]), st.lists(text, min_size=2 * n, max_size=2 * n))).map(
    lambda t: [{"from": "human" if i % 2 == 0 else "gpt", "value": (t[0] if i == 0 else "") + v}
               for i, v in enumerate(t[1])])
conversations = st.one_of(alternating, turns, st.lists(st.one_of(json_values, turns.map(lambda t: t[:1])), max_size=3)
                          .map(lambda ts: [x[0] if isinstance(x, list) and x else x for x in ts]))
llava_records = st.one_of(json_values, mutated(st.fixed_dictionaries(
    {"id": st.one_of(st.integers(), text), "conversations": conversations},
    optional={"image": paths, "model": json_values}), ["id", "image", "conversations"]))
viscot_llava_records = st.one_of(json_values, mutated(st.fixed_dictionaries({
    "dataset": st.sampled_from(sorted(VISUAL_COT_SOURCES)), "split": st.just("train"),
    "question_id": st.one_of(st.integers(), text),
    "image": st.tuples(paths, st.one_of(text, box.map(lambda b: "p.jpg###" + (jsonl_line(b) or b"[1e999]").decode()))
                       ).map(list),
    "conversations": st.one_of(alternating, conversations)}), ["dataset", "question_id", "image", "conversations"]))


# --------------------------------------------------------------------------- the property
def check_outcome(fn, source: str = "gqa"):
    """``fn()`` returns a candidate or raises Rejected with a listed reason; either one is
    encodable by Beam's coder, and a reject satisfies its schema."""
    try:
        cand = fn()
    except Rejected as e:
        assert e.reason in REASONS and e.reason != "internal_error", e.reason
        rec = reject_record(source, "f.jsonl", 1, None, e)
        contract.validate(rec, "rejects")
        CODER.encode(rec)
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
        return None
    assert isinstance(cand, dict) and cand["key"] and cand["sort_hash"] is not None
    CODER.encode(cand)  # the coder that crashed on a lone surrogate
    json.dumps(cand, ensure_ascii=False).encode("utf-8")
    return cand


def check_parse_fn(source, file, line, payload):
    """The Beam shell: exactly one output per record (read = candidates + rejects)."""
    outs = list(build.ParseFn(RECIPE, fail_on_internal_error=True).process((source, file, line, payload)))
    assert len(outs) == 1
    out = outs[0]
    if isinstance(out, pvalue.TaggedOutput):
        assert out.tag == build.REJECTS and out.value["reason"] in REASONS
        contract.validate(out.value, "rejects")
        CODER.encode(out.value)
    else:
        CODER.encode(out)


def _cot(line):
    return lambda: parse_cot_line("gqa", ["cot/gqa"], "gqa_cot_train.jsonl", 1, line, **KW)


def prop_cot_record(rec):
    line = jsonl_line(rec)
    assume(line is not None)
    check_outcome(_cot(line))
    check_parse_fn("gqa", "gqa_cot_train.jsonl", 1, line)


def prop_cot_bytes(line):
    check_outcome(_cot(line))
    check_parse_fn("gqa", "gqa_cot_train.jsonl", 1, line)


def prop_llava(obj):
    check_outcome(lambda: parse_llava_item(obj, "llava.json", 0, seed=0), "llava")
    check_parse_fn("llava", "llava.json", 1, obj)


def prop_viscot_llava(obj):
    check_outcome(lambda: parse_viscot_llava_item(obj, "v.json", 0, seed=0, known_sources=list(VISUAL_COT_SOURCES)))
    source = build.viscot_llava_source(obj, VISUAL_COT_SOURCES)
    check_parse_fn(source, "viscot_363k.json", 1, obj)


@FAST
@given(cot_records)
def test_cot_jsonl_records_fuzz(rec):
    prop_cot_record(rec)


@FAST
@given(st.binary(max_size=200) | st.sampled_from([b"", b"\xff\xfe", b"[" * 5000, b'{"a": ' + b"9" * 5000 + b"}",
                                                   b"null", b"{}", b'"\\ud83d"', b"NaN"]))
def test_cot_jsonl_arbitrary_bytes_fuzz(line):
    prop_cot_bytes(line)


@FAST
@given(llava_records)
def test_llava_records_fuzz(obj):
    prop_llava(obj)


@FAST
@given(viscot_llava_records)
def test_viscot_llava_records_fuzz(obj):
    prop_viscot_llava(obj)


@pytest.mark.slow
@SLOW
@given(cot_records)
def test_cot_jsonl_records_fuzz_slow(rec):
    prop_cot_record(rec)


@pytest.mark.slow
@SLOW
@given(st.binary(max_size=2000))
def test_cot_jsonl_arbitrary_bytes_fuzz_slow(line):
    prop_cot_bytes(line)


@pytest.mark.slow
@SLOW
@given(llava_records)
def test_llava_records_fuzz_slow(obj):
    prop_llava(obj)


@pytest.mark.slow
@SLOW
@given(viscot_llava_records)
def test_viscot_llava_records_fuzz_slow(obj):
    prop_viscot_llava(obj)


# --------------------------------------------------------------------------- reading a whole file
def prop_jsonl_file(lines):
    """read = candidates + rejects over a whole JSONL file of arbitrary lines."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gqa_cot_train.jsonl")
        with open(path, "wb") as f:
            f.write(b"\n".join(lines))
        els = list(build.read_input(("cot_jsonl", "gqa", path)))
        assert len(els) == sum(1 for ln in b"\n".join(lines).split(b"\n") if ln.strip())
        fn = build.ParseFn(RECIPE, fail_on_internal_error=True)
        outs = [o for el in els for o in fn.process(el)]
        assert len(outs) == len(els)


line_bytes = st.one_of(st.binary(max_size=80), cot_records.map(jsonl_line).filter(lambda x: x is not None))


@FAST_FILES
@given(st.lists(line_bytes, max_size=8))
def test_jsonl_file_counts_reconcile_fuzz(lines):
    prop_jsonl_file(lines)


# --------------------------------------------------------------------------- the image read + finalize step
def _img(fmt, w=40, h=30, **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bomb_png(w=12_000, h=9_000) -> bytes:
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * ((w + 7) // 8 + 1) * h, 9)) + chunk(b"IEND", b""))


JPEG, PNG = _img("JPEG"), _img("PNG")
CONTENTS = {"jpeg": JPEG, "png": PNG, "gif": _img("GIF"), "tiff": _img("TIFF"), "truncated_jpeg": JPEG[:-200],
            "jpeg_trailer": JPEG + b"\0" * 6000, "truncated_png": PNG[:-20], "bomb": _bomb_png(),
            "text": b"hello", "one_byte": b"\xff"}
KINDS = sorted(CONTENTS) + ["missing", "folder", "fifo", "empty", "symlink_in", "symlink_out", "symlink_dir_out",
                            "dangling", "outside_relative", "outside_absolute"]
SECRET = b"SECRET-BYTES-OUTSIDE-THE-ROOT"


def _make(root: str, outside: str, i: int, kind: str, random_bytes: bytes) -> str:
    """Create the entry for record ``i`` and return the image path the record names."""
    name = f"cot/gqa/img{i}.jpg"
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind in CONTENTS:
        open(path, "wb").write(CONTENTS[kind] if kind != "text" else random_bytes)
    elif kind == "folder":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "symlink_in":
        open(path + ".real", "wb").write(JPEG)
        os.symlink(os.path.basename(path) + ".real", path)
    elif kind == "symlink_out":
        os.symlink(os.path.join(outside, "secret.jpg"), path)
    elif kind == "symlink_dir_out":
        os.symlink(outside, os.path.join(root, f"cot/gqa/dir{i}"))
        return f"dir{i}/secret.jpg"
    elif kind == "dangling":
        os.symlink("/nonexistent/nothing.jpg", path)
    elif kind == "outside_relative":
        return "../../../outside/secret.jpg"
    elif kind == "outside_absolute":
        return os.path.join(outside, "secret.jpg")
    return f"img{i}.jpg"


def prop_writer(entries):
    """Candidates whose image path holds any kind of file -> the shard writer: every candidate
    is a sample or a reject with a listed reason, and nothing from outside the root is stored."""
    with tempfile.TemporaryDirectory() as d:
        root, outside, out = os.path.join(d, "root"), os.path.join(d, "outside"), os.path.join(d, "out")
        os.makedirs(root)
        os.makedirs(outside)
        open(os.path.join(outside, "secret.jpg"), "wb").write(SECRET)
        cands = []
        for i, (kind, size_ok, random_bytes) in enumerate(entries):
            image = _make(root, outside, i, kind, random_bytes)
            w, h = (40, 30) if size_ok else (41, 30)
            line = json.dumps({"question": f"q{i}", "answer": "a", "image": image, "width": w, "height": h,
                               "bboxs": [[1, 1, 20, 20]]})
            cands.append(parse_cot_line("gqa", ["cot/gqa"], "gqa_cot_train.jsonl", i + 1, line, **KW))
        recipe = parse_recipe({"name": "fz", "inputs": {"image_root": root}, "sources": {"gqa": {}},
                               "shards": {"name": "fz", "max_samples": 50}})
        writer = build.WriteShardFn(recipe, out, fail_on_internal_error=True)
        pending, stats = writer._write("fz-000000.tar", cands)
        pending.commit()
        assert stats["samples"] + len(stats["rejects"]) == len(cands)  # read = written + rejected
        for r in stats["rejects"]:
            assert r["reason"] in REASONS and r["reason"] != "internal_error"
            contract.validate(r, "rejects")
        data = open(os.path.join(out, "fz-000000.tar"), "rb").read()
        assert SECRET not in data
        kinds = {c["line"]: e[0] for c, e in zip(cands, entries)}
        for r in stats["rejects"]:
            if kinds[r["line"]] in ("symlink_out", "symlink_dir_out", "outside_relative", "outside_absolute"):
                assert r["reason"] == "path_outside_root"


entries = st.lists(st.tuples(st.sampled_from(KINDS), st.booleans(), st.binary(max_size=64)), min_size=1, max_size=6)


@FAST_FILES
@given(entries)
def test_writer_with_any_file_kind_at_the_image_path_fuzz(es):
    prop_writer(es)


@pytest.mark.slow
@SLOW_FILES
@given(entries)
def test_writer_with_any_file_kind_at_the_image_path_fuzz_slow(es):
    prop_writer(es)


@FAST_FILES
@given(st.sampled_from(KINDS), st.binary(max_size=64))
def test_read_then_finalize_of_one_image_fuzz(kind, random_bytes):
    """The per-record image step alone: read_image + finalize return a record or a Rejected."""
    with tempfile.TemporaryDirectory() as d:
        root, outside = os.path.join(d, "root"), os.path.join(d, "outside")
        os.makedirs(root)
        os.makedirs(outside)
        open(os.path.join(outside, "secret.jpg"), "wb").write(SECRET)
        image = _make(root, outside, 0, kind, random_bytes)
        cand = parse_llava_item({"id": 1, "image": f"cot/gqa/{image}",
                                 "conversations": [{"from": "human", "value": "<image>\nq"},
                                                   {"from": "gpt", "value": "a"}]}, "l.json", 0, seed=0)

        def step():
            rel, data = read_image(ImageRoot(root), cand["image_dirs"], cand["image_rel"])
            assert SECRET not in data
            return finalize(cand, rel, data, grid=8, policy="union", trailing_period=True, check="header")[0] | {
                "sort_hash": 0}

        check_outcome(step, "llava")
