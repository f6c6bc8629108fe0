"""Does the localizer trainer learn? Recall on held-out synthetic samples before and after training.

A random-init tiny Qwen2-VL (configs/localizer-tiny.yaml) is trained by ``crop.train.localizer``
on the generated synthetic localization set, then evaluated with ``crop.eval.localization`` on
held-out samples (another split and seed). Prints area recall (mean; fallbacks as whole image and
as zero), IoU, exact match, parse failures, the teacher-forced loss of each answer token (the four
coordinates apart from the format tokens), steps and wall time. No download. Exit status 0 when
the held-out recall with fallbacks counted as 0 reaches 0.8.

    nice -n 19 python benchmarks/localizer_learns.py                 # the full run (CPU, see docs/localizer.md)
    python benchmarks/localizer_learns.py --set max_steps=300        # shorter
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "localizer-tiny.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--eval-samples", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output-dir", default="")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from crop.data.synthetic_localization import SyntheticSpec, synthetic_samples
    from crop.eval.localization import answer_token_losses, evaluate
    from crop.models.localizer import TinySpec, build_tiny_localizer
    from crop.train.localizer import load_config, train

    out_dir = args.output_dir or tempfile.mkdtemp(prefix="localizer-learns-")
    cfg = load_config(args.config, [*args.set, f"output_dir={out_dir}/run", "progress=false"])
    spec = SyntheticSpec(**cfg.synthetic_spec)
    held_out = synthetic_samples(args.eval_samples, seed=cfg.seed + 1000, spec=spec, split="heldout")
    train_keys = {s["__key__"] for s in synthetic_samples(min(cfg.synthetic, 50), cfg.seed, spec)}
    assert not train_keys & {s["__key__"] for s in held_out}, "held-out keys overlap training keys"

    def rows():
        return ({"key": s["__key__"], "question": s["json"]["question"], "image": s["image"],
                 "gt": tuple(s["json"]["region_blocks"])} for s in held_out)

    probe = held_out[:64]  # teacher-forced loss per answer token: coordinates vs format tokens
    untrained = build_tiny_localizer(TinySpec(**cfg.tiny))
    loss_before = answer_token_losses(untrained, probe)
    before = evaluate(untrained, rows(), f"{out_dir}/before", 32)
    t0 = time.time()
    result = train(cfg, log=lambda s: print(s, file=sys.stderr))
    wall = time.time() - t0
    after = evaluate(result["localizer"], rows(), f"{out_dir}/after", 32)
    loss_after = answer_token_losses(result["localizer"], probe)
    keys = ("area_recall_mean_fallback_as_zero", "area_recall_mean", "iou_mean", "exact_match_rate",
            "recall_gt_0.5", "recall_gt_0.7", "recall_gt_0.9", "parse_failures", "fallbacks")
    print(f"{'metric':38s} {'before':>10s} {'after':>10s}")
    for k in keys:
        print(f"{k:38s} {before[k]:10.4g} {after[k]:10.4g}")
    names = ["x0", "y0", "x1", "y1", "'.'", "<|im_end|>"]
    for k, (a, b) in enumerate(zip(loss_before, loss_after)):
        name = names[k] if k < len(names) else f"token {k}"
        print(f"{'answer-token CE ' + name:38s} {a:10.4g} {b:10.4g}")
    print(f"held-out samples {after['samples']}; train steps {result['steps']} x batch "
          f"{cfg.batch_size}; train wall {wall:.0f} s ({torch.get_num_threads()} threads); "
          f"first/last logged loss {result['losses'][0]:.3f}/{result['losses'][-1]:.3f}")
    print(json.dumps({"before": before, "after": after, "steps": result["steps"], "wall_s": wall,
                      "answer_token_ce_before": loss_before, "answer_token_ce_after": loss_after}),
          file=open(f"{out_dir}/summary.json", "w"))
    ok = after["area_recall_mean_fallback_as_zero"] >= 0.8
    print(f"target: held-out mean area recall (fallback as 0) >= 0.8 -> {'REACHED' if ok else 'NOT reached'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
