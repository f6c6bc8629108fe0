"""Stream CROP shards into a PyTorch ``DataLoader``: seeded shuffling, exact splits, resumption.

How an epoch is planned (pure functions below, tested without a DataLoader)::

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
Failed samples (corrupt member/shard) are replaced by a repeat of a good sample (``__pad__``) so the
length promise holds under ``on_error="skip"``.

Use :meth:`ShardStream.loader` (or pass the same ``batch_size``/``drop_last`` to the DataLoader,
keep ``in_order=True`` and ``persistent_workers=False`` so ``set_epoch`` reaches the workers).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import random
import tarfile
from dataclasses import dataclass
from itertools import islice
from typing import IO, Iterator, Sequence
from urllib.parse import urlparse

import torch
from torch.utils.data import IterableDataset, get_worker_info

from crop.data.safety import (DEFAULT_MAX_IMAGE_PIXELS, INFO_KINDS, ON_ERROR, Counters, ErrorPolicy,
                              ImageTooLargeError, RawSample, ShardReadError, _Selector,
                              decode_image, decode_json, iter_shard_samples)

log = logging.getLogger(__name__)
UNEVEN = ("pad", "drop")


# ----------------------------------------------------------------------------- shard sources
@dataclass(frozen=True)
class ShardRef:
    url: str        # local path or URL, as opened
    name: str       # file name, e.g. demo-000003.tar
    samples: int    # sample (= json member) count


def _is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # one letter: a Windows drive


def _local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file://") else url


def open_url(url: str) -> IO[bytes]:
    """Open a shard/manifest for reading: local files directly, ``pipe:``/``ais:`` etc. through
    webdataset's ``gopen``, every other scheme (s3, gs, hf, http(s), memory, ...) through fsspec."""
    if _is_local(url):
        # unbuffered: tarfile's stream reader buffers itself; a second buffer only adds copies
        return open(_local_path(url), "rb", buffering=0)
    scheme = urlparse(url).scheme
    from webdataset import gopen

    if scheme in ("pipe", "ais", "htgs"):
        return gopen.gopen(url, "rb")
    try:
        import fsspec

        return fsspec.open(url, "rb").open()
    except (ImportError, ValueError):  # fsspec lacks the scheme or its backend package
        return gopen.gopen(url, "rb")


def _join(base_url: str, name: str) -> str:
    if os.path.basename(name) != name or name in ("", ".", ".."):
        raise ValueError(f"manifest shard name {name!r} is not a plain file name")
    if _is_local(base_url):
        return os.path.join(os.path.dirname(_local_path(base_url)), name)
    return base_url.rsplit("/", 1)[0] + "/" + name


def _from_manifest(url: str) -> list[ShardRef]:
    with open_url(url) as f:
        manifest = json.load(f)
    try:
        entries = [(e["shard"], int(e["samples"])) for e in manifest["shards"]]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{url}: not a CROP manifest (shards[].shard/samples): {e!r}") from e
    return [ShardRef(_join(url, name), name, n) for name, n in entries]


