"""``crop predict-regions``: predict block regions for (image, question) pairs with a localizer.

Input: shard tars / dataset folders (samples with an image and a question), a JSONL file of
``{"image": path, "question": str, ...}`` rows, or one of LLaVA-1.5's question files as published
(:func:`question_rows`). Output: JSONL, one row per input in order:
``{"key", "question", "region_blocks", "raw", "status"}`` (status = strict | lenient | fallback),
plus ``regions_blocks`` (the regions in reading order; ``region_blocks`` is then their bounding
rectangle) when the localizer predicts several (``--max-regions``, or a localizer trained with
``max_regions`` > 1);
``key`` follows :mod:`crop.eval.keys`, so the file is a ``method.regions`` file for ``crop eval``;
rows also name their ``benchmark`` (``--benchmark``, or LLaVA's file name), so the outputs for
several question files can be concatenated into one regions file without key collisions.
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
                        help="shard tars, dataset folders, or one .jsonl file with image/question rows "
                             "(LLaVA-1.5 question files llava_*.jsonl / llava_test_CQM-A.json as they are)")
    parser.add_argument("--image-root", default="", help="prefix for relative image paths in a .jsonl input")
    parser.add_argument("--benchmark", help="write this benchmark name into every row (default: from LLaVA-1.5's "
                                            "question file name, e.g. llava_pope_test.jsonl -> pope), so the "
                                            "regions of several benchmarks can share one file")
    parser.add_argument("--output", required=True, help="output JSONL path")
    parser.add_argument("--batch-size", type=int, default=8, help="images per localizer call (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=12,
                        help="generation length; 'x0 y0 x1 y1.' needs ~9 tokens (default 12)")
    parser.add_argument("--max-regions", type=int, default=0,
                        help="regions per question (issue 21; default 0: what the localizer was trained with, "
                             "1 for other checkpoints); --max-new-tokens is then per region")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many samples (0 = all)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def question_rows(path: str) -> Iterator[dict]:
    """``{"key", "image", "question", "row"}`` per question of a JSON(L) input, images not loaded.

    Accepted: rows of ``{"image", "question"}`` (``key`` / ``question_id`` optional), or LLaVA-1.5's
    published question files as they are -- ``llava_*.jsonl`` (``question_id``, ``image``, ``text``:
    the question is the first line of ``text``) and ScienceQA's ``llava_test_CQM-A.json`` (problems
    without an image are skipped: they get no region). Keys follow :mod:`crop.eval.keys`, so a
    question file gives the same keys here as in ``crop eval`` (which reads it with
    :func:`crop.eval.prompts.load_questions`).
    """
    from crop.eval.keys import row_keys
    from crop.eval.prompts import load_questions
    from crop.eval.scorers.common import read_jsonl

    rows = read_jsonl(path) if path.endswith(".jsonl") else None
    if rows is not None and all("question" in r and "image" in r for r in rows):
        for row, key in zip(rows, row_keys(rows, path)):
            yield {"key": key, "question": row["question"], "image": row["image"], "row": row}
        return
    for item in load_questions("scienceqa" if path.endswith(".json") else "llava_jsonl", path):
        if item.image:
            yield {"key": item.key, "question": item.question, "image": item.image,
                   "row": {"question_id": item.question_id, "image": item.image}}


LLAVA_QUESTION_FILES = {"llava_gqa_": "gqa", "llava_textvqa_": "textvqa", "llava_pope_": "pope",
                        "llava_test_CQM-A": "scienceqa", "llava_mme": "mme", "llava_vqav2_": "vqav2"}


def benchmark_of(path: str) -> str | None:
    """The benchmark of one of LLaVA-1.5's question files, from its name; None for other inputs."""
    name = os.path.basename(path)
    return next((bench for prefix, bench in LLAVA_QUESTION_FILES.items() if name.startswith(prefix)), None)


def iter_jsonl_questions(path: str, image_root: str) -> Iterator[dict]:
    """:func:`question_rows` with each image loaded from ``image_root``."""
    from PIL import Image

    for q in question_rows(path):
        yield {**q, "image": Image.open(os.path.join(image_root, q["image"])).convert("RGB")}


def iter_inputs(inputs: list[str], image_root: str) -> Iterator[dict]:
    if len(inputs) == 1 and inputs[0].endswith((".jsonl", ".json")):
        yield from iter_jsonl_questions(inputs[0], image_root)
        return
    from crop.train.localizer_stream import iter_shard_samples

    for s in iter_shard_samples(inputs):
        rec = s["json"]
        if s["image"] is None or not rec.get("question"):
            continue
        yield {"key": rec["key"], "question": rec["question"], "image": s["image"], "row": rec}


def count_inputs(inputs: list[str]) -> int | None:
    """Questions :func:`iter_inputs` will yield, without loading images (None when unknown: shards
    whose ``.stats.json`` markers are missing)."""
    if len(inputs) == 1 and inputs[0].endswith((".jsonl", ".json")):
        return sum(1 for _ in question_rows(inputs[0]))
    from crop.eval.localization import count_shard_regions

    return count_shard_regions(inputs)


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

    from crop.models.paths import check_model_source

    check_model_source(args.model, "localizer")  # a typo fails before anything else is read
    total = count_inputs(args.input)
    if args.limit:
        total = args.limit if total is None else min(total, args.limit)
    print(f"predict-regions: {'?' if total is None else total} questions from {' '.join(args.input)} -> {args.output}",
          file=sys.stderr)
    loc = Localizer.from_pretrained(args.model, device=args.device, max_new_tokens=args.max_new_tokens,
                                    max_regions=getattr(args, "max_regions", 0) or None)
    samples = iter_inputs(args.input, args.image_root)
    if args.limit:
        samples = islice(samples, args.limit)
    n = 0
    bench = getattr(args, "benchmark", None) or (benchmark_of(args.input[0]) if len(args.input) == 1 else None)
    scope = {"benchmark": bench} if bench else {}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as out:
        bar = tqdm(total=total, desc="predict-regions", unit="question", dynamic_ncols=True)
        for batch in batched(samples, args.batch_size):
            preds = loc.predict_detailed([b["image"] for b in batch], [b["question"] for b in batch])
            for b, p in zip(batch, preds):
                several = {"regions_blocks": [list(r) for r in p.regions]} if loc.max_regions > 1 and p.regions else {}
                out.write(json.dumps({**scope, "key": b["key"], "question": b["question"],
                                      "region_blocks": list(p.region), **several, "raw": p.raw,
                                      "status": p.status}) + "\n")
                n += 1
            bar.update(len(batch))
        bar.close()
    print(f"predict-regions: wrote {n} predictions to {args.output}; parse statuses {loc.counts}", file=sys.stderr)
    return 0
