"""Shared constants and helpers of the pipeline tests (imported as a sibling module)."""

import os
import shutil

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_RECIPE = os.path.join(REPO, "recipes", "demo.yaml")


def copy_tree_bytes(folder):
    """{file name: bytes} of every file in a build folder."""
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def copy_demo_corpus(tmp_path):
    """A writable copy of the demo corpus and a recipe pointing at it."""
    src = os.path.join(REPO, "pipelines", "demo_corpus")
    dst = tmp_path / "corpus"
    shutil.copytree(src, dst)
    recipe = open(DEMO_RECIPE).read().replace("../pipelines/demo_corpus", str(dst))
    path = tmp_path / "demo.yaml"
    path.write_text(recipe)
    return dst, str(path)


def make_mixed_corpus(root, n_records: int, shard_max_samples: int = 250) -> str:
    """A generated corpus of ``n_records`` (Visual-CoT JSONL for gqa and textvqa, a LLaVA JSON
    list, tiny images), with ~3% bad records (malformed JSON, empty boxes, missing images, a
    duplicated LLaVA id) so rejects and dedup cross the workers too. Returns a recipe path."""
    import json
    import random

    from PIL import Image

    rng = random.Random(7)
    root = str(root)
    meta, images = os.path.join(root, "meta"), os.path.join(root, "images")
    os.makedirs(meta)
    for source, folder in (("gqa", "cot/gqa"), ("textvqa", "cot/textvqa")):
        os.makedirs(os.path.join(images, folder))
        for i in range(8):
            Image.new("RGB", (40 + i, 30), (i * 20, 60, 90)).save(os.path.join(images, folder, f"{i}.jpg"))
    os.makedirs(os.path.join(images, "coco"))
    for i in range(8):
        Image.new("RGB", (32, 24 + i), (10, i * 25, 40)).save(os.path.join(images, "coco", f"{i}.png"))
    n_cot = n_records // 3
    for source in ("gqa", "textvqa"):
        with open(os.path.join(meta, f"{source}_cot_train.jsonl"), "w") as f:
            for i in range(n_cot):
                k = i % 8
                rec = {"question": f"{source} question {i}?", "answer": f"answer {i}", "image": f"{k}.jpg",
                       "width": 40 + k, "height": 30, "bboxs": [[1, 2, 10 + i % 20, 12 + i % 15]]}
                bad = rng.random()
                if bad < 0.01:
                    f.write("{not json\n")
                    continue
                if bad < 0.02:
                    rec["bboxs"] = []
                elif bad < 0.03:
                    rec["image"] = "missing.jpg"
                f.write(json.dumps(rec) + ("\n\n" if i % 97 == 0 else "\n"))
    llava = []
    for i in range(n_records - 2 * n_cot):
        rec = {"id": f"{i:07d}", "image": f"coco/{i % 8}.png", "conversations": [
            {"from": "human", "value": f"<image>\nWhat is shown in picture {i}?"}, {"from": "gpt", "value": "Colors."}]}
        if i % 50 == 0:
            rec = {"id": i, "conversations": [{"from": "human", "value": f"text only {i}"}, {"from": "gpt", "value": "ok"}]}
        if i % 301 == 0:
            rec["id"] = "0000001"  # duplicate key
        llava.append(rec)
    with open(os.path.join(root, "llava.json"), "w") as f:
        json.dump(llava, f, indent=1)
    recipe = os.path.join(root, "mixed.yaml")
    with open(recipe, "w") as f:
        f.write(f"name: mixed\ninputs: {{visual_cot_dir: {meta}, llava_json: {root}/llava.json, image_root: {images}}}\n"
                f"sources: {{gqa: {{}}, textvqa: {{cap: {n_cot // 2}}}}}\nllava: {{}}\n"
                f"shards: {{name: mixed, max_samples: {shard_max_samples}}}\n")
    return recipe
