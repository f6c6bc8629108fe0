"""Each Beam transform alone, with TestPipeline + Create + assert_that."""

import json
import os

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import build
from pipelines.recipe import parse_recipe
from pipelines.sources import parse_llava_item

CONV = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
TEXT_CONV = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]  # no image: no <image> token
RECIPE = parse_recipe({"name": "t", "inputs": {"image_root": "/nonexistent"},
                       "sources": {"gqa": {"cap": 2}, "vsr": {}}, "llava": {"cap": 3},
                       "shards": {"name": "t", "max_samples": 2}})


def _gqa_line(i, **kw):
    rec = {"question": f"q{i}", "answer": "a", "image": f"{i}.jpg", "width": 80, "height": 80,
           "bboxs": [[0, 0, 10, 10]]}
    rec.update(kw)
    return json.dumps(rec)


def test_read_input_yields_lines_with_numbers_and_sources(tmp_path):
    p = tmp_path / "gqa_cot_train.jsonl"
    p.write_text(_gqa_line(0) + "\n\n" + _gqa_line(1) + "\n")
    lj = tmp_path / "llava.json"
    lj.write_text(json.dumps([{"id": 1, "conversations": TEXT_CONV}, {"id": "x", "conversations": TEXT_CONV}]))
    with BeamTestPipeline() as p_:
        out = (p_ | beam.Create([("cot_jsonl", "gqa", str(p)), ("llava_json", "llava", str(lj))])
               | beam.FlatMap(build.read_input) | beam.Map(lambda e: (e[0], e[1], e[2])))
        assert_that(out, equal_to([("gqa", "gqa_cot_train.jsonl", 1), ("gqa", "gqa_cot_train.jsonl", 3),
                                   ("llava", "llava.json", 1), ("llava", "llava.json", 2)]))


def test_read_input_fails_loudly_on_a_broken_json_list(tmp_path):
    import pytest

    lj = tmp_path / "llava.json"
    lj.write_text('[{"id": 1, "conversations": []}, {"id": 2, "conv')
    with pytest.raises(ValueError, match=r"llava.json: not a valid JSON list near element 2"):
        list(build.read_input(("llava_json", "llava", str(lj))))


def test_parse_splits_candidates_and_rejects():
    els = [("gqa", "gqa_cot_train.jsonl", 1, _gqa_line(1)),
           ("gqa", "gqa_cot_train.jsonl", 2, _gqa_line(2, bboxs=[])),
           ("llava", "l.json", 1, {"id": 5, "conversations": TEXT_CONV}),
           ("llava", "l.json", 2, {"id": 6})]
    with BeamTestPipeline() as p:
        res = p | beam.Create(els) | beam.ParDo(build.ParseFn(RECIPE)).with_outputs(build.REJECTS, main="ok")
        assert_that(res.ok | "k" >> beam.Map(lambda c: (c["source"], c["line"])),
                    equal_to([("gqa", 1), ("llava", 1)]), label="ok")
        assert_that(res[build.REJECTS] | "r" >> beam.Map(lambda r: (r["source"], r["line"], r["id"], r["reason"])),
                    equal_to([("gqa", 2, None, "empty_bboxs"), ("llava", 2, "6", "missing_field")]), label="rej")


def test_duplicates_meet_in_one_writer_first_by_file_and_line_wins(tmp_path):
    from PIL import Image

    root = tmp_path / "img"
    (root / "coco").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "coco" / "a.jpg")
    r = parse_recipe({"name": "t", "inputs": {"image_root": str(root)}, "sources": {}, "llava": {},
                      "shards": {"name": "t", "max_samples": 10}})
    a = parse_llava_item({"id": 7, "image": "coco/a.jpg", "conversations": CONV}, "b.json", 4, seed=0)
    b = parse_llava_item({"id": "7", "image": "coco/a.jpg", "conversations": CONV}, "a.json", 9, seed=0)
    assert a["key"] == b["key"] and a["sort_hash"] == b["sort_hash"]  # same rank, same shard
    with BeamTestPipeline() as p:
        stats = p | beam.Create([(0, [a, b])]) | beam.ParDo(build.WriteShardFn(r, str(tmp_path / "o")))
        assert_that(stats | beam.Map(lambda s: (s["samples"], [(j["file"], j["line"], j["reason"]) for j in s["rejects"]])),
                    equal_to([(1, [("b.json", 5, "duplicate_key")])]))


