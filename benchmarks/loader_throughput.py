"""Loader throughput: ShardStream vs a plain tarfile reader, HF datasets streaming and raw PIL decode.

    python benchmarks/loader_throughput.py                       # generate shards in a temp dir
    python benchmarks/loader_throughput.py --folder shards/demo  # or read a built dataset

One run measures, over the same shards and all their samples (samples/s, best of ``--repeat``):

* bytes only: a plain ``tarfile`` reader (every member read, grouped by key into one dict per
  sample, JSON parsed -- the least any consumer does, so it is the reference), ShardStream
  iterated in-process, ``ds.loader()`` DataLoaders with 0, 1 and 2 workers (batches of 32 through
  a collate that stacks the pixels into one uint8 tensor; compare the worker rows with the
  0-worker row, which pays the same collate), and
  ``datasets.load_dataset("webdataset", streaming=True)`` with decoding off;
* decode: the raw PIL rate (``Image.open(...).convert("RGB")`` on image bytes already in memory,
  the reference), the same ShardStream configurations with ``decode=True``, datasets streaming.

Each rate is given per wall-clock second and per CPU second (this process plus its DataLoader
workers). Targets (in-process, no workers): ShardStream bytes-only >= 0.9x the tarfile reader;
decode-bound >= 0.9x raw PIL. Ratios are within one run; absolute figures depend on the machine
and its load, which is printed before and after (time figures on a busy machine mean little).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crop.contract import region_record  # noqa: E402
from crop.data.stream import ShardStream, StreamConfig  # noqa: E402


IN_PROCESS = "ShardStream, in-process"


def make_image(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A photo-like JPEG: smooth gradients plus mild noise (compresses like real images)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, size=3)
    chans = [127 + 100 * np.sin(x / rng.uniform(20, 80) + y / rng.uniform(20, 80) + p) for p in phase]
    arr = np.stack(chans, -1) + rng.normal(0, 12, size=(height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate(folder: Path, shards: int, per_shard: int, width: int, height: int) -> list[str]:
    import webdataset as wds

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    pool = [make_image(rng, width, height) for _ in range(64)]  # reuse encodes: faster setup
    entries = []
    for s in range(shards):
        recs = []
        for j in range(per_shard):
            i = s * per_shard + j
            q = f"What is in picture {i}?"
            recs.append(region_record(
                source="textvqa", source_id=f"bench-{i}", source_file="bench.jsonl", image=f"b/{i}.jpg",
                image_width=width, image_height=height, question=q, answer="a thing", boxes_xyxy_px=[[0, 0, width, height]],
                union_box_xyxy_px=[0, 0, width, height], region_blocks=[0, 0, 7, 7], grid_size=8))
        name = f"bench-{s:06d}.tar"
        with wds.TarWriter(str(folder / name), encoder=False, mtime=1) as tw:
            for k, rec in enumerate(sorted(recs, key=lambda r: r["key"])):
                tw.write({"__key__": rec["key"], "json": json.dumps(rec).encode(),
                          "jpg": pool[(s * per_shard + k) % len(pool)]})
        entries.append({"shard": name, "samples": per_shard})
    (folder / "manifest.json").write_text(json.dumps({"name": "bench", "shards": entries}))
    return [str(folder / e["shard"]) for e in entries]


def tarfile_reader(paths: list[str]) -> int:
    """Reference: the plain ``tarfile`` way -- ``tarfile.open(path)`` (random access, compression
    detected), every regular member read with ``extractfile``, members grouped by key into one
    dict per sample (``{"__key__", ext: bytes}``), the JSON member parsed. That is the least any
    consumer of these shards does and exactly what ShardStream's bytes-only samples hold."""
    n = 0
    for p in paths:
        key, sample = None, None
        with tarfile.open(p) as tar:
            for info in tar:
                if not info.isreg():
                    continue
                k, ext = info.name.split(".", 1)
                if k != key:
                    n += sample is not None
                    key, sample = k, {"__key__": k}
                data = tar.extractfile(info).read()
                sample[ext] = json.loads(data) if ext == "json" else data
        n += sample is not None
    return n


