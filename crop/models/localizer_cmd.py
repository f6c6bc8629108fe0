"""``crop predict-regions``: predict block regions for (image, question) pairs with a localizer.

Input: shard tars / dataset folders (samples with an image and a question) or a JSONL file of
``{"image": path, "question": str, ...}`` rows. Output: JSONL, one row per input in order:
``{"key", "question", "region_blocks", "raw", "status"}`` (status = strict | lenient | fallback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="localizer folder or Hub id (e.g. a train-localizer output)")
    parser.add_argument("--input", required=True, nargs="+",
                        help="shard tars, dataset folders, or one .jsonl file with image/question rows")
    parser.add_argument("--image-root", default="", help="prefix for relative image paths in a .jsonl input")
    parser.add_argument("--output", required=True, help="output JSONL path")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--limit", type=int, default=0, help="stop after this many samples (0 = all)")
    parser.add_argument("--device", default=None)


def iter_jsonl_questions(path: str, image_root: str) -> Iterator[dict]:
    """Rows of ``{"image", "question"}`` -> samples with a loaded image (``key`` = row id or index)."""
    from PIL import Image

    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            for field in ("image", "question"):
                if field not in row:
                    raise ValueError(f"{path}:{i + 1}: row lacks {field!r}")
            image = Image.open(os.path.join(image_root, row["image"])).convert("RGB")
            yield {"key": str(row.get("key", row.get("question_id", i))), "question": row["question"],
                   "image": image, "row": row}


def iter_inputs(inputs: list[str], image_root: str) -> Iterator[dict]:
    if len(inputs) == 1 and inputs[0].endswith(".jsonl"):
        yield from iter_jsonl_questions(inputs[0], image_root)
        return
    from crop.train.localizer_stream import iter_shard_samples

    for s in iter_shard_samples(inputs):
        rec = s["json"]
        if s["image"] is None or not rec.get("question"):
            continue
        yield {"key": rec["key"], "question": rec["question"], "image": s["image"], "row": rec}


def batched(it, n: int):
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def run(args: argparse.Namespace) -> int:
    from itertools import islice

    from tqdm import tqdm

    from crop.models.localizer import Localizer

    loc = Localizer.from_pretrained(args.model, device=args.device, max_new_tokens=args.max_new_tokens)
    samples = iter_inputs(args.input, args.image_root)
    if args.limit:
        samples = islice(samples, args.limit)
    n = 0
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as out:
        for batch in tqdm(batched(samples, args.batch_size), desc="predict-regions", unit="batch"):
            preds = loc.predict_detailed([b["image"] for b in batch], [b["question"] for b in batch])
            for b, p in zip(batch, preds):
                out.write(json.dumps({"key": b["key"], "question": b["question"],
                                      "region_blocks": list(p.region), "raw": p.raw,
                                      "status": p.status}) + "\n")
                n += 1
    print(f"wrote {n} predictions to {args.output}; parse statuses {loc.counts}", file=sys.stderr)
    return 0
