"""Trainer input: samples/s delivered to the training step with 0 vs N DataLoader workers.

    python benchmarks/trainer_input.py                      # both trainers, 0 vs 2 workers
    python benchmarks/trainer_input.py --workers 4 --samples 400 --trainer plc

What is measured is exactly what a trainer's step receives: the shard stream read through
:func:`crop.train.prefetch.epoch_items` (reading, JPEG decoding and the per-sample preparation in
the workers: tokenizing and the image processor), then the batch padded/stacked in the main
process (``crop.train.plc.stack`` / ``LocalizerCollator.stack``). No model runs, so the figure is
the ceiling the input side sets on a GPU that never waits.

* ``plc``: LLaVA-1.5's image processor (``CLIPImageProcessor`` with LLaVA-1.5's 336-px resize and
  centre crop, built from its class -- no download) after the pad-to-square view, the PLC context
  mask, and the tiny byte tokenizer;
* ``localizer``: the tiny Qwen2-VL localizer's encoder (the real ``Qwen2VLImageProcessor`` with
  the localizer's pixel bounds, chat template and labels).

Images are generated 640x480 JPEGs with noise (decode cost of a photo). The ratio N / 0 workers
is measured in one run; on a machine with C cores expect at most ~min(N, C)x (the training
process itself needs a core). Also printed: the training process's own CPU time per sample, the
input cost its thread pays (with workers: receiving and padding only). The load average is printed
before and after: figures on a busy machine mean little.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_shards(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` region samples (640x480 noisy JPEGs) in shards of 100."""
    import webdataset as wds
    from PIL import Image

    from crop.contract import region_record

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, 100):
        with wds.TarWriter(str(folder / f"bench-{start // 100:06d}.tar"), mtime=0) as sink:
            for i in range(start, min(n, start + 100)):
                base = rng.integers(0, 255, (1, 1, 3))
                pixels = np.clip(base + rng.normal(0, 40, (480, 640, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
                rec = region_record(source="vsr", source_id=str(i), source_file="bench.jsonl", image=f"{i}.jpg",
                                    image_width=640, image_height=480, question="Where is the object?",
                                    answer="left", boxes_xyxy_px=[[80, 60, 320, 240]],
                                    union_box_xyxy_px=[80, 60, 320, 240], region_blocks=[1, 1, 3, 3], grid_size=8)
                sink.write({"__key__": rec["key"], "json": json.dumps(rec).encode(), "jpg": buf.getvalue()})


def plc_input(shards: str, batch: int):
    """(stream, per-sample preparer, stack) of train-plc at LLaVA-1.5-7B's image geometry."""
    from transformers import CLIPImageProcessor

    from crop.models.llava_plc import byte_tokenizer
    from crop.train.plc import DataSection, SamplePreparer, shard_source, stack

    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                              image_mean=[0.48145466, 0.4578275, 0.40821073],
                              image_std=[0.26862954, 0.26130258, 0.27577711])
    data = DataSection(region_answer_suffix="")
    stream, _ = shard_source([shards], data)
    tok = byte_tokenizer()
    prep = SamplePreparer(data, tok, proc, image_token_id=259, num_image_tokens=68, grid_hw=(24, 24), tile_px=336)
    return stream, prep, lambda rows: stack(rows, tok.pad_token_id)


def localizer_input(shards: str, batch: int):
    """(stream, per-sample preparer, stack) of train-localizer with the tiny Qwen2-VL encoder."""
    from crop.models.localizer import TinySpec, build_tiny_localizer
    from crop.models.localizer_data import LocalizerCollator
    from crop.train.localizer_stream import read_shards

    loc = build_tiny_localizer(TinySpec())
    collate = LocalizerCollator(loc.encoder)
    stream = read_shards([shards], seed=0, shuffle=True, shuffle_buffer=64, pad=True)
    return stream, collate.one, collate.stack


def delivered(stream, prep, stack, workers: int, batch: int, limit: int) -> tuple[float, int, float]:
    """Samples/s of batches handed to the (absent) training step, how many, and the training
    process's own CPU milliseconds per sample (what the step's thread pays for its input)."""
    from crop.train.prefetch import epoch_items

    rows, n, t0, c0 = [], 0, time.perf_counter(), time.process_time()
    for _, row in epoch_items(stream, prep, 0, 0, num_workers=workers, prefetch_factor=4):
        item = row["item"]
        if "reject" in item:
            continue
        rows.append(item)
        if len(rows) == batch:
            stack(rows)
            n, rows = n + len(rows), []
        if n >= limit:
            break
    return n / (time.perf_counter() - t0), n, 1000 * (time.process_time() - c0) / max(n, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trainer", choices=("plc", "localizer", "both"), default="both")
    ap.add_argument("--workers", type=int, default=2, help="N in the 0 vs N comparison")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the main process only pads; workers get one thread each too
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_shards(Path(tmp) / "shards", args.samples)
        for trainer in (("plc", "localizer") if args.trainer == "both" else (args.trainer,)):
            build = plc_input if trainer == "plc" else localizer_input
            stream, prep, stack = build(str(Path(tmp) / "shards"), args.batch)
            rate0, n0, cpu0 = delivered(stream, prep, stack, 0, args.batch, args.samples)
            rate_n, n_n, cpu_n = delivered(stream, prep, stack, args.workers, args.batch, args.samples)
            results[trainer] = {"samples": n0, "workers_0_per_s": round(rate0, 1),
                                f"workers_{args.workers}_per_s": round(rate_n, 1), "ratio": round(rate_n / rate0, 2),
                                "main_cpu_ms_per_sample_0": round(cpu0, 2),
                                f"main_cpu_ms_per_sample_{args.workers}": round(cpu_n, 2)}
            print(f"{trainer:9s}  0 workers {rate0:7.1f} samples/s   {args.workers} workers {rate_n:7.1f} samples/s"
                  f"   ratio {rate_n / rate0:.2f}x   ({n0} / {n_n} samples); training process CPU per sample "
                  f"{cpu0:.2f} -> {cpu_n:.2f} ms")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
