"""Regenerate the bundled demo corpus (committed; run only to change it).

    python pipelines/demo_corpus/make_demo.py

Writes, next to this file, a miniature of the real inputs (``shared/docs/formats.md``):
``viscot/<source>_cot_train.jsonl`` for ten Visual-CoT sources (Visual7W as ``visual7w_...``), ``llava/llava_v1_5_mix665k.json``,
``viscot_llava/viscot_363k.json`` (the alternative Visual-CoT input) and ``images/`` with JPEG and
PNG images of varied sizes drawn for the purpose (a coloured object or a word at a known place).
A few records are deliberately bad, one per rejects reason (``internal_error`` aside: it marks a
builder bug), so the demo build exercises them: hostile ones too (a lone surrogate, a folder, an
empty file and a decompression bomb at image paths, paths escaping the image root, LLaVA
conversations breaking LLaVA-1.5's conventions). Deterministic: the same script writes the same bytes.
"""

from __future__ import annotations

import json
import os
import random
import struct
import zlib

from PIL import Image, ImageDraw

from pipelines.recipe import metadata_file_names

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = {  # source -> (image folder under images/, per-source record count)
    "textvqa": ("cot/textvqa", 8), "textcap": ("cot/textvqa", 4), "flickr30k": ("cot/flickr30k", 8),
    "docvqa": ("cot/docvqa", 6), "gqa": ("cot/gqa", 8), "vsr": ("cot/vsr", 4),
    "openimages": ("cot/openimages", 6), "cub": ("cot/cub", 4), "v7w": ("cot/visual7w", 6),
    "dude": ("cot/dude", 4),
}
SIZES = [(320, 240), (240, 320), (333, 250), (400, 400), (500, 211), (257, 383), (640, 480), (199, 301)]
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (230, 210, 30)}


