"""The one question-key rule (crop.eval.keys) and everything that must agree on it."""

import json
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crop.eval.keys import escape_id, question_key, question_keys, row_keys
from crop.eval.prompts import load_questions

SUFFIX = "Answer the question using a single word or phrase."
# ids as they appear in LLaVA's files (ints, image ids, MME paths) plus the characters the rule escapes
ids = st.one_of(st.integers(-3, 3), st.sampled_from(["a", "a#1", "a%231", "1", "x/1.jpg", "#", "%", "%23", ""]),
                st.text(alphabet="a1#%/", max_size=4))


def test_repeats_in_order_of_appearance():
    # LLaVA's TextVQA file uses the image id as question_id: three questions on image "img"
    assert question_keys(["img", "img2", "img", "img"]) == ["img", "img2", "img#1", "img#2"]
    assert question_keys([5, "5"]) == ["5", "5#1"]     # ids compared as strings, as the scorers do


def test_plain_ids_are_unchanged_and_special_characters_escaped():
    assert question_keys(["artwork/images/14777.jpg", 34602]) == ["artwork/images/14777.jpg", "34602"]
    assert escape_id("a#1") == "a%231" and escape_id("50%") == "50%25"
    # without the escape the raw id "a#1" would take the key of the second "a"
    assert question_keys(["a", "a", "a#1"]) == ["a", "a#1", "a%231"]


@given(st.lists(ids, max_size=12))
def test_keys_never_collide(qids):
    keys = question_keys(qids)
    assert len(set(keys)) == len(keys)


@given(ids, st.integers(0, 5), ids, st.integers(0, 5))
def test_key_is_injective(a, n, b, m):
    if question_key(a, n) == question_key(b, m):
        assert (str(a), n) == (str(b), m)


def test_row_keys_of_region_files():
    rows = [{"key": "img#1", "region_blocks": [0, 0, 1, 1]},
            {"question_id": "img"}, {"question_id": "img"}, {"other": 1}]
    # explicit keys as given; question ids numbered among the rows without a key; else the row index
    with pytest.raises(ValueError, match="rows 1 and 3 have the same question key 'img#1'"):
        row_keys(rows, "r.jsonl")
    assert row_keys(rows[1:], "r.jsonl") == ["img", "img#1", "2"]


rows_strategy = st.lists(st.one_of(
    st.fixed_dictionaries({}, optional={"key": ids, "question_id": ids, "benchmark": st.sampled_from(["pope", "sqa"])}),
    st.integers(), st.lists(st.integers(), max_size=2)), max_size=8)


@given(rows_strategy)
def test_row_keys_is_total(rows):
    """Any regions-file content gives one key per row, unique per benchmark, or a ValueError naming rows."""
    try:
        keys = row_keys(rows, "r.jsonl")
    except ValueError as err:
        assert str(err).startswith("r.jsonl: row")
        return
    scoped = [(r.get("benchmark"), k) for r, k in zip(rows, keys)]
    assert len(keys) == len(rows) and len(set(scoped)) == len(scoped)
    implicit = [r for r in rows if r.get("key") is None]
    assert all(k == str(r["key"]) for r, k in zip(rows, keys) if r.get("key") is not None)
    if all("question_id" in r and "benchmark" not in r for r in implicit) and len(implicit) == len(rows):
        assert keys == question_keys(r["question_id"] for r in rows)


def test_eval_items_and_predict_regions_share_keys(tmp_path):
    """crop eval's items and predict-regions' input rows get the same keys from a LLaVA question file."""
    from crop.models.localizer_cmd import question_rows

    rows = [{"question_id": "img", "image": "img.jpg", "text": f"What brand?\nReference OCR token: A\n{SUFFIX}"},
            {"question_id": "img", "image": "img.jpg", "text": f"What year?\n{SUFFIX}"},
            {"question_id": "img2", "image": "img2.jpg", "text": f"What colour?\n{SUFFIX}"}]
    qf = tmp_path / "llava_textvqa_val_v051_ocr.jsonl"
    qf.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_questions("textvqa", qf)
    assert [it.key for it in items] == ["img", "img#1", "img2"]
    converted = list(question_rows(str(qf)))
    assert [(r["key"], r["image"], r["question"]) for r in converted] == [
        ("img", "img.jpg", "What brand?"), ("img#1", "img.jpg", "What year?"), ("img2", "img2.jpg", "What colour?")]