def pil_decode(images: list[bytes]) -> int:
    for b in images:
        Image.open(io.BytesIO(b)).convert("RGB")
    return len(images)


def to_tensors(batch: list[dict]):
    """What a processor-like collate does in the worker: pixels to one uint8 tensor (B, H, W, 3).

    Shipping tensors (shared memory) rather than PIL images (pickled pixel copies) is how a real
    training collate returns decoded images from DataLoader workers.
    """
    import torch

    if batch[0]["image"] is None:
        return [s["__key__"] for s in batch]
    arrays = [np.asarray(s["image"]) for s in batch]
    if any(a.shape != arrays[0].shape for a in arrays):
        return [torch.from_numpy(a) for a in arrays]
    out = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8)  # (B, H, W, 3)
    if torch.utils.data.get_worker_info() is not None:
        out.share_memory_()  # filled in place: no extra copy when sent to the main process
    for i, a in enumerate(arrays):
        out.numpy()[i] = a
    return out


def stream_count(folder: str, decode: bool, workers: int | None, shuffle_buffer: int = 256) -> int:
    """Samples from ShardStream: iterated directly (``workers=None``), each sample dropped before
    the next is pulled as the references do (a consumer still holding the previous decoded image
    while the next is decoded would measure the allocator handing the decoder cold memory, not the
    loader); or through ``ds.loader(num_workers=workers)`` with the :func:`to_tensors` collate."""
    ds = ShardStream(folder, decode=decode, batch_size=32, seed=0, shuffle_buffer=shuffle_buffer)
    n = 0
    if workers is None:
        for sample in ds:
            n += 1
            del sample
        return n
    for batch in ds.loader(num_workers=workers, collate_fn=to_tensors):
        n += len(batch)
        del batch
    return n


def datasets_count(paths: list[str], decode: bool) -> int:
    import datasets
    from datasets import Features, Image as HFImage, Value, load_dataset

    from crop.contract import sample_features

    datasets.logging.set_verbosity_error()
    feats = Features({"__key__": Value("string"), "__url__": Value("string"),
                      "json": sample_features(), "jpg": HFImage()})
    ds = load_dataset("webdataset", data_files={"train": paths}, split="train", streaming=True,
                      features=feats)
    if not decode:
        ds = ds.decode(False)
    n = 0
    for ex in ds:
        if decode:
            ex["jpg"].convert("RGB")
        n += 1
    return n