def draw_image(rng: random.Random, w: int, h: int, with_text: bool):
    img = Image.new("RGB", (w, h), tuple(rng.randrange(150, 250) for _ in range(3)))
    d = ImageDraw.Draw(img)
    name, colour = rng.choice(sorted(COLOURS.items()))
    bw, bh = rng.randrange(w // 8, w // 2), rng.randrange(h // 8, h // 2)
    x1, y1 = rng.randrange(0, w - bw), rng.randrange(0, h - bh)
    d.rectangle([x1, y1, x1 + bw, y1 + bh], fill=colour)
    if with_text:
        d.text((x1 + 2, y1 + 2), "CROP", fill=(0, 0, 0))
    return img, name, [float(x1), float(y1), float(x1 + bw), float(y1 + bh)]


def save(img, rel: str) -> None:
    path = os.path.join(HERE, "images", rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if rel.endswith(".png"):
        img.save(path, optimize=False)
    else:
        img.save(path, quality=80)


def main() -> None:
    rng = random.Random(0)
    os.makedirs(os.path.join(HERE, "viscot"), exist_ok=True)
    n_img = 0
    for source, (folder, count) in SOURCES.items():
        lines = []
        for i in range(count):
            w, h = SIZES[(n_img + i) % len(SIZES)]
            ext = "png" if i % 3 == 2 else "jpg"
            name = f"{source}_{i:03d}.{ext}"
            img, colour, box = draw_image(rng, w, h, with_text=source in ("textvqa", "textcap", "docvqa", "dude"))
            save(img, f"{folder}/{name}")
            rec = {"question": f"What colour is the box in the picture ({i})?", "answer": colour,
                   "image": name, "width": w, "height": h, "bboxs": [box],
                   "dataset": source, "split": "train"}
            if i == 1:  # several boxes, one leaving the image (clipped), merged into one union box
                rec["bboxs"] = [box, [box[0] / 2, box[1] / 2, w + 40.0, box[3]]]
            if source == "gqa":
                rec["full_answer"] = f"The box is {colour}."  # extra fields are not errors
            if source == "docvqa":
                rec["possible_answers"] = [colour]
            lines.append(json.dumps(rec))
            if source == "cub":  # CUB: a second question on the same image shares the box
                lines.append(json.dumps({**rec, "question": f"Is there a red bird ({i})?", "answer": "No"}))
        n_img += count
        if source == "openimages":  # an exact duplicate line: duplicate_key
            lines.append(lines[0])
        lines += BAD.get(source, [])
        with open(os.path.join(HERE, "viscot", metadata_file_names(source)[0]), "w") as f:
            f.write("\n".join(lines) + "\n")
    # A truncated JPEG and a PNG whose size disagrees with its record.
    img, _, _ = draw_image(rng, 300, 200, False)
    save(img, "cot/gqa/truncated.jpg")
    path = os.path.join(HERE, "images", "cot/gqa/truncated.jpg")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    img, _, _ = draw_image(rng, 120, 90, False)
    save(img, "cot/vsr/wrong_size.png")

    # LLaVA-1.5 instruction data: int and str ids, <image> first or last, text-only records.
    items = []
    for i in range(24):
        w, h = SIZES[i % len(SIZES)]
        folder = ["coco/train2017", "gqa/images", "textvqa/train_images"][i % 3]
        rid: object = 100000 + i if i % 2 else f"{i:09d}"
        if i % 6 == 5:
            items.append({"id": f"text-{i}", "model": "",
                          "conversations": [{"from": "human", "value": "Write a haiku about tokens."},
                                            {"from": "gpt", "value": "Few tokens remain / the region keeps what matters / the rest fades away"}]})
            continue
        img, colour, _ = draw_image(rng, w, h, False)
        save(img, f"{folder}/{i:06d}.jpg")
        q = "What colour is the box?\nAnswer the question using a single word or phrase."
        human = f"<image>\n{q}" if i % 4 else f"{q}\n<image>"
        items.append({"id": rid, "image": f"{folder}/{i:06d}.jpg",
                      "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": colour.capitalize()},
                                        {"from": "human", "value": "Is it large?"}, {"from": "gpt", "value": "No"}]})
    items += [
        {"id": "bad-conv", "image": "coco/train2017/000001.jpg", "conversations": [{"from": "system", "value": "x"}]},
        {"id": "no-image", "image": "coco/train2017/does_not_exist.jpg",
         "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Nothing"}]},
        {"id": 100001, "image": "gqa/images/000001.jpg",  # same id as an earlier record: duplicate key
         "conversations": [{"from": "human", "value": "<image>\nAgain?"}, {"from": "gpt", "value": "Yes"}]},
        {"image": "gqa/images/000001.jpg", "conversations": []},
        # LLaVA-1.5 conventions, one reason each, and paths escaping the image root.
        {"id": "gpt-first", "image": "coco/train2017/000003.jpg",
         "conversations": [{"from": "gpt", "value": "<image>\nHello"}, {"from": "human", "value": "Hi"}]},
        {"id": "two-image-tokens", "image": "coco/train2017/000003.jpg",
         "conversations": [{"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "Yes"}]},
        {"id": "token-in-second-turn", "image": "coco/train2017/000003.jpg",
         "conversations": [{"from": "human", "value": "Ready?"}, {"from": "gpt", "value": "Yes"},
                           {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red"}]},
        {"id": "text-only-with-token",
         "conversations": [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "What?"}]},
        {"id": "escapes-root", "image": "../llava/llava_v1_5_mix665k.json",
         "conversations": [{"from": "human", "value": "<image>\nRead?"}, {"from": "gpt", "value": "No"}]},
        {"id": "absolute-path", "image": "/etc/hostname",
         "conversations": [{"from": "human", "value": "<image>\nRead?"}, {"from": "gpt", "value": "No"}]},
    ]
    os.makedirs(os.path.join(HERE, "llava"), exist_ok=True)
    with open(os.path.join(HERE, "llava", "llava_v1_5_mix665k.json"), "w") as f:
        json.dump(items, f, indent=1)

    # Visual-CoT LLaVA-format alternative: boxes normalized to the padded square, pixel box after ###.
    vis = []
    for source in ("flickr30k", "gqa", "vsr"):
        folder = SOURCES[source][0]
        for i in range(3):
            w, h = SIZES[(i + len(source)) % len(SIZES)]
            img, colour, box = draw_image(rng, w, h, False)
            rel = f"{folder}/llavafmt_{i}.jpg"
            save(img, rel)
            s = max(w, h)
            dx, dy = ((0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
            norm = [round((box[0] + dx) / s, 3), round((box[1] + dy) / s, 3),
                    round((box[2] + dx) / s, 3), round((box[3] + dy) / s, 3)]
            q = "What colour is the box?"
            vis.append({"dataset": source, "split": "train", "question_id": len(vis) + 1,
                        "image": [rel, f"{rel}###[{int(box[0])}, {int(box[1])}, {int(box[2])}, {int(box[3])}]"],
                        "conversations": [
                            {"from": "human", "value": "<image>\n" + q + " Please provide the bounding box coordinate of the region that can help you answer the question better."},
                            {"from": "gpt", "value": json.dumps(norm)},
                            {"from": "human", "value": "<image>"},
                            {"from": "gpt", "value": colour}]})
    os.makedirs(os.path.join(HERE, "viscot_llava"), exist_ok=True)
    with open(os.path.join(HERE, "viscot_llava", "viscot_363k.json"), "w") as f:
        json.dump(vis, f, indent=1)
    hostile_files()


def _bomb_png(w: int, h: int) -> bytes:
    """A 1-bit PNG of w x h zero pixels: a few KB on disk, ``w * h`` pixels once decoded."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    rows = zlib.compress(b"\0" * ((w + 7) // 8 + 1) * h, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def hostile_files() -> None:
    """Image-path entries of the hostile records (no random draws: earlier images keep their bytes)."""
    gqa = os.path.join(HERE, "images", "cot", "gqa")
    os.makedirs(os.path.join(gqa, "folder.jpg"), exist_ok=True)  # a folder named like an image
    open(os.path.join(gqa, "folder.jpg", "README"), "w").write("a folder where an image path points\n")
    open(os.path.join(gqa, "empty.jpg"), "wb").close()
    open(os.path.join(gqa, "bomb.png"), "wb").write(_bomb_png(12_000, 9_000))  # 108M pixels > Pillow's 89.5M
    open(os.path.join(gqa, "not_an_image.jpg"), "wb").write(b"plain text named like a JPEG\n")
    img = Image.new("RGB", (96, 64), (30, 60, 220))
    path = os.path.join(gqa, "trailer.jpg")  # a valid JPEG followed by 6000 bytes after its end marker
    img.save(path, quality=80)
    open(path, "ab").write(b"TRAILER" * 860)


def _bad(**kw) -> str:
    base = {"question": "Which box?", "answer": "red", "image": "textvqa_000.jpg", "width": 320,
            "height": 240, "bboxs": [[10, 10, 50, 50]], "dataset": "textvqa", "split": "train"}
    base.update(kw)
    return json.dumps(base)


# One deliberately bad record per rejects reason, spread over sources.
BAD = {
    "textvqa": ['{"question": "broken json", ', json.dumps({"question": "Missing width", "answer": "a", "image": "textvqa_000.jpg",
                                                     "height": 240, "bboxs": [[1, 1, 5, 5]]})],
    "flickr30k": ['{"question": "NaN box", "answer": "x", "image": "flickr30k_000.jpg", "width": 320, '
                  '"height": 240, "bboxs": [[1, 2, NaN, 4]], "dataset": "flickr30k", "split": "train"}',
                  _bad(question="Mistyped height", image="flickr30k_000.jpg", height="240")],
    "docvqa": [_bad(question="Empty boxes", image="docvqa_000.jpg", bboxs=[])],
    "dude": [_bad(question="Outside", image="dude_000.jpg", width=320, height=240, bboxs=[[400, 10, 500, 50]]),
             _bad(question="Degenerate", image="dude_000.jpg", width=320, height=240, bboxs=[[100, 50, 100, 80]])],
    "gqa": [_bad(question="Missing image", image="no_such_file.jpg"),
            _bad(question="Truncated", image="truncated.jpg", width=300, height=200)],
    "vsr": [_bad(question="Wrong size", image="wrong_size.png", width=100, height=90)],
    "cub": [_bad(question="Three numbers", image="cub_000.jpg", bboxs=[[1, 2, 3]])],
    "openimages": [_bad(question="Inverted box", image="openimages_000.jpg", bboxs=[[50, 10, 20, 40]])],
}
# Hostile records (issue 15), one per new reason, plus a valid JPEG with a long trailer.
BAD["textvqa"].append(_bad(question="Lone surrogate \ud83d in the question"))  # json.dumps writes the \ud83d escape
BAD["docvqa"].append(_bad(question="Zero width", image="docvqa_000.jpg", width=0))
BAD["gqa"] += [
    _bad(question="A folder", image="folder.jpg"),
    _bad(question="An empty file", image="empty.jpg"),
    _bad(question="Escapes the image root", image="../../../viscot/gqa_cot_train.jsonl"),
    _bad(question="Decompression bomb", image="bomb.png", width=12000, height=9000),
    _bad(question="Not an image", image="not_an_image.jpg"),
    _bad(question="Long trailer after the end marker (valid)", answer="blue", image="trailer.jpg", width=96,
         height=64, bboxs=[[0, 0, 48, 32]]),
]
# Two boxes far apart (valid; issue 21): one union region under multi_box: union, two regions under
# multi_box: regions.
BAD["gqa"].append(_bad(question="Is the top-left box the same colour as the bottom-right one? (valid)",
                       answer="no", image="trailer.jpg", width=96, height=64, bboxs=[[0, 0, 20, 16], [72, 44, 96, 64]]))

if __name__ == "__main__":
    main()
