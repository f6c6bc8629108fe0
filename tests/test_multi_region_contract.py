"""Sample contract version 2 (issue 21): ``regions_blocks`` beside ``region_blocks``; version-1
records stay valid and load with the same features."""

from __future__ import annotations

import pytest

from crop import contract
from crop.contract import ContractError, region_record, regions_of, validate


def _multi(**over):
    kw = dict(source="gqa", source_id="img.jpg|Which is bigger, the cat or the dog?", source_file="gqa_cot_train.jsonl",
              image="gqa/img.jpg", image_width=80, image_height=80, question="Which is bigger, the cat or the dog?",
              answer="dog", boxes_xyxy_px=[[0, 0, 20, 15], [60, 0, 80, 15]], union_box_xyxy_px=[0, 0, 80, 15],
              region_blocks=[0, 0, 7, 1], regions_blocks=[[0, 0, 1, 1], [6, 0, 7, 1]], grid_size=8)
    kw.update(over)
    return region_record(**kw)


def _version1(rec):
    """What a shard written before version 2 holds: no regions_blocks key, version 1."""
    old = {k: v for k, v in rec.items() if k != "regions_blocks"}
    old["schema_version"] = 1
    return old


def test_multi_region_record_target_and_validity():
    rec = _multi()
    assert rec["schema_version"] == 2
    assert rec["conversations"][1]["value"] == "0 0 1 1; 6 0 7 1."
    assert rec["regions_blocks"] == [[0, 0, 1, 1], [6, 0, 7, 1]] and rec["region_blocks"] == [0, 0, 7, 1]
    validate(rec)
    assert regions_of(rec) == [[0, 0, 1, 1], [6, 0, 7, 1]]


def test_single_region_record_is_unchanged_apart_from_the_new_key():
    rec = _multi(boxes_xyxy_px=[[0, 0, 20, 15]], union_box_xyxy_px=[0, 0, 20, 15], region_blocks=[0, 0, 1, 1],
                 regions_blocks=None)
    assert rec["regions_blocks"] == [[0, 0, 1, 1]]
    assert rec["conversations"][1]["value"] == "0 0 1 1."  # the paper's template
    validate(rec)


def test_region_blocks_must_bound_the_regions():
    with pytest.raises(ValueError, match="not the bounding rectangle"):
        _multi(region_blocks=[0, 0, 7, 7])
    with pytest.raises(ValueError, match="empty"):
        _multi(regions_blocks=[])


def test_version_1_record_without_the_key_is_still_valid():
    old = _version1(_multi(regions_blocks=None, region_blocks=[0, 0, 7, 1]))
    validate(old)
    assert regions_of(old) == [[0, 0, 7, 1]]
    # a version-2 region record must carry the key, and as a list
    new = _multi()
    with pytest.raises(ContractError, match="'regions_blocks' is a required property"):
        validate({k: v for k, v in new.items() if k != "regions_blocks"})
    with pytest.raises(ContractError, match="regions_blocks: None is not of type 'array'"):
        validate({**new, "regions_blocks": None})
    with pytest.raises(ContractError, match="regions_blocks/1: \\[6, 0, 7\\] is too short"):
        validate({**new, "regions_blocks": [[0, 0, 1, 1], [6, 0, 7]]})
    with pytest.raises(ContractError, match="schema_version: 3 is not one of"):
        validate({**new, "schema_version": 3})


def test_instruction_records_have_null_regions():
    rec = contract.instruction_record(source_id="1", source_file="llava.json", image=None, image_width=None,
                                      image_height=None, conversations=[{"from": "human", "value": "hi"},
                                                                        {"from": "gpt", "value": "hello"}])
    assert rec["regions_blocks"] is None and regions_of(rec) is None
    validate(rec)


def test_old_and_new_shards_load_in_hf_datasets_with_the_declared_features(tmp_path):
    """A version-1 shard (no regions_blocks key) and a version-2 shard load together through the
    webdataset builder with ``shard_features()``: the old rows read regions_blocks as None."""
    import datasets
    from PIL import Image

    from crop.contract import shard_features
    from crop.data.synthetic_localization import write_shards

    image = Image.new("RGB", (80, 80), (90, 90, 90))
    old, new = _version1(_multi(regions_blocks=None)), _multi(source_id="other|q")
    files = write_shards([{"__key__": old["key"], "json": old, "image": image}], str(tmp_path), "old")
    files += write_shards([{"__key__": new["key"], "json": new, "image": image}], str(tmp_path), "new")
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                               features=shard_features(), cache_dir=str(tmp_path / "cache"))
    rows = {r["json"]["schema_version"]: r["json"] for r in ds}
    assert rows[1]["regions_blocks"] is None and rows[1]["region_blocks"] == [0, 0, 7, 1]
    assert rows[2]["regions_blocks"] == [[0, 0, 1, 1], [6, 0, 7, 1]]
    assert regions_of(rows[1]) == [[0, 0, 7, 1]] and regions_of(rows[2]) == [[0, 0, 1, 1], [6, 0, 7, 1]]
    assert rows[2] == new  # every field of the new record survives
