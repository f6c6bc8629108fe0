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
