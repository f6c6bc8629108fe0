"""Tiny, schema-valid built datasets for tests: shards + per-shard stats + manifest + stats + rejects.

``write_demo_shards(folder)`` lays out a folder exactly like the build pipeline does (issue 3):
``<name>-NNNNNN.tar`` with ``<key>.json`` (+ ``<key>.jpg|png``) members sorted by name, a
``<name>-NNNNNN.stats.json`` per shard, ``manifest.json``, ``stats.json`` and ``rejects.jsonl``.
Records come from ``crop.contract.region_record`` / ``instruction_record``; images are small
generated JPEG/PNG files whose size matches the record. Every key is unique across shards.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import webdataset as wds
from PIL import Image

from crop.contract import instruction_record, region_record

from crop.geometry import box_px_to_region

SOURCES = ("textvqa", "gqa", "docvqa", "vsr")
TAR_MTIME = 1_700_000_000


def image_bytes(width: int, height: int, ext: str, seed: int) -> bytes:
    """A small deterministic noise image encoded as ``ext`` (jpg or png)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if ext == "jpg" else "PNG")
    return buf.getvalue()


def make_sample(i: int, width: int = 40, height: int = 30) -> tuple[dict, bytes | None, str | None]:
    """Sample number ``i``: two region samples, then an instruction one (every 4th text-only)."""
    ext = "jpg" if i % 2 == 0 else "png"
    if i % 3 != 2:
        source = SOURCES[i % len(SOURCES)]
        box = [float(i % 7), float(i % 5), float(10 + i % 25), float(8 + i % 20)]
        region = box_px_to_region(box, width, height)
        question = f"What is shown in part {i}?"
        rec = region_record(
            source=source, source_id=f"img{i}.{ext}|{question}", source_file=f"{source}_cot_train.jsonl",
            image=f"{source}/img{i}.{ext}", image_width=width, image_height=height, question=question,
            answer=f"answer {i}", boxes_xyxy_px=[box], union_box_xyxy_px=box, region_blocks=list(region), grid_size=8)
        return rec, image_bytes(width, height, ext, i), ext
    text_only = i % 4 == 3
    rec = instruction_record(
        source_id=str(100000 + i), source_file="llava_v1_5_mix665k.json",
        image=None if text_only else f"coco/train2017/{i:012d}.{ext}",
        image_width=None if text_only else width, image_height=None if text_only else height,
        conversations=[{"from": "human", "value": ("" if text_only else "<image>\n") + f"Describe item {i}."},
                       {"from": "gpt", "value": f"It is item {i}."},
                       {"from": "human", "value": "And its colour?"},
                       {"from": "gpt", "value": "Grey."}])
    if text_only:
        return rec, None, None
    return rec, image_bytes(width, height, ext, i), ext


def write_tar(path: Path, samples: Sequence[tuple[dict, bytes | None, str | None]]) -> dict:
    """Write samples (sorted by key, as the pipeline does) and return ``{"bytes", "sha256"}``."""
    with wds.TarWriter(str(path), encoder=False, mtime=TAR_MTIME, user="crop", group="crop",
                       mode=0o644) as tw:
        for rec, data, ext in sorted(samples, key=lambda s: s[0]["key"]):
            sample = {"__key__": rec["key"],
                      "json": json.dumps(rec, sort_keys=True, ensure_ascii=False).encode("utf-8")}
            if data is not None:
                sample[ext] = data
            tw.write(sample)
    raw = path.read_bytes()
    return {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def _sample_stats(records: Sequence[dict]) -> dict:
    by_area: dict[str, int] = {}
    by_shape: dict[str, int] = {}
    sizes = [(r["image_width"], r["image_height"]) for r in records if r["image_width"] is not None]
    for r in records:
        if r["region_blocks"] is not None:
            x0, y0, x1, y1 = r["region_blocks"]
            w, h = x1 - x0 + 1, y1 - y0 + 1
            by_area[str(w * h)] = by_area.get(str(w * h), 0) + 1
            by_shape[f"{w}x{h}"] = by_shape.get(f"{w}x{h}", 0) + 1
    n_boxes = sum(len(r["boxes_xyxy_px"]) for r in records if r["boxes_xyxy_px"])
    return {"regions_by_area_blocks": by_area, "regions_by_shape": by_shape,
            "boxes": {"total": n_boxes, "clipped": 0, "multi_box_records": 0, "merged_away": 0,
                      "dropped_invalid": 0},
            "image_sizes": {"min_width": min((w for w, _ in sizes), default=None),
                            "max_width": max((w for w, _ in sizes), default=None),
                            "min_height": min((h for _, h in sizes), default=None),
                            "max_height": max((h for _, h in sizes), default=None),
                            "count": len(sizes)}}


def _count(records: Sequence[dict], field: str) -> dict:
    out: dict[str, int] = {}
    for r in records:
        out[r[field]] = out.get(r[field], 0) + 1
    return dict(sorted(out.items()))


def write_demo_shards(folder, n_shards: int = 3, per_shard: int | Sequence[int] = 6,
                      name: str = "demo", width: int = 40, height: int = 30) -> list[Path]:
    """Write a small built dataset into ``folder`` and return the shard paths in manifest order.

    ``per_shard`` is one count for every shard or one count per shard (uneven shards).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts = [per_shard] * n_shards if isinstance(per_shard, int) else list(per_shard)
    if len(counts) != n_shards:
        raise ValueError(f"per_shard has {len(counts)} counts for {n_shards} shards")
    paths, shard_stats, all_records = [], [], []
    i = 0
    for s, n in enumerate(counts):
        samples = [make_sample(i + j, width, height) for j in range(n)]
        i += n
        path = folder / f"{name}-{s:06d}.tar"
        info = write_tar(path, samples)
        records = [rec for rec, _, _ in samples]
        all_records += records
        stats = {"schema_version": 1, "shard": path.name, "samples": n, **info,
                 "per_source": _count(records, "source"), "per_kind": _count(records, "kind"),
                 "rejects": [], "sample_stats": _sample_stats(records)}
        (folder / f"{name}-{s:06d}.stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
        shard_stats.append(stats)
        paths.append(path)
    reject = {"source": "gqa", "file": "gqa_cot_train.jsonl", "line": 3, "id": None, "stage": "boxes",
              "reason": "empty_bboxs", "detail": "bboxs is an empty list"}
    per_source = _count(all_records, "source")
    read = dict(per_source)
    read["gqa"] = read.get("gqa", 0) + 1
    core = ("shard", "samples", "bytes", "sha256", "per_source", "per_kind")
    manifest = {
        "schema_version": 1, "name": name,
        "shards": [{k: st[k] for k in core} for st in shard_stats],
        "totals": {"samples": len(all_records), "bytes": sum(st["bytes"] for st in shard_stats),
                   "shards": n_shards, "per_source": per_source, "per_kind": _count(all_records, "kind"),
                   "rejected": {"gqa": 1}, "read": dict(sorted(read.items()))},
        "recipe": {"name": name, "grid_size": 8},
        "inputs": [],
    }
    stats = {"schema_version": 1, "per_source": per_source, "per_kind": _count(all_records, "kind"),
             "read": dict(sorted(read.items())), "rejected_by_reason": {"gqa": {"empty_bboxs": 1}},
             "capped": {}, "shortfall": {}, **_sample_stats(all_records)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (folder / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    (folder / "rejects.jsonl").write_text(json.dumps(reject, sort_keys=True) + "\n")
    return paths
