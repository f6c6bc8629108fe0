"""The shipped paper recipe (Table 1 mix) on a fake corpus scaled down 1:2000."""

import json
import os

import yaml
from PIL import Image

from pipelines.main import run
from pipelines.recipe import VISUAL_COT_SOURCES, metadata_file_names
from pipeline_support import REPO

SCALE = 2000
REAL_COUNTS = {"flickr30k": 135735, "gqa": 98149, "openimages": 43053, "docvqa": 33453, "textcap": 32152,
               "v7w": 30491, "textvqa": 18524, "infographicsvqa": 15055, "dude": 11735, "cub": 10056,
               "vsr": 3376, "sroie": 2486}


def test_paper_recipe_scaled_down(tmp_path):
    corpus, images = tmp_path / "meta", tmp_path / "images"
    corpus.mkdir()
    available = {s: max(2, round(n / SCALE)) for s, n in REAL_COUNTS.items()}
    for source, n in available.items():
        folder = images / VISUAL_COT_SOURCES[source][-1]  # v7w via its second spelling, cot/visual7w
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (9, 9, 9)).save(folder / f"{source}.jpg")
        with open(corpus / metadata_file_names(source)[0], "w") as f:  # Visual7W: visual7w_cot_train.jsonl
            for i in range(n):
                f.write(json.dumps({"question": f"q{i}", "answer": "a", "image": f"{source}.jpg", "width": 64,
                                    "height": 48, "bboxs": [[i % 60, 0, i % 60 + 4, 8]], "dataset": source}) + "\n")
    (images / "coco").mkdir()
    Image.new("RGB", (32, 32)).save(images / "coco" / "x.jpg")
    llava = [{"id": i, "image": "coco/x.jpg", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                                {"from": "gpt", "value": "a"}]} for i in range(400)]
    (tmp_path / "llava.json").write_text(json.dumps(llava))

    paper = yaml.safe_load(open(os.path.join(REPO, "recipes", "paper-610k.yaml")))
    for spec in list(paper["sources"].values()) + [paper["llava"]]:
        if spec.get("cap"):
            spec["cap"] = max(1, round(spec["cap"] / SCALE))
    paper["shards"]["max_samples"] = 40
    recipe = tmp_path / "paper-small.yaml"
    recipe.write_text(yaml.safe_dump(paper))
    manifest = run(["--recipe", str(recipe), "--output", str(tmp_path / "out"), "--log-level", "WARNING",
                    "--visual-cot-dir", str(corpus), "--llava-json", str(tmp_path / "llava.json"),
                    "--image-root", str(images)])
    written = manifest["totals"]["per_source"]
    for source, spec in paper["sources"].items():
        want = min(spec["cap"], available[source]) if spec.get("cap") else available[source]
        assert written[source] == want, source
    assert written["llava"] == paper["llava"]["cap"] == 100
    stats = json.load(open(tmp_path / "out" / "stats.json"))
    expected_short = {s: spec["cap"] - available[s] for s, spec in paper["sources"].items()
                      if spec.get("cap") and spec["cap"] > available[s]}
    assert stats["shortfall"] == expected_short
    assert stats["capped"] == {s: available[s] - spec["cap"] for s, spec in paper["sources"].items()
                               if spec.get("cap") and spec["cap"] < available[s]} | {"llava": 400 - 100}
    n_shards = len(manifest["shards"])
    assert n_shards == -(-manifest["totals"]["samples"] // 40)
    assert all(s["per_kind"].get("instruction", 0) >= 100 // n_shards for s in manifest["shards"])
