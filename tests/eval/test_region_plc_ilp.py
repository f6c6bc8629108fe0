"""Through ``crop eval``: PLC's context mask is ILP's keep mask for the same question (issue 17, item 4).

A tiny LLaVA-1.5 with the real 24x24 token grid (LLaVA's pad-to-square eval view) and a tiny
PLC for that grid answer a generated benchmark of 12 images of random sizes with random regions,
once with method ``ilp`` (exact regions) and once with ``plc``. The keep plan ILP applies and the
context mask PLC receives are recorded per question; they must be the same token set (before, the
two came from different formulas and differed on ~7% of random regions, and ILP kept the padding
beyond a region touching the image border).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crop.eval.runner import EvalConfig, run_eval  # noqa: E402
from crop.eval.scorers.common import read_jsonl  # noqa: E402


def test_plc_context_masks_equal_ilp_keep_masks_in_crop_eval(tmp_path_factory, tmp_path, monkeypatch):
    import crop.pruning
    from crop.models.llava_plc import LlavaPLC
    from crop.models.plc import PLC, PLCConfig
    from transformers import LlavaForConditionalGeneration

    from test_region_budget_average import _benchmark, _tiny_llava_24

    torch.set_num_threads(1)
    model_dir = _tiny_llava_24(tmp_path_factory.mktemp("llava24"))
    bench, regions = _benchmark(tmp_path_factory.mktemp("plcbench"), n=12, seed=7)
    weights = tmp_path / "plc.safetensors"
    torch.manual_seed(1)
    cfg = PLCConfig(dim=32, grid_rows=24, grid_cols=24, num_context_queries=4, num_noncontext_queries=1, anchor_size=2)
    LlavaPLC(LlavaForConditionalGeneration.from_pretrained(str(model_dir)), plc=PLC(cfg)).save_plc(weights)

    ilp_masks, plc_masks = [], []
    attach = crop.pruning.attach_ilp

    def recording_attach(model, plan, layer=2):
        keep = ~np.isin(plan.visual[0], plan.drop[0])  # (576,) raster order of the 24x24 grid
        ilp_masks.append(keep)
        return attach(model, plan, layer)

    monkeypatch.setattr(crop.pruning, "attach_ilp", recording_attach)
    forward = PLC.forward

    def recording_forward(self, x, context_mask):
        plc_masks.append(context_mask.reshape(-1).cpu().numpy().astype(bool))
        return forward(self, x, context_mask)

    monkeypatch.setattr(PLC, "forward", recording_forward)
    model = {"path": str(model_dir), "dtype": "float32", "device": "cpu"}
    for name, extra in (("ilp", {"layer": 1}), ("plc", {})):
        run_eval(EvalConfig.from_dict({
            "model": dict(model, plc_weights=str(weights)) if name == "plc" else model,
            "method": {"name": name, "regions": regions, **extra}, "output_dir": str(tmp_path / name),
            "score": False, "benchmarks": [bench]}))
    assert len(ilp_masks) == len(plc_masks) == 12
    for i, (a, b) in enumerate(zip(ilp_masks, plc_masks)):
        np.testing.assert_array_equal(a, b, err_msg=f"question q{i}")
    assert len({int(m.sum()) for m in ilp_masks}) > 3  # varied regions, not one mask over and over
    rows = read_jsonl(tmp_path / "ilp" / "gqa" / "efficiency.jsonl")
    assert [r["visual_tokens_kept"] for r in rows] == [int(m.sum()) for m in ilp_masks]
