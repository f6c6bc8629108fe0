"""Training input through ``torch.utils.data.DataLoader`` workers: shard reading, JPEG decoding and
the per-sample preparation (tokenizing, the image processor) run in worker processes, so the
training step only pads and stacks.

Both trainers read one sample at a time from a :class:`crop.data.stream.ShardStream` built with
``batch_size=1``; this module wraps it as :class:`PreparedStream`, whose items are
``{"item": prepare(sample), "sample": the sample without its image, "worker": id, "loader": counts}``.

Order and resume. The stream splits each epoch's samples into one contiguous run per worker and
the DataLoader delivers them round robin in order (``in_order=True``), so the order depends on
``num_workers`` but is a pure function of (seed, epoch, num_workers); the data position is the
number of samples the trainer consumed, which ``ShardStream.state_dict(batches_seen, num_workers)``
maps back onto every worker's progress. A run resumed with the same ``num_workers`` therefore sees
exactly the samples the uninterrupted run would have seen; another ``num_workers`` is refused by
the stream (the order would differ).

Loader counters (decode errors, missing members, filled repeats) live in each worker process;
every item carries its worker's counts since that worker started this epoch, and
:class:`LoaderCounts` adds the latest of every worker to the totals of earlier epochs.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


def check_resume_workers(saved: int | None, now: int, pos: int, field: str = "data.num_workers") -> None:
    """Refuse to resume mid-epoch with another worker count (0 and 1 share one plan): the sample
    order depends on it, so the run would silently see other samples than the interrupted one."""
    if saved is None or pos == 0 or max(1, saved) == max(1, now):
        return
    raise ValueError(f"cannot resume exactly: the checkpoint was written with {field}={saved}, now {now}; "
                     f"the sample order depends on it (set {field}={saved} to resume)")


SHARED_MIN_BYTES = 1 << 18  # tensors from this size on cross via shared memory; smaller ones are pickled


def to_wire(x: Any) -> Any:
    """In a worker: small tensors as numpy arrays. Every tensor a worker sends otherwise gets its own
    shared-memory segment, which costs far more than copying a few hundred bytes (measured: the
    localizer's six small tensors per sample made 2 workers no faster than none)."""
    if isinstance(x, torch.Tensor):
        return x.numpy() if x.nbytes < SHARED_MIN_BYTES and x.device.type == "cpu" else x
    if isinstance(x, dict):
        return {k: to_wire(v) for k, v in x.items()}
    return x


def from_wire(x: Any) -> Any:
    """In the training process: numpy arrays back to tensors (the inverse of :func:`to_wire`)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, dict):
        return {k: from_wire(v) for k, v in x.items()}
    return x


def _as_is(item: Any) -> Any:
    return item  # the DataLoader's collate for single items: keep numpy arrays numpy (see to_wire)


class PreparedStream(IterableDataset):
    """``prepare`` applied to every sample of ``stream`` inside the DataLoader worker that reads it."""

    def __init__(self, stream: Any, prepare: Callable[[dict], Any]):
        super().__init__()
        self.stream, self.prepare = stream, prepare

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        wire = to_wire if info is not None else _as_is
        counters = getattr(self.stream, "counters", None)
        start = dict(counters.counts) if counters is not None else {}  # in-process: counts of earlier epochs
        for sample in self.stream:
            item = wire(self.prepare(sample))
            counts = {k: v - start.get(k, 0) for k, v in counters.counts.items()} if counters is not None else {}
            first = dict(counters.first) if counters is not None else {}
            light = {k: v for k, v in sample.items() if k != "image"}  # no PIL image across processes
            yield {"item": item, "sample": light, "worker": worker, "loader": counts, "first": first}


class LoaderCounts:
    """Loader failure counters summed over workers and epochs (kind -> count) and the first bad
    sample of each kind."""

    def __init__(self, base: dict | None = None):
        self.base: collections.Counter = collections.Counter(base or {})
        self.current: dict[int, dict] = {}
        self.first: dict[str, str] = {}

    def update(self, worker: int, counts: dict, first: dict) -> None:
        self.current[worker] = counts
        for k, v in first.items():
            self.first.setdefault(k, v)

    def end_epoch(self) -> None:
        for counts in self.current.values():
            self.base.update(counts)
        self.current = {}

    @property
    def counts(self) -> dict[str, int]:
        total = collections.Counter(self.base)
        for counts in self.current.values():
            total.update(counts)
        return {k: int(v) for k, v in total.items() if v}


def epoch_items(stream: Any, prepare: Callable[[dict], Any], epoch: int, pos: int, *, num_workers: int = 0,
                prefetch_factor: int = 2, pin_memory: bool = False, counts: LoaderCounts | None = None
                ) -> Iterator[tuple[int, dict]]:
    """``(position after this sample, item)`` for the samples of ``epoch`` from ``pos`` on.

    ``stream`` is a ``ShardStream`` with ``batch_size=1``; ``num_workers=0`` prepares in this process
    (same order as one worker).
    """
    stream.set_epoch(epoch)
    if pos:
        stream.load_state_dict(stream.state_dict(batches_seen=pos, num_workers=num_workers))
    kw: dict = {"num_workers": num_workers, "pin_memory": pin_memory and torch.cuda.is_available()}
    if num_workers > 0:
        kw.update(prefetch_factor=prefetch_factor, persistent_workers=False)
    loader = DataLoader(PreparedStream(stream, prepare), batch_size=None, collate_fn=_as_is, **kw)  # in order
    for row in loader:
        pos += 1
        row["item"] = from_wire(row["item"])
        if counts is not None:
            counts.update(row["worker"], row["loader"], row["first"])
        yield pos, row
    if counts is not None:
        counts.end_epoch()


def endless_items(stream: Any, prepare: Callable[[dict], Any], epoch: int, pos: int, **kw: Any
                  ) -> Iterator[tuple[int, int, dict]]:
    """``(epoch, position after this sample, item)`` forever, from sample ``pos`` of ``epoch``."""
    while True:
        for pos, row in epoch_items(stream, prepare, epoch, pos, **kw):
            yield epoch, pos, row
        epoch, pos = epoch + 1, 0
