"""Stream CROP shards into a PyTorch ``DataLoader``: seeded shuffling, exact splits, resumption.

How an epoch is planned (pure functions in :mod:`crop.data.plan`, tested without a DataLoader)::

    shards (manifest counts) --shuffle(seed, epoch)--> one sequence of N samples, positions 0..N-1
    pad to L = ceil(N / R) * R (uneven="pad": positions >= N repeat the first samples, __pad__=True)
         or trim to L = floor(N / R) * R (uneven="drop": the tail of this epoch's order is dropped)
    rank r gets the contiguous positions [r*M, (r+1)*M), M = L / R
    the rank's M samples are split into B-sized batches; worker w gets a contiguous run of
    nb // W (+1 for w < nb % W) full batches, and worker nb % W also gets the partial batch.

Splitting at the *sample* level with the manifest's counts (not by whole shards) is what makes
every sample appear exactly once per epoch (when R divides N) whatever the shard counts, and gives
every rank exactly M samples and ``ceil(M / B)`` batches -- so DDP never hangs on uneven shards.
Because worker w holds batches w, w+W, w+2W, ... of the DataLoader's in-order round robin, the
number of batches a trainer has consumed maps exactly onto each worker's progress; that is how
:meth:`ShardStream.state_dict` / :meth:`~ShardStream.load_state_dict` resume mid-epoch.

The sample shuffle is a *block* shuffle: each worker permutes consecutive blocks of
``shuffle_buffer`` samples with an RNG seeded by (seed, epoch, block position). Its order is a pure
function of the plan, so resuming needs to re-read at most one block, never replay the stream.
For local uncompressed shards the block holds only member *locations*: each sample's JSON and
image are read (``os.pread``) right before they are parsed and decoded, which keeps the decoder
on hot memory whatever the block size (see ``docs/loader.md``, "Why lazy").
Failed samples (corrupt member/shard) are replaced by a repeat of a good sample (``__pad__``) so the
length promise holds under ``on_error="skip"``.

Use :meth:`ShardStream.loader` (or pass the same ``batch_size``/``drop_last`` to the DataLoader,
keep ``in_order=True`` and ``persistent_workers=False`` so ``set_epoch`` reaches the workers).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import os
import random
from dataclasses import dataclass
from itertools import islice
from typing import Iterator, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info

from crop.data.safety import (DEFAULT_MAX_IMAGE_PIXELS, INFO_KINDS, ON_ERROR, Counters, ErrorPolicy,
                              ImageTooLargeError, RawSample, ShardReadError, decode_image,
                              decode_json, iter_shard_samples)
from crop.data.plan import (UNEVEN, Segment, epoch_length, segments, shard_order,  # noqa: F401
                            split_sizes, stream_span, worker_progress)
from crop.data.sources import (ShardRef, count_samples, local_path, open_url,  # noqa: F401
                               resolve_shards)
from crop.data.tar_headers import MemberReader

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- dataset
@dataclass
class StreamConfig:
    """Typed settings of :class:`ShardStream` (defaults live here only)."""

    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 256     # block size of the sample shuffle (samples held per worker)
    batch_size: int = 1           # must equal the DataLoader's (drives the worker split/resume)
    drop_last: bool = False       # must equal the DataLoader's
    uneven: str = "pad"           # "pad" or "drop" when the sample count is not a multiple of ranks
    decode: bool = False          # decode images to RGB PIL images
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    on_error: str = "skip"        # "skip" (count + warn) or "raise"
    fill_failures: bool = True    # replace failed samples by a repeat so lengths never change
    rank: int | None = None       # default: torch.distributed, then $RANK, then 0
    world_size: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "shuffle_buffer": self.shuffle_buffer >= 1, "batch_size": self.batch_size >= 1,
            "uneven": self.uneven in UNEVEN, "on_error": self.on_error in ON_ERROR,
            "max_image_pixels": self.max_image_pixels is None or self.max_image_pixels > 0,
            "world_size": self.world_size is None or self.world_size >= 1,
            "rank": self.rank is None or (self.rank >= 0 and (self.world_size is None
                                                              or self.rank < self.world_size)),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"StreamConfig.{name}={getattr(self, name)!r} is invalid")
        if (self.rank is None) != (self.world_size is None):
            raise ValueError("StreamConfig.rank and StreamConfig.world_size go together")


def _dist_rank_world(cfg: StreamConfig) -> tuple[int, int]:
    if cfg.rank is not None:
        return cfg.rank, cfg.world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardStream(IterableDataset):
    """Samples of CROP shards as dicts for the PyTorch DataLoader (see the module docstring).

    Each sample: ``{"__key__", "json": record, "image": RGB PIL image or None (only with
    decode=True), "image_bytes", "image_ext", "__shard__", "__index__" (position in the shard),
    "__pad__" (True for padding/fill repeats)}``.
    """

    def __init__(self, sources, config: StreamConfig | None = None, **overrides) -> None:
        super().__init__()
        self.config = dataclasses.replace(config or StreamConfig(), **overrides)
        self.shards = resolve_shards(sources)
        self.total = sum(s.samples for s in self.shards)
        if self.total == 0:
            raise ValueError("the shards hold no samples")
        self.rank, self.world_size = _dist_rank_world(self.config)
        self.counters = Counters()
        self.epoch = 0
        self._resume: tuple | None = None    # (epoch, batches_seen, num_workers or None)
        self._yielded: int | None = None               # in-process count (num_workers=0)

    # -- epoch length ------------------------------------------------------------------------
    def __len__(self) -> int:
        """Samples this rank yields per epoch (identical on every rank)."""
        return epoch_length(self.total, self.world_size, self.config.uneven) // self.world_size

    def num_batches(self) -> int:
        """Batches per rank per epoch, whatever the number of workers."""
        n, b = len(self), self.config.batch_size
        return n // b if self.config.drop_last else math.ceil(n / b)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan (shard order, shuffle) the next iteration follows."""
        self.epoch = int(epoch)
        self._yielded = None
        if self._resume is not None and self._resume[0] != self.epoch:
            self._resume = None

    def loader(self, num_workers: int = 0, collate_fn=None, **kw) -> torch.utils.data.DataLoader:
        """A DataLoader whose batching matches this stream's plan (batch size, drop_last, order)."""
        for bad in ("batch_size", "drop_last", "shuffle", "sampler", "in_order"):
            if bad in kw:
                raise ValueError(f"loader(): {bad} is fixed by the stream's config")
        kw.setdefault("persistent_workers", False)
        return torch.utils.data.DataLoader(
            self, batch_size=self.config.batch_size, drop_last=self.config.drop_last,
            num_workers=num_workers, collate_fn=collate_fn if collate_fn is not None else list, **kw)

    # -- resumption --------------------------------------------------------------------------
    def fingerprint(self) -> str:
        text = "\n".join(f"{s.name}:{s.samples}" for s in self.shards)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def state_dict(self, batches_seen: int | None = None, num_workers: int | None = None) -> dict:
        """Position to resume from: ``batches_seen`` batches of the current epoch consumed.

        With ``num_workers=0`` it may be omitted (the stream counts what it yielded). Pass
        ``num_workers`` to also record each worker's (shard, offset) read position.
        """
        if batches_seen is None:
            if self._yielded is not None:
                batches_seen, num_workers = self._yielded // self.config.batch_size, 1
            elif self._resume is not None and self._resume[0] == self.epoch:
                batches_seen, num_workers = self._resume[1], self._resume[2]
            else:
                raise ValueError("state_dict(): pass batches_seen (the stream only counts what it "
                                 "yields itself, i.e. with num_workers=0)")
        state = {"version": 1, "seed": self.config.seed, "epoch": self.epoch,
                 "batches_seen": int(batches_seen), "batch_size": self.config.batch_size,
                 "world_size": self.world_size, "rank": self.rank, "uneven": self.config.uneven,
                 "shuffle": self.config.shuffle, "shuffle_buffer": self.config.shuffle_buffer,
                 "fingerprint": self.fingerprint()}
        if num_workers is not None:
            workers = max(1, num_workers)  # 0 workers = one in-process stream, same plan as 1
            state["num_workers"] = workers
            state["positions"] = [self._position(w, workers, batches_seen) for w in range(workers)]
        return state

    def _position(self, worker: int, num_workers: int, batches_seen: int) -> dict:
        lo, hi = self._span(worker, num_workers)
        done = worker_progress(batches_seen, worker, num_workers, hi - lo, self.config.batch_size)
        restart = lo + self._block_start(done)
        order = shard_order(self.shards, self.config.seed, self.epoch, self.config.shuffle)
        segs = [] if lo + done >= hi else segments(order, restart, hi)
        where = {"shard": segs[0].shard.name, "offset": segs[0].start} if segs else \
            {"shard": None, "offset": None}
        return {"worker": worker, "yielded": done, **where}

    def load_state_dict(self, state: dict) -> None:
        fixed = {"seed": self.config.seed, "batch_size": self.config.batch_size,
                 "world_size": self.world_size, "uneven": self.config.uneven,
                 "shuffle": self.config.shuffle, "shuffle_buffer": self.config.shuffle_buffer,
                 "fingerprint": self.fingerprint()}
        for name, value in fixed.items():
            if state.get(name) != value:
                raise ValueError(f"cannot resume exactly: saved {name}={state.get(name)!r}, "
                                 f"this stream has {value!r}")
        self.epoch = int(state["epoch"])
        self._resume = (self.epoch, int(state["batches_seen"]), state.get("num_workers"))
        self._yielded = None

    # -- iteration ---------------------------------------------------------------------------
    def _span(self, worker: int, num_workers: int) -> tuple[int, int]:
        return stream_span(self.total, self.world_size, self.rank, num_workers, worker,
                           self.config.uneven, self.config.batch_size)

    def _block_start(self, done: int) -> int:
        size = self.config.shuffle_buffer if self.config.shuffle else 1
        return (done // size) * size

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        lo, hi = self._span(worker, num_workers)
        done = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            saved_workers = self._resume[2]
            if saved_workers is not None and saved_workers != num_workers:
                raise ValueError(f"cannot resume exactly: state saved with {saved_workers} "
                                 f"DataLoader worker(s), now running {num_workers}")
            done = worker_progress(self._resume[1], worker, num_workers, hi - lo,
                                   self.config.batch_size)
        if info is None:
            self._yielded = done
        yield from self._iter_span(lo, hi, done, ErrorPolicy(self.config.on_error, self.counters),
                                   count=info is None)
        if any(k not in INFO_KINDS for k in self.counters.counts):
            log.warning("rank %d worker %d epoch %d: skipped/filled %s", self.rank, worker,
                        self.epoch, self.counters.as_dict())

    def _planned(self, lo: int, hi: int, done: int,
                 policy: ErrorPolicy) -> Iterator[tuple[int, str, int, RawSample | None]]:
        """The span's ``(pos, shard, index, raw)`` items in this epoch's order, from ``lo + done``.

        With shuffling, blocks of ``shuffle_buffer`` items are read into a list and permuted; the
        already-consumed head of the first block is dropped *after* the permutation (that is what
        makes the resumed order exact). Without, items pass straight through: each image is then
        decoded right after it was read, while its bytes are still in cache.
        """
        cfg = self.config
        order = shard_order(self.shards, cfg.seed, self.epoch, cfg.shuffle)
        start = lo + self._block_start(done)          # == lo + done without shuffling
        items = _read_positions(segments(order, start, hi), policy)
        if not cfg.shuffle:
            yield from items
            return
        skip = lo + done - start                      # samples of the first block already consumed
        block = cfg.shuffle_buffer
        for b_start in range(start, hi, block):
            chunk = list(islice(items, min(block, hi - b_start)))   # [(pos, shard, idx, raw|None)]
            random.Random(f"crop-block/{cfg.seed}/{self.epoch}/{b_start}").shuffle(chunk)
            yield from chunk[skip:] if skip else chunk
            skip = 0

    def _iter_span(self, lo: int, hi: int, done: int, policy: ErrorPolicy,
                   count: bool = False) -> Iterator[dict]:
        """Finished samples of the span; failures are filled by repeats (see module doc)."""
        if lo + done >= hi:
            return
        fill = self.config.fill_failures
        reader = MemberReader()       # members of lazily scanned shards are read in _finish
        finish = functools.partial(self._finish, reader=reader)
        with reader:
            yield from self._fill(self._planned(lo, hi, done, policy), finish, policy, fill, count, (lo, hi))

    def _fill(self, items, finish, policy: ErrorPolicy, fill: bool, count: bool,
              span: tuple[int, int] = (0, 0)) -> Iterator[dict]:
        """``finish`` each planned item; a failed one is replaced by a repeat (``fill``) or dropped."""
        last_ok = None  # the last item that finished: re-finished (rarely) to fill a failure;
        owed = 0        # holding its finished sample would keep a decoded image alive, which
        #                 makes the allocator hand the next decode cold memory (~10% slower)
        for item in items:
            sample = finish(item, policy)
            if sample is None:
                if not fill:
                    continue
                if last_ok is not None:   # it finished before, so it will again -- unless
                    sample = finish(last_ok, policy)  # its shard changed since the scan
                if sample is None:        # then the next good sample pays (or we raise below)
                    last_ok = None
                    owed += 1
                    continue
                policy.counters.bump("filled", f"{item[1]}:{item[2]}")
                sample["__pad__"] = True
            else:
                last_ok = item
            if count:
                self._yielded += 1
            yield sample
            for _ in range(owed):
                policy.counters.bump("filled", sample["__shard__"])
                if count:
                    self._yielded += 1
                yield {**sample, "__pad__": True}
            owed, sample = 0, None  # drop our reference before the next decode (see last_ok)
        if owed:
            raise ShardReadError(f"rank {self.rank}: positions [{span[0]}, {span[1]}) hold no readable "
                                 f"sample, so the equal-length promise cannot be kept")

    def _finish(self, item: tuple, policy: ErrorPolicy, reader: MemberReader) -> dict | None:
        """JSON-decode (and with ``decode``, image-decode) one read item; None if it failed.

        Members are read here for lazily scanned (local, uncompressed) shards -- see
        :func:`_read_positions` -- and images decoded here, after the shuffle block: the block
        holds only member locations, each sample's bytes are cache-hot when parsed/decoded, and
        samples skipped on resume are never read.
        """
        pos, shard, index, raw = item
        if raw is None:
            return None
        key = raw.key
        try:
            json_bytes, data = raw.read(reader)
        except Exception as e:  # noqa: BLE001 - tarfile.ReadError, OSError
            policy.report("unreadable_member", f"{shard}:{key}", e)
            return None
        try:
            record = decode_json(json_bytes, f"{shard}:{key}.json")
            if record.get("key", key) != key:
                raise ValueError(f"record key {record.get('key')!r} != member key")
        except ValueError as e:
            policy.report("bad_json", f"{shard}:{key}", e)
            return None
        image = None
        if self.config.decode and data is not None:
            try:
                image = decode_image(data, self.config.max_image_pixels,
                                     f"{shard}:{key}.{raw.image_ext}")
            except ImageTooLargeError as e:
                policy.report("image_too_large", f"{shard}:{key}", e)
                return None
            except Exception as e:  # noqa: BLE001 - untrusted bytes: any plugin error is "bad"
                policy.report("bad_image", f"{shard}:{key}", e)
                return None
        return {"__key__": key, "json": record, "image": image, "image_bytes": data,
                "image_ext": raw.image_ext, "__shard__": shard, "__index__": index,
                "__pad__": pos >= self.total}


def _read_positions(segs: Sequence[Segment],
                    policy: ErrorPolicy) -> Iterator[tuple[int, str, int, RawSample | None]]:
    """Exactly one ``(pos, shard_name, index, raw or None)`` per planned position, in order.

    ``None`` marks a sample that could not be read (already reported): a missing index inside a
    shard, or the rest of a shard after a tar-level error or an early end. Local uncompressed
    shards are scanned lazily (members located, read in :meth:`ShardStream._finish`).
    """
    for seg in segs:
        name, expected, base = seg.shard.name, seg.start, seg.pos - seg.start
        path = local_path(seg.shard.url)
        try:
            with open_url(seg.shard.url) as f:
                for raw in iter_shard_samples(f, name, policy, seg.start, seg.stop, path):
                    while expected < raw.index:
                        yield base + expected, name, expected, None
                        expected += 1
                    yield base + expected, name, expected, raw
                    expected += 1
            if expected < seg.stop:
                policy.report("short_shard", seg.shard.url,
                              f"{seg.stop - expected} of the manifest's samples are missing")
        except ShardReadError:
            raise
        except Exception as e:  # tarfile.ReadError, OSError, EOFError, remote errors
            policy.report("corrupt_shard", seg.shard.url, repr(e))
        for index in range(expected, seg.stop):
            yield base + index, name, index, None