def test_select_counts_duplicates_once_for_the_cap():
    _, sel = build.select(("llava", [5, 1, 1, 9, 3]), RECIPE)  # cap 3 over distinct hashes 1, 3, 5
    assert list(sel["selected_hashes"]) == [1, 3, 5] and sel["available"] == 4
    assert sel["capped"] == 1  # only 9; the second 1 is a duplicate, rejected by the writer


def test_select_then_assign_caps_by_hash_and_deals_round_robin():
    cands = [parse_llava_item({"id": i, "conversations": TEXT_CONV}, "l.json", i, seed=0) for i in range(5)]
    expected = sorted(cands, key=lambda c: c["sort_hash"])[:3]  # bottom-3 by hash (cap 3)
    items = [build.Item(c["source"], c["sort_hash"], 0, c["line"], 0, 1).pack() for c in cands]
    key_of = {c["sort_hash"]: c["key"] for c in cands}
    with BeamTestPipeline() as p:
        cs = p | beam.Create(items)
        selection = (cs | beam.Map(lambda it: build.Item.unpack(it)[:2])
                     | beam.CombinePerKey(beam.combiners.ToListCombineFn()) | beam.Map(build.select, RECIPE))
        assigned = cs | beam.ParDo(build.AssignShardFn(2), beam.pvalue.AsDict(selection))
        # 3 selected, 2 per shard -> 2 shards; ranks 0,1,2 -> shards 0,1,0
        assert_that(assigned | beam.Map(lambda kv: (kv[0], key_of[build.Item.unpack(kv[1]).sort_hash])),
                    equal_to([(i % 2, c["key"]) for i, c in enumerate(expected)]))


def test_write_shard_reads_images_and_rejects_missing_ones(tmp_path):
    from PIL import Image

    root = tmp_path / "img"
    (root / "cot" / "gqa").mkdir(parents=True)
    Image.new("RGB", (80, 80), (1, 2, 3)).save(root / "cot" / "gqa" / "1.jpg")
    r = parse_recipe({"name": "t", "inputs": {"image_root": str(root)}, "sources": {"gqa": {}},
                      "shards": {"name": "t", "max_samples": 10}})
    good = build.ParseFn(r).process(("gqa", "gqa_cot_train.jsonl", 1, _gqa_line(1)))
    missing = build.ParseFn(r).process(("gqa", "gqa_cot_train.jsonl", 2, _gqa_line(2)))
    out = tmp_path / "out"
    with BeamTestPipeline() as p:
        stats = p | beam.Create([(0, [next(good), next(missing)])]) | beam.ParDo(build.WriteShardFn(r, str(out)))
        assert_that(stats | beam.Map(lambda s: (s["shard"], s["samples"], [j["reason"] for j in s["rejects"]])),
                    equal_to([("t-000000.tar", 1, ["missing_image"])]))
    assert sorted(os.listdir(out)) == ["t-000000.stats.json", "t-000000.tar"]


def test_prefetch_keeps_order_and_bounds_the_window():
    import threading
    import time

    running, peak, lock = [0], [0], threading.Lock()

    def slow_square(x):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.002 * (x % 3))
        with lock:
            running[0] -= 1
        return x * x

    out = list(build.prefetch(slow_square, list(range(50)), window=4, workers=8))
    assert out == [x * x for x in range(50)]
    assert 1 < peak[0] <= 4
