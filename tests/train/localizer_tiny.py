"""Shared by the localizer-trainer tests: the tiny Qwen2-VL spec and one torch thread per test."""

from __future__ import annotations

import pytest
import torch

TINY = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64,
        "vision_depth": 1, "vision_dim": 16, "vision_heads": 1}


@pytest.fixture(autouse=True)
def one_thread():
    """Torch on one thread: exact-resume comparisons and timing-free tests on a 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def damaged_shards(folder, n=40, bad=6):
    """Synthetic region shards where ``bad`` samples carry bytes that are not an image."""
    import io
    import json

    import webdataset as wds

    from crop.data.synthetic_localization import SyntheticSpec, synthetic_samples

    folder.mkdir(parents=True)
    with wds.TarWriter(str(folder / "dmg-000000.tar"), mtime=0) as sink:
        for i, s in enumerate(synthetic_samples(n, seed=4, spec=SyntheticSpec(size=112))):
            buf = io.BytesIO()
            s["image"].save(buf, format="PNG")
            data = b"\x89PNG but not really" * 8 if i < bad else buf.getvalue()
            sink.write({"__key__": s["json"]["key"], "json": json.dumps(s["json"]).encode(), "png": data})
    return str(folder)
