"""Ahead-of-time runner: order, real overlap with the caller, errors, early stop."""

from __future__ import annotations

import threading
import time

import pytest

from crop.geometry import Region
from crop.models.ahead import predict_ahead


class _FakeLocalizer:
    def __init__(self, fail_on=None):
        self.started = {}
        self.fail_on = fail_on

    def predict(self, images, questions):
        i = images[0]
        self.started.setdefault(i, threading.Event()).set()
        time.sleep(0.01 * (3 - i % 3))  # uneven durations must not reorder results
        if i == self.fail_on:
            raise RuntimeError(f"boom on {i}")
        return [Region(i % 8, 0, i % 8, 0)]


def test_results_in_order_and_next_batch_runs_while_caller_works():
    loc = _FakeLocalizer()
    batches = [([i], ["q"]) for i in range(6)]
    seen = []
    for batch, regions in predict_ahead(loc, batches, depth=1):
        i = batch[0][0]
        seen.append((i, regions[0].x_min))
        if i + 1 < 6:
            # the caller is still "working" on batch i; the localizer must already be on i+1
            assert loc.started.setdefault(i + 1, threading.Event()).wait(5), f"batch {i + 1} not started ahead"
    assert seen == [(i, i) for i in range(6)]


def test_worker_error_surfaces_at_its_batch():
    got = []
    with pytest.raises(RuntimeError, match="boom on 2"):
        for batch, _ in predict_ahead(_FakeLocalizer(fail_on=2), [([i], ["q"]) for i in range(5)]):
            got.append(batch[0][0])
    assert got == [0, 1]


def test_early_stop_and_bad_depth():
    gen = predict_ahead(_FakeLocalizer(), [([i], ["q"]) for i in range(100)], depth=2)
    first = next(gen)
    assert first[0][0] == [0]
    gen.close()  # must not hang on the queued work
    with pytest.raises(ValueError, match="depth must be >= 1"):
        list(predict_ahead(_FakeLocalizer(), [], depth=0))
