"""The learning proof at reduced length (slow: minutes on a CPU; the full run is
``benchmarks/localizer_learns.py``): the demo config learns to localize held-out samples."""

from __future__ import annotations

import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~1 min on an idle 2-core CPU, far more when the machine is shared
def test_demo_config_reaches_recall_08_on_held_out_samples(tmp_path):
    from crop.data.synthetic_localization import SyntheticSpec, synthetic_samples
    from crop.eval.localization import evaluate
    from crop.train.localizer import load_config, train

    torch.set_num_threads(2)
    cfg = load_config(os.path.join(ROOT, "configs", "localizer-tiny.yaml"),
                      ["max_steps=300", "synthetic=4800", f"output_dir={tmp_path}/run", "progress=false"])
    held = synthetic_samples(64, seed=cfg.seed + 1000, spec=SyntheticSpec(**cfg.synthetic_spec), split="heldout")
    rows = [{"key": s["__key__"], "question": s["json"]["question"], "image": s["image"],
             "gt": tuple(s["json"]["region_blocks"])} for s in held]
    loc = train(cfg, log=lambda s: None)["localizer"]
    metrics = evaluate(loc, iter(rows), str(tmp_path / "eval"), 32)
    assert metrics["fallbacks"] == 0
    assert metrics["area_recall_mean_fallback_as_zero"] >= 0.8, metrics
    assert metrics["iou_mean"] >= 0.6, metrics
