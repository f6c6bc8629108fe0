"""Ahead-of-time localization (paper Sec. 4.4): regions for batch i+1 are computed while the
caller's main VLM works on batch i.

::

    for batch, regions in predict_ahead(localizer, batches, depth=1):
        main_vlm(batch, regions)          # meanwhile the localizer is already on the next batch

A single background worker thread runs ``predict`` (PyTorch releases the GIL inside its kernels,
so the two models overlap on CPU as well as GPU). Results come back strictly in input order; an
exception in the worker is raised in the caller at the batch it belongs to. On CUDA the worker can
issue its kernels on a separate stream (``cuda_stream=True``) so they interleave with the main
model's; the worker synchronises that stream before handing a result over.

A batch is any object; ``get_inputs(batch) -> (images, questions)`` says how to read it (default:
a ``(images, questions)`` pair).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence


def _default_inputs(batch: Any) -> tuple[Sequence, Sequence]:
    images, questions = batch
    return images, questions


def predict_ahead(localizer: Any, batches: Iterable[Any], depth: int = 1,
                  get_inputs: Callable[[Any], tuple[Sequence, Sequence]] = _default_inputs,
                  cuda_stream: bool = False, detailed: bool = False) -> Iterator[tuple[Any, list]]:
    """Yield ``(batch, regions)`` in order, keeping up to ``depth`` batches predicted ahead.

    ``detailed=True`` yields :class:`~crop.models.localizer.Prediction` objects instead of regions.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    stream = None
    if cuda_stream:
        import torch

        if torch.cuda.is_available():
            stream = torch.cuda.Stream()

    def work(batch: Any) -> list:
        images, questions = get_inputs(batch)
        fn = localizer.predict_detailed if detailed else localizer.predict
        if stream is None:
            return fn(images, questions)
        import torch

        with torch.cuda.stream(stream):
            out = fn(images, questions)
        stream.synchronize()
        return out

    pending: deque[tuple[Any, Future]] = deque()
    it = iter(batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crop-localizer") as pool:
        try:
            for batch in it:
                pending.append((batch, pool.submit(work, batch)))
                if len(pending) > depth:
                    done_batch, fut = pending.popleft()
                    yield done_batch, fut.result()
            while pending:
                done_batch, fut = pending.popleft()
                yield done_batch, fut.result()
        finally:
            for _, fut in pending:  # the caller stopped early: drop what was queued
                fut.cancel()
