"""``crop eval-localizer``: how well a localizer finds the contextual region (paper App. D.3, Table 9).

Inputs: region samples from shards (e.g. a held-out split) or a Visual-CoT benchmark file
(formats.md section 2: the ground truth is the pixel box after ``###`` in ``image[1]``).
Outputs, in ``--output-dir``: ``predictions.jsonl`` (one row per sample: key, question, gt, pred,
raw text, parse status, area recall, IoU) and ``metrics.json``:

* ``area_recall_mean`` -- mean |GT ∩ Pred| / |GT| with the prediction as used downstream (a
  fallback is the whole image, whose recall is 1);
* ``area_recall_mean_fallback_as_zero`` -- the same with fallback predictions scored 0, because
  "whole image" always has recall 1 and would hide a model that cannot answer;
* ``recall_gt_0.5/0.7/0.9`` -- counts of samples with recall strictly greater than the threshold;
* ``iou_mean``, ``exact_match_rate``, ``parse_failures`` (answers the strict parser rejected) and
  ``fallbacks`` (answers neither parser could use).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator, Sequence

from crop.geometry import Region, area_recall, region_iou

THRESHOLDS = (0.5, 0.7, 0.9)
VISCOT_SUFFIX = " Please provide the bounding box coordinate of the region that can help you answer the question better."


def localization_metrics(gts: Sequence[Sequence[int]], preds: Sequence[Sequence[int]],
                         statuses: Sequence[str]) -> dict:
    """Pure metric computation over aligned lists (status: strict | lenient | fallback)."""
    if not (len(gts) == len(preds) == len(statuses)):
        raise ValueError(f"lengths differ: {len(gts)} gts, {len(preds)} preds, {len(statuses)} statuses")
    n = len(gts)
    recalls = [area_recall(g, p) for g, p in zip(gts, preds)]
    ious = [region_iou(g, p) for g, p in zip(gts, preds)]
    zeroed = [0.0 if s == "fallback" else r for r, s in zip(recalls, statuses)]
    mean = (lambda xs: sum(xs) / n if n else 0.0)
    out = {
        "samples": n,
        "area_recall_mean": mean(recalls),
        "area_recall_mean_fallback_as_zero": mean(zeroed),
        **{f"recall_gt_{t}": sum(r > t for r in recalls) for t in THRESHOLDS},
        "iou_mean": mean(ious),
        "exact_match_rate": mean([float(tuple(g) == tuple(p)) for g, p in zip(gts, preds)]),
        "parse_failures": sum(s != "strict" for s in statuses),
        "fallbacks": sum(s == "fallback" for s in statuses),
    }
    return out


def parse_viscot_row(row: dict, image_root: str, grid: int = 8) -> dict:
    """One Visual-CoT LLaVA-format benchmark row -> ``{key, question, image, gt}``.

    The question is the first human turn without ``<image>`` and Visual-CoT's bbox suffix; the
    ground truth is the pixel box after ``###`` (clipped, then mapped to blocks).
    """
    from PIL import Image

    from crop.geometry import box_px_to_region, clip_box

    qid = row.get("question_id", "?")
    images = row.get("image")
    if not isinstance(images, list) or len(images) < 2 or "###" not in images[1]:
        raise ValueError(f"Visual-CoT row {qid}: image field lacks the 'path###[x1, y1, x2, y2]' entry")
    path, _, box_text = images[1].partition("###")
    box = json.loads(box_text)
    question = row["conversations"][0]["value"].replace("<image>", "").strip()
    if question.endswith(VISCOT_SUFFIX.strip()):
        question = question[: -len(VISCOT_SUFFIX.strip())].strip()
    image = Image.open(os.path.join(image_root, path)).convert("RGB")
    w, h = image.size
    gt = box_px_to_region(clip_box(box, w, h), w, h, grid)
    return {"key": f"{row.get('dataset', 'viscot')}-{qid}", "question": question, "image": image, "gt": gt}


def iter_viscot(path: str, image_root: str, grid: int = 8) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    for row in rows:
        yield parse_viscot_row(row, image_root, grid)


def iter_shard_regions(specs: Sequence[str]) -> Iterator[dict]:
    """Region samples (with image) of shards -> ``{key, question, image, gt}``."""
    from crop.train.localizer_stream import iter_shard_samples

    for s in iter_shard_samples(specs):
        rec = s["json"]
        if rec.get("kind") != "region" or s["image"] is None:
            continue
        yield {"key": rec["key"], "question": rec["question"], "image": s["image"],
               "gt": Region(*rec["region_blocks"])}


def count_shard_regions(specs: Sequence[str]) -> int | None:
    """Region samples in the shards, from their ``.stats.json`` markers (``per_kind``), without
    reading any shard; None when a marker is missing (then the progress bar has no total)."""
    from crop.data.sources import open_url, resolve_shards

    total = 0
    for ref in resolve_shards(list(specs)):
        if not ref.url.endswith(".tar"):
            return None
        try:
            with open_url(ref.url[:-4] + ".stats.json") as f:
                total += int(json.load(f)["per_kind"].get("region", 0))
        except Exception:  # noqa: BLE001 - absent or unreadable marker: no total, not an error
            return None
    return total


def evaluate(localizer, samples: Iterator[dict], output_dir: str, batch_size: int = 8,
             limit: int = 0, extra: dict | None = None, total: int | None = None) -> dict:
    """Run ``localizer`` over samples, write predictions.jsonl and metrics.json; return metrics.

    ``total`` (samples, before ``limit``) gives the progress bar its end; log lines are routed
    around the bar so the two never share a line."""
    from itertools import islice

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from crop.models.localizer_cmd import batched

    os.makedirs(output_dir, exist_ok=True)
    gts, preds, statuses = [], [], []
    if limit:
        samples = islice(samples, limit)
        total = limit if total is None else min(total, limit)
    n_batches = None if total is None else -(-total // batch_size)
    with open(os.path.join(output_dir, "predictions.jsonl"), "w", encoding="utf-8") as out, logging_redirect_tqdm():
        for batch in tqdm(batched(samples, batch_size), desc="eval-localizer", unit="batch", total=n_batches,
                          dynamic_ncols=True):
            results = localizer.predict_detailed([b["image"] for b in batch], [b["question"] for b in batch])
            for b, p in zip(batch, results):
                gts.append(tuple(b["gt"]))
                preds.append(tuple(p.region))
                statuses.append(p.status)
                out.write(json.dumps({
                    "key": b["key"], "question": b["question"], "gt": list(b["gt"]),
                    "pred": list(p.region), "raw": p.raw, "status": p.status,
                    "area_recall": area_recall(b["gt"], p.region), "iou": region_iou(b["gt"], p.region),
                }) + "\n")
    metrics = localization_metrics(gts, preds, statuses)
    metrics.update(extra or {})
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def answer_token_losses(localizer, samples: Sequence[dict], batch_size: int = 32) -> list[float]:
    """Teacher-forced cross-entropy per answer position (mean over samples), for region samples.

    Position k is the k-th labelled token of the answer: for ``"x0 y0 x1 y1."`` + ``<|im_end|>``
    the first four are the coordinates and the rest the format tokens, so a trainer that only
    learned the format shows falling losses at the end and flat ones at the start.
    """
    import torch

    from crop.models.localizer_data import IGNORE_INDEX, LocalizerCollator

    collate = LocalizerCollator(localizer.encoder)
    model = localizer.model
    device = next(model.parameters()).device
    sums: list[float] = []
    counts: list[int] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = {k: v.to(device) for k, v in collate(samples[start:start + batch_size]).items()}
            labels = batch.pop("labels")  # (B, L)
            logits = model(**batch).logits.float()  # (B, L, V)
            # token t is predicted from position t - 1
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                reduction="none")  # (B, L - 1)
            for b in range(labels.shape[0]):
                answer = ce[b][labels[b, 1:] != IGNORE_INDEX].tolist()
                for k, v in enumerate(answer):
                    if k == len(sums):
                        sums.append(0.0)
                        counts.append(0)
                    sums[k] += v
                    counts[k] += 1
    model.train(was_training)
    return [s / c for s, c in zip(sums, counts)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="localizer folder or Hub id")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", nargs="+", help="shard tars, globs or dataset folders (held-out split)")
    src.add_argument("--viscot", help="Visual-CoT benchmark JSON file (formats.md section 2)")
    parser.add_argument("--image-root", default="", help="image root for --viscot paths")
    parser.add_argument("--output-dir", required=True, help="folder for predictions.jsonl and metrics.json")
    parser.add_argument("--batch-size", type=int, default=8, help="images per localizer call (default 8)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N samples (0 = all)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    from crop.models.localizer import Localizer

    if args.batch_size < 1 or args.limit < 0:
        raise ValueError("--batch-size must be >= 1 and --limit >= 0")
    if args.shards:
        total = count_shard_regions(args.shards)
        samples = iter_shard_regions(args.shards)
    else:
        with open(args.viscot, encoding="utf-8") as f:
            total = len(json.load(f))
        samples = iter_viscot(args.viscot, args.image_root)
    source = " ".join(args.shards) if args.shards else args.viscot
    print(f"eval-localizer: {'?' if total is None else total} region samples from {source}"
          f"{f' (first {args.limit})' if args.limit else ''} -> {args.output_dir}", file=sys.stderr)
    loc = Localizer.from_pretrained(args.model, device=args.device)
    extra = {"model": args.model, "input": args.shards or args.viscot}
    metrics = evaluate(loc, samples, args.output_dir, args.batch_size, args.limit, extra, total=total)
    print(json.dumps(metrics, indent=2))
    print(f"eval-localizer: wrote predictions.jsonl and metrics.json to {args.output_dir}", file=sys.stderr)
    return 0