def count_samples(url: str) -> int:
    """Samples in one shard: its ``.stats.json`` beside it if readable, else a scan of the names."""
    if url.endswith(".tar"):
        try:
            with open_url(url[:-4] + ".stats.json") as f:
                return int(json.load(f)["samples"])
        except Exception:  # noqa: BLE001 - absent/unreadable (remote backends raise their own types)
            pass
    if not _is_local(url):
        log.warning("%s: no manifest or stats file; streaming the whole shard to count it", url)
    sel = _Selector(url, ErrorPolicy("skip", max_warnings=0), 0, None)
    try:
        with open_url(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                if info.isreg():
                    sel(info.name)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{url}: cannot count the shard's samples (no manifest/stats): {e!r}") from e
    return sel.done + int(sel.has_json)


def _expand(src: str) -> list[str]:
    import braceexpand

    out: list[str] = []
    for item in braceexpand.braceexpand(src):
        before = len(out)
        if not glob.has_magic(item):
            out.append(item)
        elif _is_local(item):
            out.extend(sorted(glob.glob(_local_path(item))))
        else:
            import fsspec

            fs, _, paths = fsspec.core.get_fs_token_paths(item)
            out.extend(sorted(fs.unstrip_protocol(p) for p in paths))
        if len(out) == before:
            raise FileNotFoundError(f"shard pattern {item!r} matches nothing")
    return out


def resolve_shards(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[ShardRef]:
    """Shard list with counts from paths, URLs, globs, ``{a..b}`` braces, folders or manifests."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    refs: list[ShardRef] = []
    for src in map(os.fspath, sources):
        for url in _expand(src):
            if url.endswith(".json"):
                refs.extend(_from_manifest(url))
            elif _is_local(url) and os.path.isdir(_local_path(url)):
                folder = _local_path(url)
                manifest = os.path.join(folder, "manifest.json")
                if os.path.exists(manifest):
                    refs.extend(_from_manifest(manifest))
                else:
                    tars = sorted(glob.glob(os.path.join(folder, "*.tar")))
                    if not tars:
                        raise FileNotFoundError(f"{folder}: no manifest.json and no *.tar")
                    refs.extend(ShardRef(t, os.path.basename(t), count_samples(t)) for t in tars)
            else:
                refs.append(ShardRef(url, url.rsplit("/", 1)[-1], count_samples(url)))
    if not refs:
        raise ValueError(f"no shards in {list(sources)!r}")
    seen: set[str] = set()
    for r in refs:
        if r.url in seen:
            raise ValueError(f"shard {r.url} is listed twice")
        seen.add(r.url)
    return refs


# ----------------------------------------------------------------------------- epoch plan
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
        policy = ErrorPolicy(self.config.on_error, self.counters)
        samples = self._iter_span(lo, hi, done, policy)
        if info is None:
            for sample in samples:
                self._yielded += 1
                yield sample
        else:
            yield from samples
        if any(k not in INFO_KINDS for k in self.counters.counts):
            log.warning("rank %d worker %d epoch %d: skipped/filled %s", self.rank, worker,
                        self.epoch, self.counters.as_dict())

    def _iter_span(self, lo: int, hi: int, done: int, policy: ErrorPolicy) -> Iterator[dict]:
        cfg = self.config
        if lo + done >= hi:
            return
        order = shard_order(self.shards, cfg.seed, self.epoch, cfg.shuffle)
        start = lo + self._block_start(done)
        skip = lo + done - start                      # samples of the first block already consumed
        items = _read_positions(segments(order, start, hi), self.total, policy)
        block = cfg.shuffle_buffer if cfg.shuffle else 1
        last_good: dict | None = None
        owed = 0
        finish = self._finish
        for b_start in range(start, hi, block):
            chunk = list(islice(items, min(block, hi - b_start)))   # [(pos, shard, idx, raw|None)]
            if cfg.shuffle:
                random.Random(f"crop-block/{cfg.seed}/{self.epoch}/{b_start}").shuffle(chunk)
            for item in chunk[skip:] if skip else chunk:
                sample = finish(item, policy)
                if sample is None:
                    if not cfg.fill_failures:
                        continue
                    if last_good is None:
                        owed += 1
                        continue
                    policy.counters.bump("filled", f"{item[1]}:{item[2]}")
                    sample = {**last_good, "__pad__": True}
                last_good = sample
                yield sample
                for _ in range(owed):
                    policy.counters.bump("filled", sample["__shard__"])
                    yield {**sample, "__pad__": True}
                owed = 0
            skip = 0
        if owed:
            raise ShardReadError(f"rank {self.rank}: positions [{lo}, {hi}) hold no readable "
                                 f"sample, so the equal-length promise cannot be kept")

    def _finish(self, item, policy: ErrorPolicy) -> dict | None:
        pos, shard, index, raw = item
        if raw is None:
            return None
        try:
            record = decode_json(raw.json_bytes, f"{shard}:{raw.key}.json")
            if record.get("key", raw.key) != raw.key:
                raise ValueError(f"record key {record.get('key')!r} != member key")
        except ValueError as e:
            policy.report("bad_json", f"{shard}:{raw.key}", e)
            return None
        image = None
        if self.config.decode and raw.image_bytes is not None:
            try:
                image = decode_image(raw.image_bytes, self.config.max_image_pixels,
                                     f"{shard}:{raw.key}.{raw.image_ext}")
            except ImageTooLargeError as e:
                policy.report("image_too_large", f"{shard}:{raw.key}", e)
                return None
            except Exception as e:  # noqa: BLE001 - untrusted bytes: any plugin error is "bad"
                policy.report("bad_image", f"{shard}:{raw.key}", e)
                return None
        return {"__key__": raw.key, "json": record, "image": image, "image_bytes": raw.image_bytes,
                "image_ext": raw.image_ext, "__shard__": shard, "__index__": raw.index,
                "__pad__": pos >= self.total}


def _read_positions(segs: Sequence[Segment], total: int,
                    policy: ErrorPolicy) -> Iterator[tuple[int, str, int, RawSample | None]]:
    """Exactly one ``(pos, shard_name, index, raw or None)`` per planned position, in order.

    ``None`` marks a sample that could not be read (already reported): a missing index inside a
    shard, or the rest of a shard after a tar-level error or an early end.
    """
    for seg in segs:
        name, expected = seg.shard.name, seg.start
        try:
            with open_url(seg.shard.url) as f:
                for raw in iter_shard_samples(f, name, policy, seg.start, seg.stop):
                    while expected < raw.index:
                        yield seg.pos + expected - seg.start, name, expected, None
                        expected += 1
                    yield seg.pos + expected - seg.start, name, expected, raw
                    expected += 1
            if expected < seg.stop:
                policy.report("short_shard", seg.shard.url,
                              f"{seg.stop - expected} of the manifest's samples are missing")
        except ShardReadError:
            raise
        except Exception as e:  # tarfile.ReadError, OSError, EOFError, remote errors
            policy.report("corrupt_shard", seg.shard.url, repr(e))
        for index in range(expected, seg.stop):
            yield seg.pos + index - seg.start, name, index, None
