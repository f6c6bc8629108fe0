"""The data contract: sample records, JSON Schemas, stable keys and Hugging Face features."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import subprocess
import sys
from importlib import resources

import jsonschema
import pytest

import schemas
from crop import contract
from crop.contract import (
    ContractError,
    instruction_record,
    make_key,
    region_record,
    sample_features,
    validate,
)


def _region(**over):
    kw = dict(
        source="textvqa", source_id="000123.jpg|What is written on the sign?",
        source_file="textvqa_cot_train.jsonl", image="cot/textvqa/000123.jpg",
        image_width=640, image_height=480, question="What is written on the sign?", answer="stop",
        prompt="<image>\nWhat is written on the sign? Please identify the region that can help you "
        "answer the question better.",
        target="2 2 5 5.", boxes_xyxy_px=[[212, 150, 401.9, 333.2]],
        union_box_xyxy_px=[212, 150, 401.9, 333.2], region_blocks=[2, 2, 5, 5], grid_size=8,
    )
    kw.update(over)
    return region_record(**kw)


def _instruction(**over):
    kw = dict(
        source_id="2345678", source_file="llava_v1_5_mix665k.json", image="gqa/images/2345678.jpg",
        image_width=500, image_height=375,
        conversations=[
            {"from": "human", "value": "<image>\nIs the cup left of the plate?"},
            {"from": "gpt", "value": "Yes"},
        ],
    )
    kw.update(over)
    return instruction_record(**kw)


def _text_only():
    return _instruction(source_id="text-1", image=None, image_width=None, image_height=None)


def _schema_doc(name):
    return json.loads(schemas.path(name).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# sample records
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [_region, _instruction, _text_only], ids=["region", "instruction", "text-only"]
)
def test_constructed_records_validate_and_survive_json(make):
    rec = make()
    validate(rec)
    again = json.loads(json.dumps(rec))
    assert again == rec
    validate(again, "sample")


def test_region_and_instruction_records_have_the_same_keys():
    # HF datasets infers features from the first rows and silently drops keys missing there.
    region, instr, text = _region(), _instruction(), _text_only()
    assert list(region) == list(instr) == list(text)  # same keys, same order
    props = _schema_doc("sample")["properties"]
    # regions_blocks (version 2) is always emitted but not required: version-1 shards lack it
    assert set(region) == set(props) == set(_schema_doc("sample")["required"]) | {"regions_blocks"}


def test_region_record_content():
    rec = _region()
    assert rec["kind"] == "region"
    assert rec["schema_version"] == contract.SCHEMA_VERSION == 2
    assert rec["conversations"] == [
        {"from": "human", "value": rec["conversations"][0]["value"]},
        {"from": "gpt", "value": "2 2 5 5."},
    ]
    assert rec["conversations"][0]["value"].startswith("<image>\n")
    # pixel boxes are floats (ints in some sources), the region is ints
    assert rec["boxes_xyxy_px"] == [[212.0, 150.0, 401.9, 333.2]]
    assert all(type(v) is float for v in rec["boxes_xyxy_px"][0] + rec["union_box_xyxy_px"])
    assert rec["region_blocks"] == [2, 2, 5, 5] and all(type(v) is int for v in rec["region_blocks"])
    assert rec["key"] == make_key("textvqa", rec["source_id"])


def test_instruction_record_content():
    rec = _instruction()
    assert rec["kind"] == "instruction" and rec["source"] == "llava"
    for field in ("question", "answer", "boxes_xyxy_px", "union_box_xyxy_px", "region_blocks", "grid_size"):
        assert rec[field] is None, field
    assert [c["from"] for c in rec["conversations"]] == ["human", "gpt"]


def test_instruction_record_drops_extra_turn_keys():
    rec = _instruction(conversations=[
        {"from": "human", "value": "hi", "weight": 0},
        {"from": "gpt", "value": "yo"},
    ])
    assert rec["conversations"][0] == {"from": "human", "value": "hi"}
    validate(rec)


def _drop(field):
    return lambda r: r.pop(field)


def _set(field, value):
    return lambda r: r.__setitem__(field, value)


SAMPLE_BROKEN = [
    pytest.param(_region, _drop("key"), "'key' is a required property", id="missing-key"),
    pytest.param(_instruction, _drop("region_blocks"), "'region_blocks' is a required property",
                 id="instruction-missing-null-field"),
    pytest.param(_region, _set("image_width", "640"), "image_width: '640' is not of type", id="width-as-string"),
    pytest.param(_region, _set("image_height", 0), "image_height: 0 is less than the minimum", id="height-zero"),
    pytest.param(_region, _set("key", "textvqa-abc.def"), "key: 'textvqa-abc.def' does not match", id="dotted-key"),
    pytest.param(_region, _set("key", "TextVQA-abc"), "key: 'TextVQA-abc' does not match", id="uppercase-key"),
    pytest.param(_region, _set("source", "coco"), "source: 'coco' is not one of", id="unknown-source"),
    pytest.param(_region, _set("kind", "caption"), "kind: 'caption' is not one of", id="unknown-kind"),
    pytest.param(_region, _set("schema_version", 3), "schema_version: 3 is not one of [1, 2]", id="schema-version-3"),
    pytest.param(_region, _set("source_id", ""), "source_id: '' should be non-empty", id="empty-source-id"),
    pytest.param(_region, _set("region_blocks", [1, 2, 3]), "region_blocks: [1, 2, 3] is too short",
                 id="region-three-values"),
    pytest.param(_region, _set("region_blocks", [1, 2, 3.5, 4]), "region_blocks/2: 3.5 is not of type 'integer'",
                 id="region-float"),
    pytest.param(_region, _set("region_blocks", [-1, 0, 3, 3]), "region_blocks/0: -1 is less than the minimum",
                 id="region-negative"),
    pytest.param(_region, _set("boxes_xyxy_px", [[1, 2, 3]]), "boxes_xyxy_px/0: [1, 2, 3] is too short",
                 id="box-three-values"),
    pytest.param(_region, _set("boxes_xyxy_px", []), "boxes_xyxy_px: [] should be non-empty", id="no-boxes"),
    pytest.param(_region, _set("union_box_xyxy_px", [0, 0, "1", 1]), "union_box_xyxy_px/2: '1' is not of type",
                 id="union-string"),
    pytest.param(_region, _set("extra", 1), "'extra' was unexpected", id="unknown-field"),
    pytest.param(_region, _set("conversations", [{"from": "human", "value": "x"}]),
                 "conversations: [{'from': 'human', 'value': 'x'}] is too short", id="one-turn"),
    pytest.param(_instruction, lambda r: r["conversations"][0].__setitem__("from", "user"),
                 "conversations/0/from: 'user' is not one of", id="turn-from-user"),
    pytest.param(_instruction, lambda r: r["conversations"][1].pop("value"),
                 "conversations/1: 'value' is a required property", id="turn-without-value"),
    pytest.param(_instruction, _set("image", 3), "image: 3 is not of type", id="image-int"),
]


@pytest.mark.parametrize("make, mutate, fragment", SAMPLE_BROKEN)
def test_sample_schema_rejects_broken_record(make, mutate, fragment):
    rec = copy.deepcopy(make())
    mutate(rec)
    with pytest.raises(ContractError) as info:
        validate(rec, "sample")
    msg = str(info.value)
    assert fragment in msg
    assert msg.startswith("sample ")
    assert isinstance(info.value, ValueError)


def test_contract_error_names_the_record_key():
    rec = _region()
    rec["image_width"] = -3
    with pytest.raises(ContractError, match=f"sample {rec['key']} violates the contract"):
        validate(rec)


def test_contract_error_lists_every_violation():
    rec = _region()
    rec["image_width"] = "a"
    rec["image_height"] = "b"
    with pytest.raises(ContractError) as info:
        validate(rec)
    assert "image_width:" in str(info.value) and "image_height:" in str(info.value)


@pytest.mark.parametrize("field", ["region_blocks", "grid_size", "union_box_xyxy_px", "image"])
def test_region_record_requires_its_region_fields(field):
    rec = _region()
    rec[field] = None
    with pytest.raises(ContractError, match=field):
        validate(rec)


# ---------------------------------------------------------------------------------------------
# the other schemas
# ---------------------------------------------------------------------------------------------


def _shard_entry():
    return {
        "shard": "demo-000000.tar", "samples": 2, "bytes": 20480,
        "sha256": "ab" * 32, "per_source": {"textvqa": 1, "llava": 1},
        "per_kind": {"region": 1, "instruction": 1},
    }


def _shard_stats():
    return {"schema_version": 1, **_shard_entry(), "rejects": [_reject()], "sample_stats": {}}


def _manifest():
    return {
        "schema_version": 1, "name": "demo", "shards": [_shard_entry()],
        "totals": {"samples": 2, "bytes": 20480, "shards": 1, "per_source": {"textvqa": 1, "llava": 1},
                   "per_kind": {"region": 1, "instruction": 1}, "rejected": {"box_outside_image": 1},
                   "read": {"textvqa": 2, "llava": 1}},
        "recipe": {"name": "demo"},
        "inputs": [{"path": "textvqa_cot_train.jsonl", "bytes": 123, "sha256": "0" * 64}],
    }


def _stats():
    return {
        "schema_version": 1, "per_source": {"textvqa": 1}, "read": {"textvqa": 2},
        "rejected_by_reason": {"textvqa": {"box_outside_image": 1}}, "capped": {},
        "regions_by_area_blocks": {"16": 1}, "regions_by_shape": {"4x4": 1},
        "boxes": {"total": 2, "clipped": 0, "multi_box_records": 0, "merged_away": 0, "dropped_invalid": 1},
        "image_sizes": {"min_width": 640, "max_width": 640, "min_height": 480, "max_height": 480, "count": 1},
        "per_kind": {"region": 1}, "shortfall": {"textvqa": 0},
    }


def _reject():
    return {"source": "dude", "file": "dude_cot_train.jsonl", "line": 3, "id": None, "stage": "boxes",
            "reason": "box_outside_image", "detail": "box_outside_image: box [1700, 10, 2252, 20] ..."}


VALID = [
    pytest.param("shard_stats", _shard_stats, id="shard_stats"),
    pytest.param("manifest", _manifest, id="manifest"),
    pytest.param("stats", _stats, id="stats"),
    pytest.param("rejects", _reject, id="rejects"),
]


@pytest.mark.parametrize("name, make", VALID)
def test_other_schemas_accept_valid_records(name, make):
    validate(make(), name)


OTHER_BROKEN = [
    pytest.param("shard_stats", _shard_stats, _set("shard", "demo.tar"), "shard: 'demo.tar' does not match",
                 id="shard-name"),
    pytest.param("shard_stats", _shard_stats, _set("sha256", "XYZ"), "sha256: 'XYZ' does not match", id="sha256"),
    pytest.param("shard_stats", _shard_stats, _set("samples", -1), "samples: -1 is less than the minimum",
                 id="negative-samples"),
    pytest.param("shard_stats", _shard_stats, _drop("per_kind"), "'per_kind' is a required property",
                 id="missing-per-kind"),
    # shard stats embed rejects records by $ref (resolved through the registry of all schemas):
    # errors inside are reported with their path
    pytest.param("shard_stats", _shard_stats, lambda r: r["rejects"][0].__setitem__("reason", "oops"),
                 "rejects/0/reason: 'oops' is not one of", id="shard-nested-reject"),
    pytest.param("manifest", _manifest, lambda r: r["shards"][0].__setitem__("bytes", "big"),
                 "shards/0/bytes: 'big' is not of type 'integer'", id="manifest-nested-shard"),
    pytest.param("manifest", _manifest, lambda r: r["totals"].pop("rejected"),
                 "totals: 'rejected' is a required property", id="manifest-totals"),
    pytest.param("manifest", _manifest, lambda r: r["inputs"][0].__setitem__("sha256", "abc"),
                 "inputs/0/sha256: 'abc' does not match", id="manifest-input-sha"),
    pytest.param("stats", _stats, lambda r: r["boxes"].pop("clipped"), "boxes: 'clipped' is a required property",
                 id="stats-boxes"),
    pytest.param("stats", _stats, _set("schema_version", "1"), "schema_version: 1 was expected", id="stats-version"),
    pytest.param("rejects", _reject, _set("reason", "bad_luck"), "reason: 'bad_luck' is not one of",
                 id="reject-reason"),
    pytest.param("rejects", _reject, _set("stage", "upload"), "stage: 'upload' is not one of", id="reject-stage"),
    pytest.param("stats", _stats, lambda r: r["rejected_by_reason"].__setitem__("gqa", {"bad_luck": 1}),
                 "'bad_luck' is not one of", id="stats-reject-reason"),
    pytest.param("rejects", _reject, _set("line", 0), "line: 0 is less than the minimum", id="reject-line-0"),
    pytest.param("rejects", _reject, _drop("detail"), "'detail' is a required property", id="reject-no-detail"),
]


@pytest.mark.parametrize("name, make, mutate, fragment", OTHER_BROKEN)
def test_other_schemas_reject_broken_records(name, make, mutate, fragment):
    rec = make()
    mutate(rec)
    with pytest.raises(ContractError) as info:
        validate(rec, name)
    assert fragment in str(info.value)
    assert str(info.value).startswith(name + " ")


def test_schema_files_are_valid_versioned_json_schema():
    on_disk = sorted(
        p.name.removesuffix(".schema.json")
        for p in resources.files("schemas").iterdir()
        if p.name.endswith(".schema.json")
    )
    assert on_disk == sorted(schemas.NAMES)
    for name in schemas.NAMES:
        doc = _schema_doc(name)
        jsonschema.Draft202012Validator.check_schema(doc)
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        assert doc["$id"].endswith(f"/{name}/v1"), doc["$id"]
        if "schema_version" in doc["properties"]:  # every file but rejects carries the version
            want = ({"enum": list(contract.READABLE_SCHEMA_VERSIONS)} if name == "sample"  # sample: v1 + v2
                    else {"const": 1})  # manifest / stats: pipelines.summary.SCHEMA_VERSION
            assert doc["properties"]["schema_version"] == want, name


def test_unknown_schema_name_is_refused():
    with pytest.raises(KeyError, match="unknown schema 'samples'"):
        validate({}, "samples")


# ---------------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------------


def test_make_key_is_source_plus_sha256_prefix():
    sid = "COCO_train2014_000000123.jpg|What is on the plate?"
    expected = "gqa-" + hashlib.sha256(sid.encode("utf-8")).hexdigest()[:20]
    assert make_key("gqa", sid) == expected
    # non-ASCII ids are hashed as UTF-8
    sid2 = "café.jpg|¿Qué?"
    assert make_key("vsr", sid2) == "vsr-" + hashlib.sha256(sid2.encode("utf-8")).hexdigest()[:20]


def test_make_key_is_dot_free_and_independent_of_call_order():
    ids = [f"img_{i}.v2.jpg|q{i}." for i in range(50)]
    forward = {i: make_key("textvqa", i) for i in ids}
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    backward = {i: make_key("textvqa", i) for i in shuffled}
    assert forward == backward
    assert len(set(forward.values())) == len(ids)  # distinct ids, distinct keys
    assert all("." not in k and "/" not in k for k in forward.values())
    # the same id in two sources gives two keys
    assert make_key("textvqa", ids[0]) != make_key("textcap", ids[0])


def test_make_key_is_stable_across_processes():
    # hash() is salted per process; the key must not be.
    code = "from crop.contract import make_key; print(make_key('llava', '000000033471'))"
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout.strip())
    assert outs == {make_key("llava", "000000033471")}


@pytest.mark.parametrize("source", ["Text.VQA", "TextVQA", "", "-gqa"], ids=["dotted", "upper", "empty", "dash-first"])
def test_make_key_refuses_sources_that_give_bad_keys(source):
    with pytest.raises(ValueError, match="invalid key"):
        make_key(source, "x")


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------


def test_sample_features_match_the_schema():
    features = sample_features()
    assert set(features) == set(_schema_doc("sample")["properties"])
    assert list(features) == list(_region())


def test_records_round_trip_through_datasets_with_declared_features():
    from datasets import Dataset

    records = [_text_only(), _instruction(), _region()]
    ds = Dataset.from_list(records, features=sample_features())
    assert ds.to_list() == records


def test_datasets_inference_keeps_region_fields_after_instruction_rows():
    # The trap: with an instruction row first, inferred features must still hold the region keys.
    from datasets import Dataset

    records = [_text_only(), _region()]
    ds = Dataset.from_list(records)
    assert set(ds.column_names) == set(_region())
    assert ds[1]["region_blocks"] == [2, 2, 5, 5]
    assert ds[1]["boxes_xyxy_px"] == [[212.0, 150.0, 401.9, 333.2]]
