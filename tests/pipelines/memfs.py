"""An in-memory object store registered with Beam as the ``memtest://`` filesystem (test support).

Why: the main job promises that every path goes through Beam's ``FileSystems`` so that ``gs://``,
``s3://`` and ``hdfs://`` work, but no such store is reachable from tests. This one behaves like
GCS/S3 where it matters to the pipeline:

* flat keys, no directories: ``has_dirs()`` is False, ``mkdirs`` does nothing, ``exists`` is true
  only for an exact object (``exists("memtest://b/out")`` is False even when ``b/out/x`` exists);
* an object written with ``create`` becomes visible only when its writer is closed (an upload);
* ``rename`` is copy + delete; ``_list(prefix)`` lists every key under the prefix, recursively;
* opening a missing object raises :class:`ObjectNotFound`, which, like the GCS client's
  ``NotFound``, is not an ``OSError`` and does not say "not found" in the words a local file
  error would use.

Defining the subclass registers it: Beam picks a filesystem by ``scheme()`` among the loaded
``FileSystem`` subclasses. Import this module as ``import memfs`` (tests folders have no
``__init__.py``). The store is one module-level dict shared by every thread of the process, which
is what the in-memory Direct runner uses.
"""

from __future__ import annotations

import io
import os
import threading
import time

from apache_beam.io.filesystem import (
    BeamIOError,
    CompressedFile,
    CompressionTypes,
    FileMetadata,
    FileSystem,
)

SCHEME = "memtest"
PREFIX = SCHEME + "://"

# path ("memtest://bucket/key") -> (bytes, last_updated seconds)
_STORE: dict[str, tuple[bytes, float]] = {}
_LOCK = threading.Lock()
_CLOCK = [1_700_000_000.0]  # strictly increasing fake mtimes: two writes never share one
# path -> exception that ``open`` raises although the object exists (a failing read, not a miss)
FAIL_OPEN: dict[str, Exception] = {}


class ObjectNotFound(Exception):
    """What a cloud client raises for a missing object (not an OSError, like GCS's NotFound)."""


def _check(path: str) -> str:
    if not path.startswith(PREFIX) or len(path) <= len(PREFIX):
        raise ValueError(f"not a {SCHEME}:// path: {path!r}")
    return path


def _put(path: str, data: bytes) -> None:
    with _LOCK:
        _CLOCK[0] += 1.0
        _STORE[_check(path)] = (bytes(data), _CLOCK[0])


# --------------------------------------------------------------------------- helpers for tests
def reset() -> None:
    """Empty the store."""
    with _LOCK:
        _STORE.clear()
        FAIL_OPEN.clear()


def put_tree(local_dir: str, url: str) -> int:
    """Upload every file under ``local_dir`` to ``url/<relative path>``; returns the file count."""
    n = 0
    for dirpath, _, files in os.walk(local_dir):
        for name in sorted(files):
            local = os.path.join(dirpath, name)
            rel = os.path.relpath(local, local_dir).replace(os.sep, "/")
            with open(local, "rb") as f:
                _put(url.rstrip("/") + "/" + rel, f.read())
            n += 1
    return n


def put(path: str, data: bytes) -> None:
    """Store one object (as a finished upload)."""
    _put(path, data)


def copy_prefix(src: str, dst: str) -> None:
    """Copy every object under ``src/`` to the same relative key under ``dst/``."""
    for rel, data in tree(src).items():
        _put(dst.rstrip("/") + "/" + rel, data)


def delete(path: str) -> None:
    with _LOCK:
        del _STORE[path]


def keys(prefix: str = PREFIX) -> list[str]:
    """Sorted paths of every object whose path starts with ``prefix``."""
    with _LOCK:
        return sorted(k for k in _STORE if k.startswith(prefix))


def read(path: str) -> bytes:
    with _LOCK:
        if path not in _STORE:
            raise ObjectNotFound(f"404 No such object: {path[len(PREFIX):]}")
        return _STORE[path][0]


def mtime(path: str) -> float:
    with _LOCK:
        return _STORE[path][1]


def tree(prefix: str) -> dict[str, bytes]:
    """``{path relative to prefix: bytes}`` of every object under ``prefix/``."""
    base = prefix.rstrip("/") + "/"
    return {k[len(base):]: read(k) for k in keys(base)}


# --------------------------------------------------------------------------- the filesystem
class _Upload(io.BytesIO):
    """A writable object whose bytes are stored under ``path`` only when it is closed."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def close(self) -> None:
        if not self.closed:
            _put(self._path, self.getvalue())
        super().close()


class MemTestFileSystem(FileSystem):
    """Beam ``FileSystem`` over the module-level store (see the module docstring)."""

    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, basepath, *paths):
        _check(basepath)
        path = basepath
        for p in paths:
            path = path.rstrip("/") + "/" + p.lstrip("/")
        return path

    def split(self, path):
        _check(path.strip())
        body = path.strip()[len(PREFIX):]
        i = body.rfind("/")
        if i < 0:
            return PREFIX + body, ""
        return PREFIX + body[:i], body[i + 1:]

    def mkdirs(self, path):
        pass

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        with _LOCK:
            items = sorted((k, len(v[0]), v[1]) for k, v in _STORE.items() if k.startswith(dir_or_prefix))
        for path, size, updated in items:
            yield FileMetadata(path, size, updated)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        raw = _Upload(_check(path))
        ctype = FileSystem._get_compression_type(path, compression_type)
        return raw if ctype == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type=ctype)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        if path in FAIL_OPEN:
            raise FAIL_OPEN[path]
        raw = io.BytesIO(read(_check(path)))
        ctype = FileSystem._get_compression_type(path, compression_type)
        return raw if ctype == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type=ctype)

    def copy(self, source_file_names, destination_file_names):
        assert len(source_file_names) == len(destination_file_names)
        errors = {}
        for src, dst in zip(source_file_names, destination_file_names):
            try:
                _put(_check(dst), read(src))
            except Exception as e:  # noqa: BLE001 - reported per pair, as Beam's stores do
                errors[(src, dst)] = e
        if errors:
            raise BeamIOError("Copy operation failed", errors)

    def rename(self, source_file_names, destination_file_names):
        """Copy then delete, like GCS and S3 (not atomic: a reader may briefly see both)."""
        self.copy(source_file_names, destination_file_names)
        self.delete(source_file_names)

    def exists(self, path):
        with _LOCK:
            return path in _STORE

    def size(self, path):
        return len(self._entry(path)[0])

    def last_updated(self, path):
        return self._entry(path)[1]

    def checksum(self, path):
        import hashlib

        return hashlib.md5(self._entry(path)[0]).hexdigest()

    def metadata(self, path):
        data, updated = self._entry(path)
        return FileMetadata(path, len(data), updated)

    def delete(self, paths):
        """Delete objects; a path ending in "/" or naming no object but a key prefix ("a folder")
        deletes every object under it."""
        errors = {}
        for path in paths:
            with _LOCK:
                if path in _STORE and not path.endswith("/"):
                    del _STORE[path]
                    continue
                base = path.rstrip("/") + "/"
                under = [k for k in _STORE if k.startswith(base)]
                for k in under:
                    del _STORE[k]
            if not under:
                errors[path] = ObjectNotFound(f"404 No such object: {path}")
        if errors:
            raise BeamIOError("Delete operation failed", errors)

    def _entry(self, path):
        with _LOCK:
            if path not in _STORE:
                raise BeamIOError("Metadata operation failed", {path: ObjectNotFound(path)})
            return _STORE[path]
