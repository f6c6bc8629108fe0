"""The epoch plan of :class:`crop.data.stream.ShardStream` as pure functions (no I/O, no torch).

Given the shards' sample counts, a seed and an epoch, these decide which positions each
(rank, worker) reads, in which shard segments, and how far a worker got after a number of
consumed batches. The reasoning (why sample-level splits keep ranks equal and resumption exact)
is in the :mod:`crop.data.stream` docstring; the tests drive these functions directly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

from crop.data.sources import ShardRef

UNEVEN = ("pad", "drop")


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` of one shard, read in order; ``pos`` is the first epoch position."""

    shard: ShardRef
    start: int
    stop: int
    pos: int


def shard_order(shards: Sequence[ShardRef], seed: int, epoch: int, shuffle: bool) -> list[ShardRef]:
    """This epoch's shard order: a seeded permutation (string seeds hash with sha512, stably)."""
    order = list(shards)
    if shuffle:
        random.Random(f"crop-shards/{seed}/{epoch}").shuffle(order)
    return order


def epoch_length(total: int, world_size: int, uneven: str) -> int:
    """Padded (``pad``) or trimmed (``drop``) epoch length, a multiple of ``world_size``."""
    if uneven == "pad":
        return math.ceil(total / world_size) * world_size
    return (total // world_size) * world_size


def split_sizes(n: int, parts: int, batch_size: int = 1) -> list[int]:
    """Split ``n`` samples into ``parts`` contiguous runs of whole batches.

    ``nb = n // batch_size`` full batches go ``nb // parts`` to every part and one more to the first
    ``nb % parts``; the partial batch (``n % batch_size``) goes to part ``nb % parts``, which is the
    next in the DataLoader's round robin, so the partial batch is delivered last.
    """
    nb, rest = divmod(n, batch_size)
    sizes = [(nb // parts + (i < nb % parts)) * batch_size for i in range(parts)]
    sizes[nb % parts] += rest
    return sizes


def stream_span(total: int, world_size: int, rank: int, num_workers: int, worker: int,
                uneven: str = "pad", batch_size: int = 1) -> tuple[int, int]:
    """Epoch positions ``[lo, hi)`` read by (rank, worker)."""
    per_rank = epoch_length(total, world_size, uneven) // world_size
    sizes = split_sizes(per_rank, num_workers, batch_size)
    lo = rank * per_rank + sum(sizes[:worker])
    return lo, lo + sizes[worker]


def segments(order: Sequence[ShardRef], lo: int, hi: int) -> list[Segment]:
    """Cut positions ``[lo, hi)`` of the epoch sequence into per-shard segments.

    Positions ``>= total`` (padding) wrap around to the start of the same order.
    """
    total = sum(s.samples for s in order)
    out: list[Segment] = []
    pos = lo
    while pos < hi:
        p, first = pos % total, 0
        for shard in order:
            if p < first + shard.samples:
                take = min(first + shard.samples - p, hi - pos)
                out.append(Segment(shard, p - first, p - first + take, pos))
                pos += take
                break
            first += shard.samples
    return out


def worker_progress(batches_seen: int, worker: int, num_workers: int, size: int,
                    batch_size: int) -> int:
    """Samples of ``worker``'s run already consumed after ``batches_seen`` rank-level batches.

    The in-order DataLoader delivers batch t from worker ``t % W`` (its batch ``t // W``).
    """
    mine = batches_seen // num_workers + (worker < batches_seen % num_workers)
    return min(mine * batch_size, size)