def _cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (DataLoader workers are joined)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(configs: dict, repeat: int) -> dict:
    """Per config: best wall rate, best CPU rate, sample count, and the paired ratios.

    Repeats interleave the configs. Two ratios to the reference (the first config) are reported:
    best rate over best rate, and the median over repeats of the ratio within one repeat (a load
    spike from other jobs then hits a reader and its reference alike). A target counts as met
    only when both, for wall and CPU time, are. The CPU-time rate counts the workers' CPU too.
    """
    runs: dict = {name: [] for name in configs}   # name -> [(wall rate, cpu rate, n)]
    for _ in range(repeat):
        for name, fn in configs.items():
            t, c = time.perf_counter(), _cpu_seconds()
            n = fn()
            runs[name].append((n / (time.perf_counter() - t), n / max(_cpu_seconds() - c, 1e-9), n))
    ref = runs[next(iter(configs))]
    out = {}
    for name, rs in runs.items():
        paired_wall = statistics.median(r[0] / q[0] for r, q in zip(rs, ref))
        paired_cpu = statistics.median(r[1] / q[1] for r, q in zip(rs, ref))
        out[name] = (max(r[0] for r in rs), max(r[1] for r in rs), rs[0][2], paired_wall, paired_cpu)
        if len({r[2] for r in rs}) != 1:
            raise AssertionError(f"{name}: sample counts differ between repeats: {rs}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", help="existing dataset folder with manifest.json (default: generate)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=400)
    ap.add_argument("--size", default="384x288", help="generated image size WxH")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-datasets", action="store_true")
    ap.add_argument("--shuffle-buffer", type=int, default=StreamConfig.shuffle_buffer,
                    help="ShardStream's shuffle block (local shards: it holds member locations, the "
                         "bytes are read right before decoding, so its size should not matter)")
    ap.add_argument("--in-process-only", action="store_true",
                    help="only the references and ShardStream without workers (the targets)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    tmp = None
    if args.folder:
        folder = args.folder
        paths = [s.url for s in ShardStream(folder).shards]
    else:
        tmp = tempfile.TemporaryDirectory(prefix="crop-bench-")
        folder = tmp.name
        w, h = (int(v) for v in args.size.split("x"))
        paths = generate(Path(folder), args.shards, args.per_shard, w, h)
    images = [s["image_bytes"] for s in ShardStream(folder, shuffle=False) if s["image_bytes"]]
    total_bytes = sum(os.path.getsize(p) for p in paths)
    print(f"{len(paths)} shards, {len(images)} images, {total_bytes / 1e6:.1f} MB; shuffle buffer "
          f"{args.shuffle_buffer}; cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")

    bytes_cfg = {"tarfile reader (reference)": lambda: tarfile_reader(paths)}
    dec_cfg = {"raw PIL decode (reference)": lambda: pil_decode(images)}
    for workers in (None,) if args.in_process_only else (None, 0, 1, 2):
        name = IN_PROCESS if workers is None else f"DataLoader, {workers} workers"
        bytes_cfg[name] = lambda w=workers: stream_count(folder, False, w, args.shuffle_buffer)
        dec_cfg[name] = lambda w=workers: stream_count(folder, True, w, args.shuffle_buffer)
    if not (args.skip_datasets or args.in_process_only):
        bytes_cfg["datasets streaming"] = lambda: datasets_count(paths, False)
        dec_cfg["datasets streaming"] = lambda: datasets_count(paths, True)
    rows = []  # (mode, reader, wall rate, its two ratios, cpu rate, its two ratios)
    for mode, cfg in (("bytes", bytes_cfg), ("decode", dec_cfg)):
        best = measure(cfg, args.repeat)
        counts = {v[2] for v in best.values()}
        assert len(counts) == 1, f"readers disagree on the sample count: {best}"
        rw, rc = next(iter(best.values()))[:2]
        rows += [(mode, name, w, w / rw, pw, c, c / rc, pc) for name, (w, c, _, pw, pc) in best.items()]

    print(f"\n{'mode':<8}{'reader':<30}{'samples/s':>10}{'x ref':>7}{'paired':>7}"
          f"{'samples/CPU-s':>14}{'x ref':>7}{'paired':>7}")
    for mode, name, w, bw, pw, c, bc, pc in rows:
        print(f"{mode:<8}{name:<30}{w:>10.0f}{bw:>7.2f}{pw:>7.2f}{c:>14.0f}{bc:>7.2f}{pc:>7.2f}")
    print(f"(rates and 'x ref': best of {args.repeat}; 'paired': median over repeats of the ratio to "
          f"the reference run in the same repeat)\nload average after: {os.getloadavg()[0]:.2f}")
    for mode, label in (("bytes", "bytes-only vs tarfile reader"), ("decode", "decode vs raw PIL")):
        ratios = next(r for r in rows if r[0] == mode and r[1] == IN_PROCESS)
        worst = min(ratios[3], ratios[4], ratios[6], ratios[7])
        print(f"target {label} >= 0.90x: worst of the four ratios {worst:.2f}x -> "
              f"{'met' if worst >= 0.9 else 'NOT met'}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
