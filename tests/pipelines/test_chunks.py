"""pipelines.chunks against ijson reading the whole file (the reference: what the build did
before reading in chunks): same records, same numbers, and every record read back by its byte
range equals the one read in order. The index reads tiny blocks here so that strings, escapes
and nesting are cut by block boundaries everywhere."""

from __future__ import annotations

import io
import json
import os
import tempfile

import ijson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import chunks

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(alphabet=st.sampled_from('ab"\\/[]{},: \n\té😀'), max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(alphabet=st.sampled_from('k"\\[]{}, '), max_size=5),
                                                 inner, max_size=4)), max_leaves=12)


def _whole_file(path):
    with open(path, "rb") as f:
        return [chunks.plain_numbers(o) for o in ijson.items(f, "item")]


def _via_chunks(fmt, path, chunk_records):
    out = []
    index = chunks.index_file(3, fmt, path, chunk_records)
    assert all(c.n_chunks == len(index.chunks) and c.total == index.total and c.spec_index == 3 for c in index.chunks)
    for c in index.chunks:
        out.extend(chunks.read_chunk(fmt, path, c))
    return index, out


def _check_json_list(data: bytes, expected_len: int, chunk_records: int):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "l.json")
        open(path, "wb").write(data)
        index, got = _via_chunks("llava_json", path, chunk_records)
        reference = _whole_file(path)
        assert len(reference) == expected_len == index.total
        assert [obj for _, obj in got] == reference
        assert [ref.line for ref, _ in got] == list(range(1, expected_len + 1))
        with open(path, "rb") as f:
            for ref, obj in got:
                assert chunks.read_record("llava_json", path, ref) == obj
                assert chunks.read_record("llava_json", path, ref, opened=f) == obj
        import hashlib
        assert index.sha256 == hashlib.sha256(data).hexdigest() and index.size == len(data)


@settings(max_examples=80, deadline=None)
@given(st.lists(json_values, max_size=9), st.sampled_from([None, 0, 1, 2]), st.integers(1, 4),
       st.sampled_from([1, 3, 7, 64]))
def test_json_list_chunks_equal_reading_the_whole_file(items, indent, chunk_records, block):
    import pipelines.chunks as mod

    old, mod.BLOCK = mod.BLOCK, block
    try:
        _check_json_list(json.dumps(items, indent=indent, ensure_ascii=indent == 2).encode(), len(items),
                         chunk_records)
    finally:
        mod.BLOCK = old


def test_nesting_deeper_than_the_fast_path_and_odd_strings(monkeypatch):
    monkeypatch.setattr(chunks, "BLOCK", 5)
    items = [{"a": [[[[["deep", {"x": "]}"}]]]]]}, "\\\"[{", [], {}, 1.5, None,
             {"conversations": [{"from": "human", "value": "say \"hi\" \\ [ok] {no}"}]}, 2 ** 80]
    _check_json_list((" \n " + json.dumps(items) + " \n").encode(), len(items), 2)
    _check_json_list(b"[]", 0, 2)
    _check_json_list(b"  [ \n ]  ", 0, 2)


@pytest.mark.parametrize("data, element", [
    (b'[{"id": 1}, {"id": 2, "conv', 2),  # cut inside a string
    (b'[{"id": 1}, {"id": 2}', 2),  # no closing bracket
    (b'[{"id": 1}] x', 2),  # data after the list
    (b'{"id": 1}', 1),  # not a list
    (b'', 1),
    (b'[{"id": 1},, {"id": 2}]', 2),  # an empty element: ijson's error, named
    (b'[{"id": tru}]', 1),
])
def test_an_invalid_json_list_fails_naming_the_element(tmp_path, data, element):
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"bad.json: not a valid JSON list near element {element}\b"):
        _via_chunks("llava_json", str(path), 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=20).filter(lambda b: b"\n" not in b), max_size=12), st.booleans(),
       st.integers(1, 4))
def test_jsonl_chunks_equal_iterating_the_file(lines, trailing_newline, chunk_records):
    data = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gqa_cot_train.jsonl")
        open(path, "wb").write(data)
        index, got = _via_chunks("cot_jsonl", path, chunk_records)
        reference = [(i, raw) for i, raw in enumerate(io.BytesIO(data), start=1) if raw.strip()]
        assert [(ref.line, raw) for ref, raw in got] == reference and index.total == len(reference)
        for ref, raw in got:
            assert chunks.read_record("cot_jsonl", path, ref) == raw == data[ref.start:ref.end]


def test_a_file_changed_after_indexing_fails_instead_of_reading_other_bytes(tmp_path):
    path = tmp_path / "l.json"
    path.write_text(json.dumps([{"id": i} for i in range(10)]))
    index = chunks.index_file(0, "llava_json", str(path), 4)
    path.write_text("[]")
    with pytest.raises(IOError, match="changed while the build ran"):
        list(chunks.read_chunk("llava_json", str(path), index.chunks[1]))


@pytest.mark.parametrize("fmt", ["cot_jsonl", "llava_json"])
def test_chunk_sizes_follow_the_file_size(tmp_path, fmt):
    """~64 chunks per file between 100 and 2000 records (fine for small files, so every worker
    gets some; coarse for LLaVA's 665k); records and order unchanged."""
    assert [chunks.chunk_size(n) for n in (1, 6400, 6500, 665_298)] == [100, 100, 200, 2000]
    n = 1350
    path = tmp_path / ("gqa_cot_train.jsonl" if fmt == "cot_jsonl" else "l.json")
    if fmt == "cot_jsonl":
        path.write_text("".join(json.dumps({"q": i}) + "\n" for i in range(n)))
    else:
        path.write_text(json.dumps([{"q": i} for i in range(n)]))
    index = chunks.index_file(0, fmt, str(path))
    assert [c.first for c in index.chunks] == list(range(1, n + 1, 100)) and index.total == n
    got = [rec for c in index.chunks for _, rec in chunks.read_chunk(fmt, str(path), c)]
    assert [json.loads(g)["q"] if fmt == "cot_jsonl" else g["q"] for g in got] == list(range(n))
