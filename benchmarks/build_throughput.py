"""Build throughput: the Beam pipeline vs a plain single-process loop, measured in one run.

    python benchmarks/build_throughput.py                 # 10k samples, ~100 KB JPEGs
    python benchmarks/build_throughput.py --samples 2000  # quicker
    python benchmarks/build_throughput.py --workers --reps 2   # 2 workers over 1 (issue 18)

Generates a synthetic Visual-CoT-style corpus (several questions per image, plus LLaVA
records), then runs, each in its own subprocess so peak memory is its own:

* ``pipeline``: ``pipelines.main.run`` on ``--runner Direct`` (in-memory mode by default);
* ``loop``: a plain Python loop that reads the same records, applies the same per-record
  functions (parse, box checks, image check, finalize) and writes equivalent tars with
  ``webdataset.TarWriter`` (no dedup, caps or mixing: the minimum a builder must do).

Both are run ``--reps`` times (rounded up to even) in ABBA order: loop, pipeline, pipeline, loop,
... On the project's shared machines a run is often 10-35% slower (CPU time included) right after a
run of the *other* mode, so per-rep ratios swing with the run order (0.73-1.41 seen). ABBA order
measures each mode equally often after each mode, and the headline ratio is the geometric mean of
the per-rep pipeline/loop wall ratios, in which that order effect cancels. Also printed: samples/s, MB/s,
CPU seconds and peak RSS (medians over reps), the ratio by CPU time (user + system, all threads),
and fastest run vs fastest run. Target: geometric-mean wall ratio >= 0.9.

``--workers``: the same corpus built with 1 and with 2 workers, in ABBA order, on Direct
``multi_processing`` and on the portable runner with a local SDK worker pool; prints the wall-time
ratio 1 worker / 2 workers for each. Target (issue 18): >= 1.5 on a 2-core machine. Measured
2026-12-07 on the project's 2-core machine, ``--workers --samples 40000 --image-kb 30 --reps 2``
(40 shards), load average 2.0 before / 1.8 after (other sessions): Direct multi_processing
21.8 s -> 11.7 s, **1.86x**; portable pool 20.3 s -> 12.3 s, **1.66x**. Under load 3-5 the same
command gave 1.11x / 1.08x: the two workers then share the cores with other sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SOURCES = ["gqa", "flickr30k", "textvqa", "docvqa", "openimages", "v7w"]


def make_corpus(root: str, n_samples: int, questions_per_image: int, kb: int) -> str:
    import numpy as np
    from PIL import Image

    rng = random.Random(0)
    nprng = np.random.default_rng(0)
    meta, images = os.path.join(root, "meta"), os.path.join(root, "images")
    os.makedirs(meta)
    n_llava = n_samples // 5
    n_region = n_samples - n_llava
    side = int((kb * 1024 / 1.6) ** 0.5)  # noisy JPEG q=90 ~1.6 bytes/pixel
    files = {s: open(os.path.join(meta, f"{s}_cot_train.jsonl"), "w") for s in SOURCES}
    n_img = 0
    for i in range(0, n_region, questions_per_image):
        s = SOURCES[n_img % len(SOURCES)]
        folder = os.path.join(images, "cot", s)
        os.makedirs(folder, exist_ok=True)
        w, h = side + rng.randrange(-40, 40), side + rng.randrange(-40, 40)
        Image.fromarray(nprng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(folder, f"{n_img}.jpg"), quality=90)
        for q in range(min(questions_per_image, n_region - i)):
            x1, y1 = rng.randrange(0, w - 20), rng.randrange(0, h - 20)
            files[s].write(json.dumps({"question": f"question {q} about image {n_img}?", "answer": "yes",
                                       "image": f"{n_img}.jpg", "width": w, "height": h,
                                       "bboxs": [[x1, y1, x1 + 20, y1 + 20]], "dataset": s,
                                       "split": "train"}) + "\n")
        n_img += 1
    for f in files.values():
        f.close()
    llava = []
    for i in range(n_llava):
        img = f"cot/{SOURCES[i % len(SOURCES)]}/{i % n_img if n_img else 0}.jpg"
        llava.append({"id": i, "image": img, "conversations": [
            {"from": "human", "value": "<image>\nDescribe it.\nAnswer the question using a single word or phrase."},
            {"from": "gpt", "value": "noise"}]})
    with open(os.path.join(root, "llava.json"), "w") as f:
        json.dump(llava, f)
    recipe = os.path.join(root, "bench.yaml")
    with open(recipe, "w") as f:
        f.write(f"name: bench\ninputs: {{visual_cot_dir: {meta}, llava_json: {root}/llava.json, "
                f"image_root: {images}}}\nsources: {{{', '.join(s + ': {}' for s in SOURCES)}}}\n"
                f"shards: {{name: bench, max_samples: 1000}}\n")
    return recipe


def run_pipeline(recipe: str, out: str, beam_args: list[str]) -> dict:
    from pipelines.main import run

    m = run(["--recipe", recipe, "--output", out, "--log-level", "WARNING", *beam_args])
    return {"samples": m["totals"]["samples"], "bytes": m["totals"]["bytes"]}


def run_loop(recipe_path: str, out: str) -> dict:
    """The plain baseline: same per-record work, one process, sequential tar writing."""
    import webdataset as wds

    from pipelines.build import list_inputs, read_input
    from pipelines.finalize import finalize
    from pipelines.images import ImageRoot, read_image
    from pipelines.recipe import VISUAL_COT_SOURCES, load_recipe
    from pipelines.sources import Rejected, parse_cot_line, parse_llava_item

    r = load_recipe(recipe_path)
    root = ImageRoot(r.inputs.image_root)
    os.makedirs(out)
    n, total, shard_i, sink = 0, 0, 0, None
    for spec in list_inputs(r):
        for source, file, line, payload in read_input(spec):
            try:
                if source == "llava":
                    c = parse_llava_item(payload, file, line - 1, seed=r.seed)
                else:
                    c = parse_cot_line(source, VISUAL_COT_SOURCES[source], file, line, payload,
                                       seed=r.seed, grid=r.grid_size, policy=r.multi_box)
                rel, data = read_image(root, c["image_dirs"], c["image_rel"]) if c["image_rel"] else (None, None)
                rec, ext, _ = finalize(c, rel, data, grid=r.grid_size, policy=r.multi_box,
                                       trailing_period=r.trailing_period, check=r.image_check)
            except Rejected:
                continue
            if sink is None or n % r.shard_max_samples == 0:
                if sink:
                    sink.close()
                sink = wds.TarWriter(os.path.join(out, f"loop-{shard_i:06d}.tar"), encoder=False, mtime=0)
                shard_i += 1
            sample = {"__key__": rec["key"], "json": json.dumps(rec, sort_keys=True).encode()}
            if data is not None:
                sample[ext] = data
            sink.write(sample)
            n += 1
    sink.close()
    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    return {"samples": n, "bytes": total}


def child(mode: str, recipe: str, out: str, beam_args: list[str]) -> None:
    t0 = time.perf_counter()
    res = run_pipeline(recipe, out, beam_args) if mode == "pipeline" else run_loop(recipe, out)
    res["seconds"] = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res["cpu_seconds"] = ru.ru_utime + ru.ru_stime
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def measure(mode: str, recipe: str, out: str, beam_args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--recipe", recipe, "--out", out, "--", *beam_args]
    # Start every run with no dirty pages left by the previous one: the loop does not fsync, so its
    # ~600 MB would otherwise be written back while the next run (often the pipeline) fsyncs.
    os.sync()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def compare_workers(recipe: str, tmp: str, reps: int) -> None:
    """2 workers over 1, measured in one run: Direct ``multi_processing`` and the portable
    runner on a local job service + SDK worker pool (``pipelines.job_service``). ABBA order per
    pair, as for the loop comparison; the headline is the geometric mean of per-rep ratios."""
    from pipelines.job_service import LocalCluster

    direct = ["--runner", "Direct", "--direct_running_mode", "multi_processing"]
    with LocalCluster(workers=1) as cluster:  # a job's --direct_num_workers 2 asks for 2
        pairs = {"Direct multi_processing": (direct + ["--direct_num_workers", "1"], direct + ["--direct_num_workers", "2"]),
                 "Portable, EXTERNAL worker pool": (cluster.beam_args, cluster.beam_args + ["--direct_num_workers", "2"])}
        results = {}
        for name, (one, two) in pairs.items():
            runs: dict[int, list[dict]] = {1: [], 2: []}
            for rep in range(reps):
                for n in ((1, 2) if rep % 2 == 0 else (2, 1)):
                    out = os.path.join(tmp, f"w{n}-{rep}")
                    runs[n].append(measure("pipeline", recipe, out, one if n == 1 else two))
                    shutil.rmtree(out, ignore_errors=True)
            results[name] = runs
            print(f"{name}: seconds per run, 1 worker: " + ", ".join(f"{r['seconds']:.1f}" for r in runs[1])
                  + "; 2 workers: " + ", ".join(f"{r['seconds']:.1f}" for r in runs[2]), flush=True)
    print(f"{'':<34}{'1 worker s':>11}{'2 workers s':>12}{'ratio':>7}  (2 workers over 1: geometric mean of ABBA reps)")
    for name, runs in results.items():
        ratio = statistics.geometric_mean(a["seconds"] / b["seconds"] for a, b in zip(runs[1], runs[2]))
        print(f"{name:<34}{statistics.median(r['seconds'] for r in runs[1]):>11.1f}"
              f"{statistics.median(r['seconds'] for r in runs[2]):>12.1f}{ratio:>7.2f}  (goal >= 1.5)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", action="store_true",
                    help="instead of pipeline vs loop: 2 workers over 1 (Direct multi_processing, portable pool)")
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--questions-per-image", type=int, default=4)
    ap.add_argument("--image-kb", type=int, default=100)
    ap.add_argument("--reps", type=int, default=6, help="runs of each in ABBA order (rounded up to even)")
    ap.add_argument("--child", choices=["pipeline", "loop"])
    ap.add_argument("--recipe")
    ap.add_argument("--out")
    args, beam_args = ap.parse_known_args()
    beam_args = [a for a in beam_args if a != "--"]
    if args.child:
        return child(args.child, args.recipe, args.out, beam_args)
    with tempfile.TemporaryDirectory() as tmp:
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        t0 = time.perf_counter()
        recipe = make_corpus(tmp, args.samples, args.questions_per_image, args.image_kb)
        print(f"corpus: {args.samples} samples, ~{args.image_kb} KB JPEGs, "
              f"{args.questions_per_image} questions/image, generated in {time.perf_counter() - t0:.1f} s")
        args.reps += args.reps % 2
        if args.workers:
            print(f"load average before: {load_before}; cores: {os.cpu_count()}")
            return compare_workers(recipe, tmp, args.reps)
        runs: dict[str, list[dict]] = {"loop": [], "pipeline": []}
        for rep in range(args.reps):
            order = ("loop", "pipeline") if rep % 2 == 0 else ("pipeline", "loop")
            for mode in order:
                out = os.path.join(tmp, f"{mode}-{rep}")
                runs[mode].append(measure(mode, recipe, out, [] if mode == "loop" else (beam_args or ["--runner", "Direct"])))
                shutil.rmtree(out, ignore_errors=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    loop, pipe = med["loop"], med["pipeline"]
    for mode, rs in runs.items():
        print(f"{mode} seconds per run (in order): " + ", ".join(f"{r['seconds']:.2f}" for r in rs))
    print(f"medians over {args.reps} ABBA runs each (load average before: {load_before})")
    print(f"{'':<22}{'samples':>8}{'seconds':>9}{'samples/s':>11}{'MB/s':>8}{'CPU s':>8}{'peak RSS MB':>13}")
    for name, r in (("plain loop", loop), ("pipeline (Direct)", pipe)):
        print(f"{name:<22}{r['samples']:>8.0f}{r['seconds']:>9.1f}{r['samples'] / r['seconds']:>11.0f}"
              f"{r['bytes'] / 1e6 / r['seconds']:>8.1f}{r['cpu_seconds']:>8.1f}{r['peak_rss_mb']:>13.0f}")
    wall = statistics.geometric_mean((p["samples"] / p["seconds"]) / (lp["samples"] / lp["seconds"])
                                     for p, lp in zip(runs["pipeline"], runs["loop"]))
    cpu = statistics.geometric_mean((p["samples"] / p["cpu_seconds"]) / (lp["samples"] / lp["cpu_seconds"])
                                    for p, lp in zip(runs["pipeline"], runs["loop"]))
    best = min(lp["seconds"] for lp in runs["loop"]) / min(p["seconds"] for p in runs["pipeline"])
    print(f"pipeline / loop throughput ratio (geometric mean over ABBA reps): {wall:.2f} by wall time "
          f"(target >= 0.90), {cpu:.2f} by CPU time; {best:.2f} fastest vs fastest; per-rep wall ratios "
          + ", ".join(f"{(p['samples'] / p['seconds']) / (lp['samples'] / lp['seconds']):.2f}"
                      for p, lp in zip(runs["pipeline"], runs["loop"])))

if __name__ == "__main__":
    main()
