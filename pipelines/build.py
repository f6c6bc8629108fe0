"""The main job: Visual-CoT boxes + LLaVA instructions -> deterministic WebDataset shards.

Graph (each step a thin shell over a pure function in ``pipelines.*``)::

    input files --Index--> chunks (byte ranges) + input checksums       [one worker per file]
    chunks --Reshuffle--> ReadChunks (records + RecordRef) --Parse--> Items / rejects   [all workers]
                                  +--> Count per source ("read")
    (source, sort_hash) --CombinePerKey(ToList)--> Select (cap/fraction, bottom-k by hash)
                                            |  side input
    Items --AssignShard--> (shard, Item) --GroupByKey--> WriteShard (reads each record again and
        its image, rejects duplicate keys, finalizes records, writes tar + stats marker)
    shard stats + rejects + counts + input checksums --> WriteOutputs (manifest, stats, rejects,
        reconciliation, dataset card)

Only small packed Items (source, hash, where the record lives: ~32 bytes) cross stages and
shuffles, so memory does not grow with the records' size; record and image bytes are read by
the writer of their shard (``pipelines.chunks``).
Mixing: within each source, selected samples are ranked by a seeded hash and dealt round-robin
over all shards, with per-source offsets, so every shard holds every source in proportion.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import os
import posixpath
import struct
import time
from typing import Iterator, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import chunks
from pipelines import shards as io_
from pipelines import summary
from pipelines.finalize import finalize
from pipelines.images import ImageRoot, read_image
from pipelines.recipe import VISUAL_COT_SOURCES, Recipe, metadata_file_names
from pipelines.sources import (
    STAGE_DEDUP,
    STAGE_PARSE,
    STAGE_WRITE,
    Rejected,
    internal_error,
    parse_cot_line,
    parse_llava_item,
    parse_viscot_llava_item,
    record_id,
    reject_record,
    viscot_llava_source,
)

log = logging.getLogger("crop.build")
REJECTS = "rejects"
METRICS = "crop.build"  # Beam metrics namespace: live progress in the Dataflow / Flink / Spark UIs


# --------------------------------------------------------------------------- inputs
def list_inputs(recipe: Recipe) -> list[tuple[str, str, str]]:
    """``(format, source_tag, path)`` for every input file the recipe names; errors name the file."""
    ins, out = recipe.inputs, []
    if ins.visual_cot_dir:
        for source in sorted(recipe.sources):
            tried = [io_.join(ins.visual_cot_dir, name) for name in metadata_file_names(source)]
            path = next((t for t in tried if FileSystems.exists(t)), None)
            if path is None:
                raise FileNotFoundError(f"recipe source {source!r}: none of {', '.join(tried)} exists")
            out.append(("cot_jsonl", source, path))
    if ins.visual_cot_llava_json:
        if not FileSystems.exists(ins.visual_cot_llava_json):
            raise FileNotFoundError(f"recipe.inputs.visual_cot_llava_json: {ins.visual_cot_llava_json} does not exist")
        out.append(("viscot_llava", "", ins.visual_cot_llava_json))
    if ins.llava_json and recipe.llava.cap != 0:
        if not FileSystems.exists(ins.llava_json):
            raise FileNotFoundError(f"recipe.inputs.llava_json: {ins.llava_json} does not exist")
        out.append(("llava_json", "llava", ins.llava_json))
    return out


def read_input(spec: tuple[str, str, str]) -> Iterator[tuple[str, str, int, object]]:
    """Yield ``(source, file_name, line, payload)``: a raw line (JSONL, bytes) or a parsed element.

    The whole file in order (tests, benchmarks); the build reads the same records chunk by chunk
    on many workers (``IndexFn`` -> ``ReadChunkFn``). JSON lists are parsed by ijson's C backend
    (the LLaVA file is ~1 GB); a file that is not a valid JSON list fails the build naming the
    element where parsing stopped: records after it cannot be read, and silently losing them
    would break the counts.
    """
    fmt, _, path = spec
    for chunk in chunks.index_file(0, fmt, path).chunks:
        for _, el in _chunk_records(spec, chunk):
            yield el


def _chunk_records(spec: tuple[str, str, str], chunk: chunks.Chunk) -> Iterator[tuple[chunks.RecordRef, tuple]]:
    """``(ref, (source, file_name, line, payload))`` for every record of one chunk."""
    fmt, tag, path = spec
    name = posixpath.basename(path)
    for ref, payload in chunks.read_chunk(fmt, path, chunk):
        source = viscot_llava_source(payload, VISUAL_COT_SOURCES) if fmt == "viscot_llava" else tag
        yield ref, (source, name, ref.line, payload)


READ_COUNTS = "read_counts"
INPUT_SUMS = "input_sums"


class IndexFn(beam.DoFn):
    """Stream one input file once: its checksum (tagged ``INPUT_SUMS``) and its chunks.

    One element per file, so one worker streams each file; the chunks it emits are small (a byte
    range, or 8 bytes per JSON element) and are redistributed to every worker for parsing."""

    def __init__(self, chunk_records: int | None = None):  # None: chunks.chunk_size of each file
        self.chunk_records = chunk_records

    def process(self, indexed_spec):
        spec_index, (fmt, _, path) = indexed_spec
        t0, name = time.perf_counter(), posixpath.basename(path)
        index = chunks.index_file(spec_index, fmt, path, self.chunk_records)
        beam.metrics.Metrics.gauge(METRICS, f"records_total/{name}").set(index.total)
        log.info("indexed %s: %d records in %d chunk(s), %.1f MB in %.1f s", name, index.total,
                 len(index.chunks), index.size / 1e6, time.perf_counter() - t0)
        yield beam.pvalue.TaggedOutput(INPUT_SUMS, {"input": INPUT_FIELD[fmt], "path": name, "bytes": index.size,
                                                    "sha256": index.sha256})
        yield from index.chunks


class ReadChunkFn(beam.DoFn):
    """Emit every record of one chunk with its ``RecordRef``, then ``(source, n)`` counts as a
    tagged output (one count per chunk, not one element per record: the reconciliation's
    "read" side at no per-record cost). Progress: a log line per tenth of a file (and for its
    last chunk) naming the records read out of the file's total, and Beam counters."""

    def __init__(self, specs: list[tuple[str, str, str]]):
        self.specs = specs
        self.read_counter = beam.metrics.Metrics.counter(METRICS, "records_read")

    def process(self, chunk: chunks.Chunk):
        chunk = chunks.Chunk(*chunk)
        spec = self.specs[chunk.spec_index]
        name = posixpath.basename(spec[2])
        counts: dict[str, int] = {}
        n = 0
        for ref, el in _chunk_records(spec, chunk):
            counts[el[0]] = counts.get(el[0], 0) + 1
            n += 1
            yield el + (ref,)
        self.read_counter.inc(n)
        beam.metrics.Metrics.counter(METRICS, f"records_read/{name}").inc(n)
        step = max(1, chunk.n_chunks // 10)
        if (chunk.index + 1) % step == 0 or chunk.index + 1 == chunk.n_chunks:
            log.info("read %s: chunk %d of %d, records %d-%d of %d", name, chunk.index + 1, chunk.n_chunks,
                     chunk.first, chunk.first + n - 1, chunk.total)
        for source, k in sorted(counts.items()):
            yield beam.pvalue.TaggedOutput(READ_COUNTS, (source, k))


class Item(NamedTuple):
    """What the shuffles carry for one valid record, packed into ~32 bytes (:meth:`pack`): the
    selection needs ``source`` and ``sort_hash``; ``spec_index``/``line``/``start``/``end`` let
    the shard writer read the record again (``chunks.read_record``) and parse it again for
    everything else (its key included) instead of every parsed record being held between stages.

    Bytes, not a tuple: a runner may hold a shuffle's values decoded (Beam's in-memory
    FnApiRunner keeps every GroupByKey value as a Python object until the group is read), and a
    6-tuple of ints and a str costs ~270 bytes there, one ``bytes`` ~70."""
    source: str
    sort_hash: int
    spec_index: int
    line: int
    start: int
    end: int

    _FIXED = struct.Struct(">qHIQI")  # hash, input, line, start, length; then the source's UTF-8

    def pack(self) -> bytes:
        return self._FIXED.pack(self.sort_hash, self.spec_index, self.line, self.start,
                                self.end - self.start) + self.source.encode("utf-8")

    @classmethod
    def unpack(cls, data: bytes) -> "Item":
        sort_hash, spec_index, line, start, length = cls._FIXED.unpack_from(data)
        return cls(data[cls._FIXED.size:].decode("utf-8"), sort_hash, spec_index, line, start, start + length)


def parse_record(recipe: Recipe, source: str, file: str, line: int, payload) -> dict:
    """One record -> candidate (raises ``Rejected``): the parser its format needs."""
    if file.endswith("_cot_train.jsonl"):
        return parse_cot_line(source, VISUAL_COT_SOURCES[source], file, line, payload,
                              seed=recipe.seed, grid=recipe.grid_size, policy=recipe.multi_box,
                              max_regions=recipe.max_regions)
    if source == "llava":
        return parse_llava_item(payload, file, line - 1, seed=recipe.seed)
    return parse_viscot_llava_item(payload, file, line - 1, seed=recipe.seed, known_sources=list(VISUAL_COT_SOURCES))


class ParseFn(beam.DoFn):
    """Parse one record into a candidate or a reject; never fails the build for one record.

    The parsers are total (they return a candidate or raise :class:`Rejected`); any other
    exception is a bug in them, and still becomes a reject (``internal_error``, with the
    exception's class and message) unless ``fail_on_internal_error`` asks to fail at once."""

    def __init__(self, recipe: Recipe, fail_on_internal_error: bool = False):
        self.recipe, self.fail_on_internal_error = recipe, fail_on_internal_error
        self.rejected = beam.metrics.Metrics.counter(METRICS, "rejected")
        self.internal_errors = beam.metrics.Metrics.counter(METRICS, "internal_errors")

    def process(self, el):
        """``el``: ``(source, file, line, payload[, ref])``. With a ``RecordRef`` (the build) a
        valid record leaves as a compact :class:`Item`; without one (unit use) as the candidate."""
        source, file, line, payload = el[:4]
        try:
            cand = self.parse(source, file, line, payload)
        except Rejected as e:
            err = e
        except Exception as e:  # noqa: BLE001 - totality: one record never stops the build
            if self.fail_on_internal_error:
                raise
            self.internal_errors.inc()
            log.error("internal error on %s:%s: %s", file, line, e, exc_info=True)
            err = internal_error(STAGE_PARSE, e)
        else:
            if len(el) > 4:
                ref = el[4]
                yield Item(cand["source"], cand["sort_hash"], ref[0], ref[1], ref[2], ref[3]).pack()
            else:
                yield cand
            return
        self.rejected.inc()
        yield beam.pvalue.TaggedOutput(REJECTS, reject_record(source, file, line, record_id(payload), err))

    def parse(self, source: str, file: str, line: int, payload) -> dict:
        return parse_record(self.recipe, source, file, line, payload)


# --------------------------------------------------------------------------- selection and shards
class CollectHashesFn(beam.CombineFn):
    """One source's sort hashes in an ``array('q')``: 8 bytes per record, where a list of Python
    ints (Beam's ToList) costs ~40 in every stage that holds it. ``None`` (the per-source seed
    of ``build``) adds nothing but makes the source's entry exist."""

    def create_accumulator(self):
        from array import array

        return array("q")

    def add_input(self, acc, h):
        if h is not None:
            acc.append(h)
        return acc

    def merge_accumulators(self, accs):
        from array import array

        out = array("q")
        for a in accs:
            out.extend(a)
        return out

    def extract_output(self, acc):
        return acc


def select(kv, recipe: Recipe) -> tuple[str, dict]:
    """Bottom-k by seeded hash over distinct keys: the same seed and inputs select the same
    records anywhere. Records sharing a key (duplicates) share a hash and are counted once here;
    the writer keeps the first and rejects the others (``duplicate_key``). ``capped`` counts every
    record, duplicates included, that the cap left out. ``hashes``: an ``array('q')`` (the
    build) or any iterable of ints and ``None``. ``selected_hashes`` is a sorted ``array('q')``
    (8 bytes per selected record: it is a side input on every worker)."""
    from array import array

    import numpy as np

    source, hashes = kv
    spec = recipe.llava if source == "llava" else recipe.sources.get(source)
    if isinstance(hashes, array):
        values = np.frombuffer(hashes, dtype=np.int64)
    else:  # None: the per-source seed, not a record
        values = np.fromiter((h for h in hashes if h is not None), dtype=np.int64)
    values = np.sort(values)  # sort hashes are 63-bit: int64 holds them
    unique = np.unique(values)
    n = 0 if spec is None else spec.resolve(len(unique))
    wanted = None if spec is None else (spec.cap if spec.cap is not None else n)
    if spec is not None and spec.cap is not None and spec.cap > len(unique):
        msg = f"recipe cap for {source} is {spec.cap} but only {len(unique)} valid records exist; taking all"
        if recipe.strict_caps:
            raise ValueError(msg + " (strict_caps is set)")
        # information, not a warning: a cap is an upper bound (the summary and stats.json report
        # the shortfall); recipes that need the exact count set strict_caps.
        log.info(msg)
    taken = int(np.searchsorted(values, unique[n - 1], side="right")) if n else 0
    selected = array("q")
    selected.frombytes(unique[:n].astype(np.int64).tobytes())
    return source, {"selected_hashes": selected, "selected": n, "available": int(len(unique)),
                    "capped": int(len(values)) - taken, "wanted": wanted}


def shard_count(selection: dict, max_samples: int) -> int:
    """Number of shards the selected records are dealt over (0 when nothing was selected)."""
    total = sum(v["selected"] for v in selection.values())
    return max(1, math.ceil(total / max_samples)) if total else 0


class AssignShardFn(beam.DoFn):
    """Deal each source's selected records round-robin over all shards (by hash rank)."""

    def __init__(self, max_samples: int):
        self.max_samples = max_samples
        self._plan = None

    def _make_plan(self, selection: dict):
        n_shards = shard_count(selection, self.max_samples)
        offsets, acc = {}, 0
        for s in sorted(selection):
            offsets[s] = acc
            acc += selection[s]["selected"]
        return n_shards, offsets

    def process(self, item, selection):
        """``item``: a packed :class:`Item`; yields ``(shard index, item)`` when selected."""
        if self._plan is None or self._plan[0] is not selection:
            self._plan = (selection, self._make_plan(selection))
            beam.metrics.Metrics.gauge(METRICS, "shards_planned").set(self._plan[1][0])
        n_shards, offsets = self._plan[1]
        it = Item.unpack(item)
        hashes = selection.get(it.source, {}).get("selected_hashes", ())
        rank = bisect.bisect_left(hashes, it.sort_hash)
        if rank < len(hashes) and hashes[rank] == it.sort_hash:  # else above the cap
            yield (offsets[it.source] + rank) % n_shards, item


def prefetch(fn, items: list, window: int = 32, workers: int = 8) -> Iterator:
    """``map(fn, items)`` in order, with up to ``window`` calls running ahead in I/O threads.

    Image reads are I/O bound (local disk or object store); overlapping them with the CPU work of
    finalizing and tarring keeps the writer busy. The window bounds memory to ~window images.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result


class _Progress:
    """Shards finished by this worker process and its sample rate, for the per-shard log line.

    On the in-memory Direct runner this is the whole job; on distributed runners each worker
    logs its own share and the Beam counters (``METRICS``) give the job-wide totals."""

    def __init__(self):
        self.clock = time.perf_counter
        self.t0, self.shards, self.samples = None, 0, 0

    def start(self) -> None:
        if self.t0 is None:  # the first shard this process writes
            self.t0 = self.clock()

    def done(self, samples: int, planned: int | None = None) -> str:
        self.shards += 1
        self.samples += samples
        rate = self.samples / max(self.clock() - self.t0, 1e-9)
        of = f" of {planned} planned" if planned else ""
        return f"{self.shards}{of} shards done by this process, {rate:,.0f} samples/s"


class WriteShardFn(beam.DoFn):
    """Read the images of one shard, finalize its records, write the tar and its stats marker.

    Committing a shard (fsync + rename, or the upload to an object store, then the stats marker)
    is I/O wait, so it runs on one background thread while the next shard of the bundle is being
    tarred; at most ``MAX_PENDING`` commits wait, and ``finish_bundle`` emits the last ones. The
    order per shard is unchanged (tar durable under its final name, then its marker), so crash
    safety and resume are as before. Counters and log lines are updated in the bundle's thread.
    """

    MAX_PENDING = 2

    def __init__(self, recipe: Recipe, out_dir: str, fail_on_internal_error: bool = False,
                 specs: list[tuple[str, str, str]] | None = None):
        """``specs``: ``list_inputs(recipe)``, which :class:`Item`'s ``spec_index`` points into."""
        self.recipe, self.out_dir, self.fail_on_internal_error = recipe, out_dir, fail_on_internal_error
        self.specs = specs
        self.internal_errors = beam.metrics.Metrics.counter(METRICS, "internal_errors")
        self.samples_written = beam.metrics.Metrics.counter(METRICS, "samples_written")
        self.shards_written = beam.metrics.Metrics.counter(METRICS, "shards_written")
        self.shards_skipped = beam.metrics.Metrics.counter(METRICS, "shards_skipped")
        self.bytes_written = beam.metrics.Metrics.counter(METRICS, "bytes_written")
        self.rejected = beam.metrics.Metrics.counter(METRICS, "rejected")

    def setup(self):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.progress = _Progress()
        self.planned = None  # shards in the whole job, once the selection is known
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crop-commit")
        self._pending: deque = deque()  # (future of _commit, "shard i of N") in submission order

    def teardown(self):
        self._committer.shutdown(wait=True)

    def start_bundle(self):
        self._pending.clear()

    def process(self, kv, selection=None) -> Iterator[dict]:
        """``selection`` (the Select side input) only serves the "shard i of N" log line."""
        index, cands = kv
        shard = io_.shard_file_name(self.recipe.shard_name, index)
        of = f"shard {index + 1}"
        if selection is not None:
            self.planned = shard_count(selection, self.recipe.shard_max_samples)
            of += f" of {self.planned}"
        stats_path = io_.join(self.out_dir, io_.stats_file_name(shard))
        if io_.exists(stats_path) and io_.exists(io_.join(self.out_dir, shard)):
            log.info("%s (%s) already complete, skipped", shard, of)
            self.shards_skipped.inc()
            yield json.loads(io_.read_bytes(stats_path))
            return
        try:
            yield from self._committed(block=False)
            self.progress.start()
            pending, stats = self._write(shard, cands)
            self._pending.append((self._committer.submit(self._commit, pending, stats_path, stats), of))
            while len(self._pending) > self.MAX_PENDING:
                yield from self._committed(block=True, limit=1)
        except BaseException:
            self._abandon()
            raise

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows

        try:
            for stats in self._committed(block=True):
                yield GlobalWindows.windowed_value(stats)
        except BaseException:
            self._abandon()
            raise

    def _committed(self, block: bool, limit: int | None = None) -> Iterator[dict]:
        """Stats of finished commits, oldest first (waiting for them when ``block``)."""
        n = 0
        while self._pending and (block or self._pending[0][0].done()) and (limit is None or n < limit):
            future, of = self._pending.popleft()
            stats = future.result()  # re-raises a failed commit here, in the bundle's thread
            n += 1
            self.samples_written.inc(stats["samples"])
            self.shards_written.inc()
            self.bytes_written.inc(stats["bytes"])
            self.rejected.inc(len(stats["rejects"]))
            log.info("wrote %s (%s): %d samples, %.1f MB, %d rejected; %s", stats["shard"], of, stats["samples"],
                     stats["bytes"] / 1e6, len(stats["rejects"]), self.progress.done(stats["samples"], self.planned))
            yield stats

    def _abandon(self) -> None:
        """On a failing bundle: let running commits finish (each leaves a complete shard or only
        a temporary file), so no thread still writes into the output when the error surfaces."""
        while self._pending:
            future, _ = self._pending.popleft()
            try:
                future.result()
            except Exception:  # noqa: BLE001 - the bundle's own error is the one re-raised
                pass

    def _candidate(self, v) -> dict:
        """The candidate of an :class:`Item`: its record read again and parsed again."""
        if isinstance(v, dict):
            return v
        it = Item.unpack(v)
        fmt, _, path = self.specs[it.spec_index]
        payload = chunks.read_record(fmt, path, chunks.RecordRef(it.spec_index, it.line, it.start, it.end))
        try:
            cand = parse_record(self.recipe, it.source, posixpath.basename(path), it.line, payload)
        except Rejected:
            cand = None
        if cand is None or cand["sort_hash"] != it.sort_hash:
            raise RuntimeError(f"{path}: record {it.line} no longer parses to what was selected: the input "
                               "changed while the build ran")
        return cand

    @staticmethod
    def _commit(pending: io_.PendingShard, stats_path: str, stats: dict) -> dict:
        pending.commit()
        io_.write_json(stats_path, stats)  # written last: marks the shard complete
        return stats

    def _write(self, shard: str, cands) -> tuple[io_.PendingShard, dict]:
        """Tar the shard to a temporary file; returns it (not yet committed) and its stats.

        ``cands``: packed :class:`Item` s (the build: each record is read and parsed again here,
        so no stage holds parsed records; a shard's candidates are held while it is written) or
        candidate dicts (unit use)."""
        r = self.recipe
        remote = not (io_.is_local(r.inputs.image_root) and all(io_.is_local(sp[2]) for sp in self.specs or ()))
        cands = list(prefetch(self._candidate, list(cands)) if remote else map(self._candidate, cands))
        cands.sort(key=lambda c: (c["key"], c["source_file"], c["line"]))
        rejects, per_source, per_kind = [], {}, {}
        kept, first = [], None
        for c in cands:
            # Duplicates share their key, hence their hash, rank and shard, so they always meet
            # in the same writer (no shuffle of their own); the first by (file, line) is kept.
            if first is not None and c["key"] == first["key"]:
                err = Rejected(STAGE_DEDUP, "duplicate_key",
                               f"key {c['key']} already taken by {first['source_file']}:{first['line']}")
                rejects.append(reject_record(c["source"], c["source_file"], c["line"], c["source_id"], err))
            else:
                first = c
                kept.append(c)
        del cands
        sample_stats = summary.empty_sample_stats()
        image_root = ImageRoot(r.inputs.image_root)  # the root's real path, resolved once per shard

        def reject(c, err: Rejected) -> None:
            rejects.append(reject_record(c["source"], c["source_file"], c["line"], c["source_id"], err))

        def fetch(c):  # runs in I/O threads; a failure is returned, not raised, to keep order
            if c["image_rel"] is None:
                return c, None, None
            try:
                return (c, *read_image(image_root, c["image_dirs"], c["image_rel"]))
            except Exception as e:  # noqa: BLE001 - Rejected, or a bug / I/O error judged below
                return c, e, None

        def samples() -> Iterator:
            # Object stores have high latency per read: overlap reads in I/O threads. Local files
            # come from disk or page cache fast enough that thread hand-offs cost more than they save.
            fetched = prefetch(fetch, kept) if not io_.is_local(r.inputs.image_root) else map(fetch, kept)
            try:
                yield from finalized(fetched)
            finally:  # on any error, stop the prefetch threads now, not at garbage collection
                if hasattr(fetched, "close"):
                    fetched.close()

        def finalized(fetched) -> Iterator:
            for c, rel, data in fetched:
                if isinstance(rel, OSError):
                    # An I/O failure (network, disk) says nothing about the record: fail the bundle
                    # so that the runner retries it, rather than publish a reject for a good record.
                    raise rel
                try:
                    if isinstance(rel, BaseException):
                        raise rel
                    rec, ext, info = finalize(c, rel, data, grid=r.grid_size, policy=r.multi_box,
                                              trailing_period=r.trailing_period, check=r.image_check,
                                              max_regions=r.max_regions)
                    # Encoded here, inside the record's guard: the tar writer only copies bytes.
                    rec_json = json.dumps(rec, sort_keys=True, ensure_ascii=False).encode("utf-8")
                except Rejected as e:
                    reject(c, e)
                    continue
                except Exception as e:  # noqa: BLE001 - totality: one record never stops the build
                    if self.fail_on_internal_error:
                        raise
                    self.internal_errors.inc()
                    log.error("internal error on %s:%s: %s", c["source_file"], c["line"], e, exc_info=True)
                    reject(c, internal_error(STAGE_WRITE, e))
                    continue
                per_source[c["source"]] = per_source.get(c["source"], 0) + 1
                per_kind[c["kind"]] = per_kind.get(c["kind"], 0) + 1
                summary.add_sample(sample_stats, rec, info or c["boxes_info"])
                yield rec["key"], rec_json, data, ext

        pending = io_.begin_shard(io_.join(self.out_dir, shard), samples())
        stats = {"schema_version": summary.SCHEMA_VERSION, "shard": shard,
                 "samples": sum(per_source.values()), **pending.info,
                 "per_source": dict(sorted(per_source.items())), "per_kind": dict(sorted(per_kind.items())),
                 "rejects": rejects, "sample_stats": sample_stats}
        return pending, stats


INPUT_FIELD = {"cot_jsonl": "visual_cot_dir", "viscot_llava": "visual_cot_llava_json", "llava_json": "llava_json"}


def published_recipe(recipe: Recipe, with_input_roots: bool = True) -> dict:
    """The recipe as ``manifest.json`` states it: the input roots once (or null with
    ``--omit-input-roots``); the card shows it without them."""
    d = recipe.to_dict()
    if not with_input_roots:
        d["inputs"] = {k: None for k in d.get("inputs", {})}
    return d


def write_outputs(_, *, recipe: Recipe, out_dir: str, shard_stats, rejects, read, selection, inputs,
                  publish_input_roots: bool = True):
    manifest, stats, all_rejects = summary.build_outputs(
        name=recipe.name, recipe=published_recipe(recipe, publish_input_roots), shard_stats=shard_stats,
        rejects=rejects,
        read=dict(read), selection={s: {k: v[k] for k in ("selected", "available", "capped", "wanted")}
                                    for s, v in selection.items()},
        inputs=inputs)
    io_.atomic_write(io_.join(out_dir, "rejects.jsonl"),
                     "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in all_rejects).encode())
    io_.write_json(io_.join(out_dir, "stats.json"), stats)
    from crop.data.card import CARD_NAME, render_card  # written through Beam's FileSystems, not fsspec

    io_.atomic_write(io_.join(out_dir, CARD_NAME), render_card(manifest, stats, manifest["recipe"]).encode("utf-8"))
    io_.write_json(io_.join(out_dir, "manifest.json"), manifest)  # last: the build is complete
    return manifest["totals"]["samples"]


# --------------------------------------------------------------------------- graph
def build(p: beam.Pipeline, recipe: Recipe, out_dir: str, fail_on_internal_error: bool = False,
          publish_input_roots: bool = True) -> None:
    """The graph. ``fail_on_internal_error``: an exception escaping a record's processing fails
    the job at once (CI, tests); otherwise it is an ``internal_error`` reject (see ``ParseFn``).
    ``publish_input_roots``: False leaves the input folders' paths out of ``manifest.json``."""
    specs = list_inputs(recipe)
    indexed = (p | "Inputs" >> beam.Create(list(enumerate(specs)))
               | "Index" >> beam.ParDo(IndexFn()).with_outputs(INPUT_SUMS, main="chunks"))
    # Each file is streamed once by one worker (Index); its chunks are spread over all workers,
    # which read and parse them. Valid records leave the parse as small Items (the record itself is
    # read again by its shard writer), so no stage holds parsed records.
    read = (indexed.chunks | "SpreadChunks" >> beam.Reshuffle()
            | "ReadChunks" >> beam.ParDo(ReadChunkFn(specs)).with_outputs(READ_COUNTS, main="records"))
    read_counts = read[READ_COUNTS] | "CountRead" >> beam.CombinePerKey(sum)
    parsed = read.records | "Parse" >> beam.ParDo(ParseFn(recipe, fail_on_internal_error)).with_outputs(REJECTS, main="ok")
    # Every source the recipe asks for gets a selection entry, even with no valid record at all,
    # so its cap shortfall is reported (and strict_caps fires): a None hash per source seeds it.
    wanted = sorted(recipe.sources) + (["llava"] if any(spec[1] == "llava" for spec in specs) else [])
    seeds = p | "RecipeSources" >> beam.Create([(source, None) for source in wanted])
    selection = ((parsed.ok | "HashBySource" >> beam.Map(lambda item: Item.unpack(item)[:2]), seeds)
                 | "WithRecipeSources" >> beam.Flatten()
                 | "CollectHashes" >> beam.CombinePerKey(CollectHashesFn())
                 | "Select" >> beam.Map(select, recipe))
    shard_stats = (parsed.ok
                   | "Assign" >> beam.ParDo(AssignShardFn(recipe.shard_max_samples), beam.pvalue.AsDict(selection))
                   | "GroupByShard" >> beam.GroupByKey()
                   | "WriteShards" >> beam.ParDo(WriteShardFn(recipe, out_dir, fail_on_internal_error, specs),
                                               beam.pvalue.AsDict(selection)))
    rejects = parsed[REJECTS]
    AsList = beam.pvalue.AsList
    (p | "Finish" >> beam.Create([None])
       | "WriteOutputs" >> beam.Map(write_outputs, recipe=recipe, out_dir=out_dir,
                                    shard_stats=AsList(shard_stats), rejects=AsList(rejects),
                                    read=AsList(read_counts), selection=beam.pvalue.AsDict(selection),
                                    inputs=AsList(indexed[INPUT_SUMS]), publish_input_roots=publish_input_roots))


def progress_counters(result) -> dict[str, int]:
    """The job's ``METRICS`` counters from a finished ``PipelineResult`` (committed values where
    the runner reports them, else attempted), e.g. ``{"samples_written": 80, ...}``."""
    from apache_beam.metrics.metric import MetricsFilter

    out = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(METRICS))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (value or 0)
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- output folder policy
BUILD_FILE = "_build.json"


def build_fingerprint(recipe: Recipe) -> str:
    """Recipe + (path, size, mtime) of every input: a resume is only safe when none changed."""
    parts = [recipe.fingerprint()]
    for _, _, path in list_inputs(recipe):
        meta = FileSystems.match([path])[0].metadata_list[0]
        parts.append(f"{path}|{meta.size_in_bytes}|{getattr(meta, 'last_updated_in_seconds', 0)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def prepare_output(out_dir: str, recipe: Recipe, overwrite: bool) -> str:
    """Resume, refuse or wipe an existing output folder. Returns "fresh", "resume" or "overwrite".

    A folder built from the same recipe and unchanged inputs resumes; anything else is refused
    unless ``overwrite`` is set."""
    fingerprint = build_fingerprint(recipe)
    existing = io_.list_files(out_dir)  # no exists(out_dir): object stores have no folder objects
    fp_path = io_.join(out_dir, BUILD_FILE)
    if existing and overwrite:
        if fp_path not in existing:  # never wipe a folder this job did not make (e.g. --output .)
            raise FileExistsError(
                f"--overwrite: {out_dir} holds {len(existing)} file(s) but no {BUILD_FILE}, so it is not a build "
                "folder; refusing to delete anything there. Choose an empty or new --output")
        FileSystems.delete(existing)
        mode = "overwrite"
    elif existing:
        previous = json.loads(io_.read_bytes(fp_path)) if FileSystems.exists(fp_path) else None
        if previous is None or previous.get("fingerprint") != fingerprint:
            raise FileExistsError(
                f"{out_dir} already holds a build of a different recipe or inputs (or no {BUILD_FILE}); "
                "pass --overwrite to replace it or choose another --output")
        stale = io_.list_stale_temp_files(out_dir)
        if stale:
            FileSystems.delete(stale)
        mode = "resume"
    else:
        if io_.is_local(out_dir):
            os.makedirs(out_dir, exist_ok=True)
        mode = "fresh"
    io_.write_json(fp_path, {"fingerprint": fingerprint, "recipe": recipe.to_dict()})
    return mode

