"""Deterministic, crash-safe WebDataset shard writing and the per-shard stats marker.

Reproducibility: members are written in sorted name order with a fixed integer mtime and fixed
owner fields, so the same samples give the same bytes whatever
the runner, worker count or run.

Crash safety: a shard is written under a temporary name, fsynced (local files), then renamed to
its final name (:class:`PendingShard`); its ``.stats.json`` is written the same way *afterwards*
and marks the shard complete. A killed run therefore never leaves an incomplete file under a final shard name, and a
rerun skips every shard whose stats file exists.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from typing import Iterable

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

TAR_MTIME = 0
TAR_OWNER = "crop"
TMP_MARK = ".tmp-"


def shard_file_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def stats_file_name(shard: str) -> str:
    return shard[: -len(".tar")] + ".stats.json"


def join(folder: str, name: str) -> str:
    return FileSystems.join(folder, name)


def is_local(path: str) -> bool:
    return "://" not in path


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    """The raw bytes of ``path``; raises ``FileNotFoundError`` when it does not exist.

    Object-store clients report a missing object in their own words (GCS: ``NotFound`` "404 ...
    No such object", not an ``OSError``; HDFS: "File does not exist"), so a failed remote read is
    checked with ``exists`` and turned into ``FileNotFoundError``: callers can tell a missing
    file (a reject) from any other failure (which must fail the build, not become a reject).
    Never decompressed, whatever the name ends with (local reads are raw too).
    """
    if is_local(path):  # plain open: no Beam wrapper layers per image on the hot path
        with open(path, "rb") as f:
            return f.read()
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read()
    except Exception as e:  # noqa: BLE001 - re-raised unless the object is simply missing
        if not FileSystems.exists(path):
            raise FileNotFoundError(errno.ENOENT, "no such file or object", path) from e
        raise


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent or complete."""
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    if is_local(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path)
    else:  # object stores: the upload becomes visible only when closed, then renamed
        with FileSystems.create(tmp) as f:
            f.write(data)
        FileSystems.rename([tmp], [path])


def write_json(path: str, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


class _BatchedSink:
    """Collects tar bytes and writes them to ``f`` in ~8 MB batches, sha256-hashing each batch
    on a helper thread (``hashlib`` releases the GIL on large buffers).

    Few large writes instead of one per 512-byte block keep the writer's thread out of the GIL
    hand-offs with the image-prefetch threads.
    """

    BATCH = 8 << 20

    def __init__(self, f):
        from concurrent.futures import ThreadPoolExecutor

        self.f, self.sha, self.size = f, hashlib.sha256(), 0
        self._pool = ThreadPoolExecutor(max_workers=1)  # one worker: batches hashed in order
        self._parts: list[bytes] = []
        self._pending = 0
        self._last = None

    def write(self, b: bytes) -> None:
        self._parts.append(b)
        self._pending += len(b)
        self.size += len(b)
        if self._pending >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._parts:
            chunk = b"".join(self._parts)
            self._parts, self._pending = [], 0
            if self._last is not None:
                self._last.result()  # keep at most one batch in flight (bounded memory)
            self._last = self._pool.submit(self.sha.update, chunk)
            self.f.write(chunk)

    def abort(self) -> None:
        """Stop the hashing thread (idempotent; a no-op after :meth:`close`)."""
        self._pool.shutdown(wait=True)

    def close(self) -> str:
        self._flush()
        self._pool.shutdown(wait=True)
        if self._last is not None:
            self._last.result()  # re-raise a hashing error, if any
        return self.sha.hexdigest()


def _member(name: str, payload: bytes) -> bytes:
    """One tar member: ``tarfile``'s own PAX header for ``name``, the payload, zero padding."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), TAR_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = TAR_OWNER
    pad = -len(payload) % tarfile.BLOCKSIZE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + payload + tarfile.NUL * pad


def _write_tar(f, samples: Iterable[tuple[str, dict, bytes | None, str | None]]) -> dict:
    """Write a POSIX (PAX) tar of the samples; what ``tarfile.open(mode="w|")`` would write.

    Headers come from ``tarfile.TarInfo.tobuf``; the archive ends with two zero blocks and is
    padded to a multiple of tarfile's record size. Plain tarfile rather than webdataset's
    TarWriter, whose import pulls torch into Beam workers. Samples arrive sorted by key and a
    sample's members are sorted by name, so the whole member list is sorted (keys are dot-free:
    ``<key>.jpg`` < ``<key>.json`` < the next key).
    """
    sink = _BatchedSink(f)
    try:
        for key, record, data, ext in samples:
            if not isinstance(record, bytes):  # the builder passes the record already encoded
                record = json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8")
            members = {"json": record}
            if data is not None:
                members[ext] = data
            for ext_, payload in sorted(members.items()):
                sink.write(_member(f"{key}.{ext_}", payload))
        sink.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        sink.write(tarfile.NUL * (-sink.size % tarfile.RECORDSIZE))
        return {"bytes": sink.size, "sha256": sink.close()}
    finally:
        # On an error, stop the hashing thread now and close the samples generator here, in this
        # thread: left to the garbage collector, a suspended generator's cleanup (a thread pool
        # shutdown that joins threads) can run inside threading's own bookkeeping and deadlock.
        sink.abort()
        close = getattr(samples, "close", None)
        if close is not None:
            close()


class PendingShard:
    """A shard whose tar is fully written to a temporary place but not yet under its final name.

    ``commit()`` makes it durable and visible: local files are fsynced, renamed and their folder
    fsynced; for object stores the local spool file is uploaded to a temporary object that is then
    renamed. Committing is pure I/O wait, so the writer hands it to a background thread and tars
    the next shard meanwhile (see ``pipelines.build.WriteShardFn``). Until ``commit()`` returns,
    nothing exists under the final name; a local temporary file left by a failed commit is
    removed when the build resumes (``list_stale_temp_files``), a spool file by ``commit`` itself.
    """

    def __init__(self, path: str, tmp: str, info: dict):
        self.path, self.tmp, self.info = path, tmp, info

    def commit(self) -> dict:
        if is_local(self.path):
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # fsync flushes the file's dirty pages whichever descriptor asks
            finally:
                os.close(fd)
            os.replace(self.tmp, self.path)
            _fsync_dir(self.path)
        else:
            remote_tmp = f"{self.path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
            try:
                with open(self.tmp, "rb") as local, FileSystems.create(remote_tmp) as out:
                    shutil.copyfileobj(local, out, 1 << 22)
            finally:
                os.unlink(self.tmp)
            FileSystems.rename([remote_tmp], [self.path])
        return self.info


def _fsync_dir(path: str) -> None:
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def begin_shard(path: str, samples: Iterable[tuple[str, dict, bytes | None, str | None]]) -> PendingShard:
    """Write the tar of ``samples`` to a temporary file (next to ``path`` when local, a local spool
    file for object stores); :meth:`PendingShard.commit` then puts it under ``path``."""
    if is_local(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    else:
        fd, tmp = tempfile.mkstemp(prefix="crop-shard-", suffix=".tar")
        os.close(fd)
    try:
        with open(tmp, "wb") as f:
            info = _write_tar(f, samples)
    except BaseException:
        os.unlink(tmp)
        raise
    return PendingShard(path, tmp, info)


def write_shard(path: str, samples: Iterable[tuple[str, dict, bytes | None, str | None]]) -> dict:
    """Stream ``(key, record, image_bytes, ext)`` samples (sorted by key) into a tar at ``path``.

    Members: ``<key>.json`` (the record, sorted keys, UTF-8) and ``<key>.<ext>`` (the original
    image bytes) when the sample has an image. Returns ``{"bytes", "sha256"}`` of the tar.
    """
    return begin_shard(path, samples).commit()


def list_files(folder: str, pattern: str = "*") -> list[str]:
    """Sorted paths of the files directly in ``folder`` whose names match ``pattern``.

    Works the same on local folders and object stores: no ``exists(folder)`` check first, because
    an object store has no folder objects (GCS/S3 ``exists("gs://b/out")`` is False even when
    ``gs://b/out/x`` exists). A folder that does not exist gives ``[]``; a failing listing raises.
    """
    return sorted(m.path for m in FileSystems.match([join(folder, pattern)])[0].metadata_list)


def list_stale_temp_files(folder: str) -> list[str]:
    """Temporary files left by a killed run (safe to delete before resuming)."""
    return list_files(folder, f"*{TMP_MARK}*")
