"""Several regions per question (issue 21): what one union rectangle costs, and whether a tiny
localizer learns to name several regions. Prints figures; nothing is asserted.

Part 1 (default, seconds): generated two-object questions (``crop.data.synthetic_localization.
multi_synthetic_samples``; the question names both shapes). For each question the union policy
keeps ONE block rectangle (``region_blocks``), the ``regions`` policy up to N disjoint rectangles
(``regions_blocks``, :func:`crop.geometry.multi_region.boxes_px_to_regions`). Both cover every box
(area recall of each object's region 1.0: equal recall by construction, checked here); the figures
are blocks of the 8x8 grid and LLaVA-1.5 visual tokens kept by ILP / prune (24x24 grid, THE mapping
``crop.pruning.region_keep_plan``), mean over questions, for N = 1..4.

Part 2 (``--learn``, minutes on a CPU): a random-init tiny Qwen2-VL (configs/localizer-tiny.yaml)
trained by ``crop.train.localizer`` with ``max_regions: 2`` on shards of 6000 multi-region samples
(one or two shapes per image, the question names all of them), 4 epochs = 1500 steps of 16. Held out (another split and seed):
for two-shape questions the area recall of EACH shape's region by the predicted regions; for
one-shape questions how often exactly one region is predicted, and its recall.

    python benchmarks/multi_region.py                       # part 1
    nice -n 19 python benchmarks/multi_region.py --learn    # part 1 + part 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI_SPEC = dict(size=224, min_side=24, max_side=56, background="plain")


def llava_layout():
    """One LLaVA-1.5-7B-shaped row layout (24x24 visual tokens), from the real config classes."""
    import torch
    import transformers as tf

    from crop.pruning import token_layout

    vc = tf.CLIPVisionConfig(image_size=336, patch_size=14)
    cfg = tf.LlavaConfig(vision_config=vc, text_config=tf.LlamaConfig(vocab_size=32064), image_token_id=32000)
    return token_layout(cfg, {"input_ids": torch.tensor([[1, 2] + [32000] * 576 + [3]])})


def measure_union_vs_regions(n: int, seed: int) -> dict:
    from crop.data.synthetic_localization import SyntheticSpec, multi_synthetic_samples
    from crop.geometry import area_recall, box_px_to_region
    from crop.geometry.multi_region import (bounding_region, boxes_px_to_regions, multi_area_recall,
                                            regions_blocks_area)
    from crop.pruning import region_keep_plan

    lay = llava_layout()
    samples = [s for s in multi_synthetic_samples(n, seed, SyntheticSpec(**MULTI_SPEC), "bench", 2)
               if len(s["json"]["boxes_xyxy_px"]) == 2]
    out = {"questions": len(samples)}
    for max_regions in (1, 2, 3, 4):
        blocks = tokens = recall = n_regions = 0.0
        for s in samples:
            rec = s["json"]
            w, h = rec["image_width"], rec["image_height"]
            regions = boxes_px_to_regions(rec["boxes_xyxy_px"], w, h, max_regions)
            gts = [box_px_to_region(b, w, h) for b in rec["boxes_xyxy_px"]]
            recall += sum(multi_area_recall(g, regions) for g in gts) / len(gts)
            if max_regions == 1:  # the union policy: the same rectangle as region_blocks
                assert list(regions[0]) == list(bounding_region(gts))
                assert all(area_recall(g, regions[0]) == 1.0 for g in gts)
            blocks += regions_blocks_area(regions)
            plan = region_keep_plan(lay, [regions if len(regions) > 1 else regions[0]], llava_geometry="resize")
            tokens += plan.visual_kept[0]
            n_regions += len(regions)
        k = len(samples)
        out[max_regions] = {"regions_per_question": n_regions / k, "blocks_kept": blocks / k,
                            "llava_tokens_kept": tokens / k, "area_recall_per_object": recall / k}
    return out


def print_part1(res: dict) -> None:
    print(f"part 1: {res['questions']} generated two-object questions (224 px, shapes 24-56 px), "
          "LLaVA-1.5 24x24 tokens (576)")
    print(f"{'policy':18s} {'regions/q':>10s} {'blocks':>8s} {'tokens':>8s} {'recall/object':>14s}")
    for n in (1, 2, 3, 4):
        r = res[n]
        name = "union (N=1)" if n == 1 else f"regions N={n}"
        print(f"{name:18s} {r['regions_per_question']:10.3f} {r['blocks_kept']:8.2f} {r['llava_tokens_kept']:8.1f} "
              f"{r['area_recall_per_object']:14.3f}")
    ratio = res[2]["llava_tokens_kept"] / res[1]["llava_tokens_kept"]
    print(f"tokens kept, regions N=2 / union: {ratio:.3f} at equal recall "
          f"({res[1]['area_recall_per_object']:.3f} vs {res[2]['area_recall_per_object']:.3f})")


def learn(args) -> dict:
    import torch

    from crop.data.synthetic_localization import SyntheticSpec, multi_synthetic_samples, write_shards
    from crop.geometry import box_px_to_region
    from crop.geometry.multi_region import multi_area_recall
    from crop.train.localizer import load_config, train

    torch.set_num_threads(args.threads)
    out_dir = args.output_dir or tempfile.mkdtemp(prefix="multi-region-learns-")
    spec = SyntheticSpec(**MULTI_SPEC)
    train_set = multi_synthetic_samples(args.train_samples, 0, spec, "train", 2, 2)
    shards = write_shards(train_set, os.path.join(out_dir, "shards"), "multi", per_shard=2000)
    held_out = multi_synthetic_samples(args.eval_samples, 1000, spec, "heldout", 2, 2)
    cfg = load_config(args.config, ["synthetic=0", f"shards={json.dumps(shards)}",
                                    f"samples_per_epoch={len(train_set)}", "max_regions=2", "epochs=4.0",
                                    f"output_dir={out_dir}/run", "progress=false", *args.set])
    t0 = time.time()
    result = train(cfg, log=lambda s: print(s, file=sys.stderr))
    wall = time.time() - t0
    loc = result["localizer"]
    loc.model.eval()
    two = {"recall_each": [], "both_found": 0, "n": 0, "regions": []}
    one = {"exactly_one": 0, "recall": [], "n": 0}
    statuses: dict[str, int] = {}
    for start in range(0, len(held_out), 32):
        batch = held_out[start:start + 32]
        preds = loc.predict_detailed([s["image"] for s in batch], [s["json"]["question"] for s in batch],
                                     max_regions=2)
        for s, p in zip(batch, preds):
            statuses[p.status] = statuses.get(p.status, 0) + 1
            rec = s["json"]
            gts = [box_px_to_region(b, rec["image_width"], rec["image_height"]) for b in rec["boxes_xyxy_px"]]
            found = p.regions if p.status != "fallback" else []
            recalls = [multi_area_recall(g, found) if found else 0.0 for g in gts]
            if len(gts) == 2:
                two["n"] += 1
                two["recall_each"] += recalls
                two["both_found"] += all(r > 0.5 for r in recalls)
                two["regions"].append(len(found))
            else:
                one["n"] += 1
                one["exactly_one"] += len(found) == 1
                one["recall"] += recalls
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    res = {"steps": result["steps"], "train_wall_s": wall, "statuses": statuses,
           "two_objects": {"questions": two["n"], "area_recall_each_object": mean(two["recall_each"]),
                           "both_objects_recall_gt_0.5": two["both_found"] / max(1, two["n"]),
                           "regions_predicted_mean": mean(two["regions"])},
           "one_object": {"questions": one["n"], "exactly_one_region": one["exactly_one"] / max(1, one["n"]),
                          "area_recall": mean(one["recall"])},
           "first_last_loss": [result["losses"][0], result["losses"][-1]] if result["losses"] else None}
    with open(os.path.join(out_dir, "multi_region_learns.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=1000, help="generated questions for part 1 (about half have two shapes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--learn", action="store_true", help="also train and evaluate a tiny multi-region localizer")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "localizer-tiny.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="train config overrides")
    p.add_argument("--train-samples", type=int, default=6000)
    p.add_argument("--eval-samples", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output-dir", default="")
    args = p.parse_args(argv)

    t0 = time.time()
    print_part1(measure_union_vs_regions(args.questions, args.seed))
    print(f"part 1 wall {time.time() - t0:.1f} s")
    if args.learn:
        res = learn(args)
        t, o = res["two_objects"], res["one_object"]
        print(f"part 2: tiny localizer, max_regions 2, {res['steps']} steps, train wall {res['train_wall_s']:.0f} s, "
              f"parse statuses {res['statuses']}")
        print(f"  two-object questions ({t['questions']}): area recall of each object {t['area_recall_each_object']:.3f}, "
              f"both objects > 0.5 on {t['both_objects_recall_gt_0.5']:.3f}, regions predicted {t['regions_predicted_mean']:.2f}")
        print(f"  one-object questions ({o['questions']}): exactly one region {o['exactly_one_region']:.3f}, "
              f"area recall {o['area_recall']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
