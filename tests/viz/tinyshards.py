"""Tiny built-dataset folders for the card, publish and picture tests.

Writes what the Beam build writes (shards, per-shard stats, manifest.json, stats.json,
rejects.jsonl), every JSON document validated against ``schemas/`` so the tests exercise the real
contract. Records come from :mod:`crop.contract`; images are solid colours so pixel checks are
exact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter

import webdataset as wds
from PIL import Image

from crop.contract import instruction_record, region_record, validate

from crop.geometry import box_px_to_region, union_box, region_area

NAME = "tiny"
# (source, colour, ext, size, boxes px) of the region samples.
REGIONS = [
    ("textvqa", (200, 40, 40), "jpg", (160, 120), [[20.0, 15.0, 70.0, 44.0]]),
    ("gqa", (40, 40, 200), "png", (128, 96), [[64.0, 48.0, 127.0, 95.0], [70.0, 50.0, 90.0, 60.0]]),
    ("vsr", (40, 160, 40), "png", (96, 128), [[0.0, 0.0, 96.0, 128.0]]),
    ("docvqa", (230, 230, 230), "jpg", (200, 100), [[150.0, 10.0, 190.0, 30.0]]),
]


def image_bytes(colour, size, ext) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG" if ext == "png" else "JPEG", quality=95)
    return buf.getvalue()


def build_records():
    """``[(record, ext or None, image bytes or None)]``, sorted by key as the pipeline writes them."""
    out = []
    for i, (source, colour, ext, (w, h), boxes) in enumerate(REGIONS):
        union = list(union_box(boxes))
        region = box_px_to_region(union, w, h)
        question = f"What is in part {i} of the {source} image?"
        rec = region_record(
            source=source, source_id=f"{source}-{i}", source_file=f"{source}_cot_train.jsonl",
            image=f"cot/{source}/{i}.{ext}", image_width=w, image_height=h, question=question,
            answer=f"answer {i}", boxes_xyxy_px=boxes, union_box_xyxy_px=union, region_blocks=list(region), grid_size=8)
        out.append((rec, ext, image_bytes(colour, (w, h), ext)))
    text_only = instruction_record(
        source_id="42", source_file="llava_v1_5_mix665k.json", image=None, image_width=None,
        image_height=None, conversations=[{"from": "human", "value": "Write a haiku about tokens."},
                                          {"from": "gpt", "value": "Few tokens remain"}])
    with_image = instruction_record(
        source_id="coco-7", source_file="llava_v1_5_mix665k.json", image="coco/train2017/7.jpg",
        image_width=80, image_height=60,
        conversations=[{"from": "human", "value": "<image>\nWhat colour is it?"},
                       {"from": "gpt", "value": "Orange."}])
    out.append((text_only, None, None))
    out.append((with_image, "jpg", image_bytes((240, 140, 20), (80, 60), "jpg")))
    for rec, _, _ in out:
        validate(rec, "sample")
    return sorted(out, key=lambda t: t[0]["key"])


def _write_shard(path, samples):
    with open(path, "wb") as stream:
        with wds.TarWriter(stream, mtime=0) as w:
            for rec, ext, data in samples:
                sample = {"__key__": rec["key"], "json": json.dumps(rec, sort_keys=True).encode("utf-8")}
                if ext:
                    sample[ext] = data
                w.write(sample)


def make_dataset(folder, shards: int = 2, with_card: bool = False) -> dict:
    """Write a complete tiny build into ``folder``; return ``{"records", "manifest", "stats"}``."""
    os.makedirs(folder, exist_ok=True)
    samples = build_records()
    per_shard = [samples[i::shards] for i in range(shards)]
    shard_stats = []
    for i, part in enumerate(per_shard):
        part = sorted(part, key=lambda t: t[0]["key"])
        name = f"{NAME}-{i:06d}.tar"
        path = os.path.join(folder, name)
        _write_shard(path, part)
        data = open(path, "rb").read()
        st = {"schema_version": 1, "shard": name, "samples": len(part), "bytes": len(data),
              "sha256": hashlib.sha256(data).hexdigest(),
              "per_source": dict(Counter(r["source"] for r, _, _ in part)),
              "per_kind": dict(Counter(r["kind"] for r, _, _ in part)),
              "rejects": [], "sample_stats": {}}
        validate(st, "shard_stats")
        with open(os.path.join(folder, f"{NAME}-{i:06d}.stats.json"), "w") as f:
            json.dump(st, f)
        shard_stats.append({k: st[k] for k in ("shard", "samples", "bytes", "sha256", "per_source", "per_kind")})
    records = [r for r, _, _ in samples]
    regions = [r for r in records if r["kind"] == "region"]
    rejects = [
        {"source": "docvqa", "file": "docvqa_cot_train.jsonl", "line": 3, "id": None, "stage": "boxes",
         "reason": "box_outside_image", "detail": "x2 2252 > width 1700"},
        {"source": "docvqa", "file": "docvqa_cot_train.jsonl", "line": 9, "id": None, "stage": "boxes",
         "reason": "degenerate_box_after_clip", "detail": "zero width"},
        {"source": "gqa", "file": "gqa_cot_train.jsonl", "line": 5, "id": None, "stage": "parse",
         "reason": "malformed_json", "detail": "Expecting value"},
    ]
    rejected: dict = {}
    for r in rejects:
        validate(r, "rejects")
        rejected.setdefault(r["source"], Counter())[r["reason"]] += 1
    per_source = dict(Counter(r["source"] for r in records))
    stats = {
        "schema_version": 1, "per_source": per_source,
        "read": {s: c + sum(rejected.get(s, {}).values()) for s, c in per_source.items()},
        "rejected_by_reason": {s: dict(c) for s, c in rejected.items()},
        "capped": {"textvqa": 1}, "shortfall": {"vsr": 3},
        "per_kind": dict(Counter(r["kind"] for r in records)),
        "regions_by_area_blocks": dict(Counter(str(region_area(r["region_blocks"])) for r in regions)),
        "regions_by_shape": dict(Counter(
            f"{r['region_blocks'][2] - r['region_blocks'][0] + 1}x{r['region_blocks'][3] - r['region_blocks'][1] + 1}"
            for r in regions)),
        "boxes": {"total": 5, "clipped": 1, "multi_box_records": 1, "merged_away": 1, "dropped_invalid": 0},
        "image_sizes": {"min_width": 80, "max_width": 200, "min_height": 60, "max_height": 128, "count": 5},
    }
    validate(stats, "stats")
    recipe = {"name": NAME, "seed": 0, "grid_size": 8,
              "sources": {s: {"cap": (1 if s == "textvqa" else None)} for s, *_ in REGIONS},
              "llava": {"count": 2}}
    manifest = {
        "schema_version": 1, "name": NAME, "shards": shard_stats,
        "totals": {"samples": len(records), "bytes": sum(s["bytes"] for s in shard_stats),
                   "shards": len(shard_stats), "per_source": per_source,
                   "per_kind": dict(Counter(r["kind"] for r in records)),
                   "rejected": {s: sum(c.values()) for s, c in rejected.items()},
                   "read": stats["read"]},
        "recipe": recipe,
        "inputs": [{"input": "visual_cot_dir", "path": "textvqa_cot_train.jsonl", "bytes": 10, "sha256": "0" * 64}],
    }
    validate(manifest, "manifest")
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with open(os.path.join(folder, "stats.json"), "w") as f:
        json.dump(stats, f)
    with open(os.path.join(folder, "rejects.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rejects)
    if with_card:
        from crop.data.card import write_card

        write_card(str(folder), manifest, stats, recipe)
    return {"records": records, "samples": samples, "manifest": manifest, "stats": stats, "recipe": recipe}
