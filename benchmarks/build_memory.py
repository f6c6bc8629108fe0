"""Peak memory of the main job against corpus size: LLaVA-format input at several sizes.

    nice python benchmarks/build_memory.py                          # 50k, 100k, 200k records
    nice python benchmarks/build_memory.py --sizes 50000,200000,665000
    nice python benchmarks/build_memory.py --images 0               # text-only records

For each size, generates a ``llava_v1_5_mix665k.json``-style list (conversations of 1-5 turn
pairs, ~1.3 KB per record like the real file; every record names one of ``--images`` small
JPEGs, so shards carry image bytes) and runs ``pipelines.main.run`` in a fresh subprocess on
``--runner Direct`` (in-memory by default; other Beam flags pass through), which reports its
own peak RSS (``ru_maxrss``). Printed: records, seconds, peak RSS per size, and the growth in
bytes per record between consecutive sizes and between the smallest and largest (the slope is
what matters: the intercept is Beam's and Python's own footprint). Goal (issue 18): <= 1.5 GB
at 665k records and well under 1 KB per record. Measured 2026-12-07 (``--sizes
50000,200000,665000``, 2-core machine, load 5-6 from other sessions): 232 / 290 / 443 MB, 361 bytes
per record from 50k to 665k (before issue 18: 581 MB at 50k, 1.69 GB at 200k, ~8 KB per record).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

WORDS = ("the a man woman dog street car red blue sign table two three left right image picture shows "
         "what is on of in color people building sky water tree holding wearing standing").split()


def write_llava(path: str, n: int, n_images: int, seed: int = 0) -> None:
    """Stream ``n`` LLaVA-1.5 records to ``path`` (valid by LLaVA's conventions)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        f.write("[")
        for i in range(n):
            turns = []
            for t in range(rng.choice((1, 1, 2, 3, 5))):
                q = " ".join(rng.choices(WORDS, k=rng.randint(6, 30))) + "?"
                a = " ".join(rng.choices(WORDS, k=rng.randint(4, 110))) + "."
                turns += [{"from": "human", "value": ("<image>\n" if t == 0 and n_images else "") + q},
                          {"from": "gpt", "value": a}]
            rec = {"id": f"{i:012d}", "conversations": turns}
            if n_images:
                rec["image"] = f"coco/train2017/{i % n_images:012d}.jpg"
            f.write(("," if i else "") + json.dumps(rec))
        f.write("]")


def write_images(root: str, n_images: int) -> None:
    from PIL import Image

    folder = os.path.join(root, "coco", "train2017")
    os.makedirs(folder, exist_ok=True)
    for i in range(n_images):
        Image.new("RGB", (64 + i % 16, 48), (i % 256, 80, 160)).save(os.path.join(folder, f"{i:012d}.jpg"), quality=85)


def child(recipe: str, out: str, beam_args: list[str]) -> None:
    from pipelines.main import run

    t0 = time.perf_counter()
    m = run(["--recipe", recipe, "--output", out, "--log-level", "WARNING", *beam_args])
    print("RESULT " + json.dumps({"samples": m["totals"]["samples"], "seconds": time.perf_counter() - t0,
                                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(tmp: str, n: int, n_images: int, beam_args: list[str]) -> dict:
    llava = os.path.join(tmp, "llava.json")
    write_llava(llava, n, n_images)
    recipe = os.path.join(tmp, "mem.yaml")
    with open(recipe, "w") as f:
        f.write(f"name: mem\ninputs: {{llava_json: {llava}, image_root: {tmp}/images}}\nsources: {{}}\n"
                "llava: {}\nshards: {name: mem, max_samples: 4000}\n")
    out = os.path.join(tmp, "out")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", recipe, out, "--", *beam_args],
                          capture_output=True, text=True, cwd=REPO)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"build of {n} records failed:\n{proc.stderr[-3000:]}")
    res = json.loads(line[-1][7:])
    res["records"], res["input_mb"] = n, os.path.getsize(llava) / 1e6
    shutil.rmtree(out)
    os.remove(llava)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50000,100000,200000", help="comma-separated record counts")
    ap.add_argument("--images", type=int, default=64, help="distinct JPEGs the records name (0: text-only)")
    ap.add_argument("--child", nargs=2, metavar=("RECIPE", "OUT"), help=argparse.SUPPRESS)
    args, beam_args = ap.parse_known_args()
    beam_args = [a for a in beam_args if a != "--"]
    if args.child:
        return child(*args.child, beam_args)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_images(os.path.join(tmp, "images"), args.images)
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"Beam flags: {' '.join(beam_args) or '(Direct, in_memory)'}")
        print(f"{'records':>9}{'input MB':>10}{'seconds':>9}{'peak RSS MB':>13}{'bytes/record vs previous':>26}")
        for n in sizes:
            r = measure(tmp, n, args.images, beam_args)
            slope = ""
            if rows:
                p = rows[-1]
                slope = f"{(r['peak_rss_mb'] - p['peak_rss_mb']) * 2**20 / (n - p['records']):.0f}"
            rows.append(r)
            print(f"{n:>9}{r['input_mb']:>10.0f}{r['seconds']:>9.1f}{r['peak_rss_mb']:>13.0f}{slope:>26}", flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        per = (b["peak_rss_mb"] - a["peak_rss_mb"]) * 2**20 / (b["records"] - a["records"])
        print(f"growth {a['records']} -> {b['records']} records: {per:.0f} bytes per record "
              f"(goal: well under 1024); peak at {b['records']}: {b['peak_rss_mb'] / 1024:.2f} GB")


if __name__ == "__main__":
    main()
