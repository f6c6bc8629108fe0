"""random_tokens: R visual tokens per image drawn uniformly at random, before the LLM.

The sanity baseline of the 2025 benchmark studies: UniPruneBench (Peng et al., 2025, "Can Visual
Input Be Compressed?") reports random pruning as a surprisingly strong baseline. The draw is
seeded per sample: ``numpy.random.default_rng(row_seed(request.seed, key)).choice(n, R,
replace=False)`` over the image's visual tokens in sequence order, ``key`` = ``request.keys[b]``
(the row index when no keys are given), so a sample keeps the same tokens whatever batch it is
in. An image with at most R tokens keeps all of them.
"""

from __future__ import annotations

from typing import Any, Iterator
from contextlib import contextmanager

import numpy as np

from crop.pruning.methods.before_llm import (
    FAMILIES_ALL, check_options, need_budget, row_keys, row_seed, run_before_llm, select,
)
from crop.pruning.registry import PruneRequest

FAMILIES = FAMILIES_ALL


def random_pick(n: int, budget: int, seed: int, key: str, image: int = 0) -> np.ndarray:
    """Sorted indices (into the image's tokens) of the R drawn tokens; image > 0 salts the key."""
    if n <= budget:
        return np.arange(n)
    rng = np.random.default_rng(row_seed(seed, key if image == 0 else f"{key}#{image}"))
    return np.sort(rng.choice(n, size=budget, replace=False))


@contextmanager
def attach(model: Any, inputs: dict, req: PruneRequest) -> Iterator:
    r = need_budget(req, "random_tokens")
    check_options(req, "random_tokens", ())
    keys = row_keys(req, int(inputs["input_ids"].shape[0]))

    def choose(cap, b, i, chunk):
        return select(cap, b, chunk[random_pick(chunk.size, r, req.seed, keys[b], i)])

    with run_before_llm(model, inputs, choose) as run:
        yield run