def test_scienceqa_question_file_for_predict_regions(tmp_path):
    from crop.models.localizer_cmd import question_rows

    sqa = [{"id": "4", "image": "4/image.png", "conversations": [
               {"from": "human", "value": "<image>\nContext: x\nQuestion: Which animal?\nOptions: (A) cat (B) dog"}]},
           {"id": "9", "conversations": [{"from": "human", "value": "Question: Text only?\nOptions: (A) a (B) b"}]}]
    qf = tmp_path / "llava_test_CQM-A.json"
    qf.write_text(json.dumps(sqa))
    # only problems with an image get a region
    assert [(r["key"], r["image"], r["question"]) for r in question_rows(str(qf))] == [
        ("4", "4/image.png", "Which animal?")]


def test_eval_keys_of_a_file_whose_ids_look_like_keys(tmp_path):
    # a raw id "a#1" next to a repeated "a": counting alone would give two rows the key "a#1"
    rows = [{"question_id": q, "image": "x.jpg", "text": f"Q?\n{SUFFIX}"} for q in ("a", "a", "a#1")]
    qf = tmp_path / "q.jsonl"
    qf.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = [it.key for it in load_questions("gqa", qf)]
    assert len(set(keys)) == 3 and keys[:2] == ["a", "a#1"]


def test_region_file_with_repeated_question_ids(tmp_path):
    """A regions file keyed by TextVQA's repeated question ids gives each question its own region."""
    from crop.eval.config import MethodConfig
    from crop.eval.methods import RegionSource

    regions = tmp_path / "regions.jsonl"
    regions.write_text("".join(json.dumps({"question_id": "img", "region_blocks": [0, 0, i + 1, i + 1]}) + "\n"
                               for i in range(2)))
    src = RegionSource(MethodConfig(name="ilp", regions=str(regions)))
    first, second = (SimpleNamespace(key=k) for k in ("img", "img#1"))
    assert src.region(first, None, "textvqa") != src.region(second, None, "textvqa")
    regions.write_text("".join(json.dumps({"key": "img", "region_blocks": [0, 0, 1, 1]}) + "\n" for _ in range(2)))
    with pytest.raises(ValueError, match="rows 1 and 2 have the same question key 'img'"):
        RegionSource(MethodConfig(name="ilp", regions=str(regions)))


def test_one_regions_file_for_several_benchmarks(tmp_path):
    """POPE's question ids 1, 2, ... and ScienceQA's "1", "2", ... give the same keys; rows that
    name their benchmark (predict-regions writes it) keep them apart."""
    from crop.eval.config import MethodConfig
    from crop.eval.methods import RegionSource
    from crop.models.localizer_cmd import benchmark_of

    assert [benchmark_of(f) for f in ("llava_gqa_testdev_balanced.jsonl", "x/llava_textvqa_val_v051_ocr.jsonl",
                                      "llava_pope_test.jsonl", "llava_test_CQM-A.json", "llava_mme.jsonl",
                                      "llava_vqav2_mscoco_test-dev2015.jsonl", "mine.jsonl")] == [
        "gqa", "textvqa", "pope", "scienceqa", "mme", "vqav2", None]
    rows = [{"benchmark": "pope", "key": "1", "region_blocks": [0, 0, 1, 1]},
            {"benchmark": "scienceqa", "key": "1", "region_blocks": [2, 2, 3, 3]}]
    regions = tmp_path / "regions.jsonl"
    regions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = RegionSource(MethodConfig(name="ilp", regions=str(regions)))
    item = SimpleNamespace(key="1")
    assert tuple(src.region(item, None, "pope")) == (0, 0, 1, 1)
    assert tuple(src.region(item, None, "scienceqa")) == (2, 2, 3, 3)
    with pytest.raises(KeyError, match="no region for gqa question key '1'"):
        src.region(item, None, "gqa")
    # without the benchmark the two rows are one key twice: refused, naming the rows
    regions.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "benchmark"}) + "\n" for r in rows))
    with pytest.raises(ValueError, match="rows 1 and 2 have the same question key '1'"):
        RegionSource(MethodConfig(name="ilp", regions=str(regions)))
