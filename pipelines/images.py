"""Reading a record's image bytes, confined to the image root (the only image reads of the build).

Image paths come from the input files, which are untrusted: an absolute path or a ``../..``
escape would otherwise copy any readable file of the machine (or any object of the account) into
a shard that may be published. So every path is resolved before anything is opened:

* local roots: the path is joined to the root's real path and resolved with
  ``os.path.realpath`` (following symlinks, ``..`` and ``.``); anything that lands outside the
  root is ``path_outside_root``, including a symlink inside the root that points out of it.
  A ``..`` that stays inside the root is fine. The file is then ``stat``-ed (a folder, FIFO,
  socket or device is ``not_a_regular_file`` and never opened: opening a FIFO would block the
  writer) and opened with ``O_NOFOLLOW | O_NONBLOCK``; ``fstat`` on the open file checks again.
* remote roots (``gs://``, ``s3://``, any Beam filesystem): object stores have no symlinks and
  no real folders, so the check is on the text: an absolute path, any ``..`` segment, or a path
  with its own scheme (another bucket, another filesystem) is ``path_outside_root``.

An empty file is ``empty_image``; a file above :data:`MAX_IMAGE_BYTES` is ``image_too_large``
(never read into memory). A path missing under every candidate folder raises
``FileNotFoundError`` for the caller's ``missing_image`` reject. Details name paths relative to
the image root only: ``rejects.jsonl`` may be published and must not hold local machine paths.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from pipelines import shards as io_
from pipelines.sources import STAGE_IMAGE, Rejected, show

MAX_IMAGE_BYTES = 1 << 30
"""Largest image file read (1 GiB); larger files are ``image_too_large`` without being read."""

_FILE_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
               (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
_MISSING = (errno.ENOENT, errno.ENOTDIR)
_PER_FILE_ERRORS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                    errno.ELOOP: "symlink loop", errno.ENAMETOOLONG: "path too long",
                    errno.EISDIR: "is a folder", errno.ENXIO: "no such device"}


def _outside(rel: str, why: str) -> Rejected:
    return Rejected(STAGE_IMAGE, "path_outside_root", f"image path {show(rel)} {why}")


def _kind(mode: int) -> str | None:
    return next((name for test, name in _FILE_KINDS if test(mode)), None if stat.S_ISREG(mode) else "special file")


class ImageRoot:
    """The image root of a build; :meth:`read` returns a relative path's bytes or rejects it."""

    def __init__(self, root: str):
        self.root = root
        self.local = io_.is_local(root)
        self.real = os.path.realpath(root) if self.local else root

    # ----------------------------------------------------------------------- path resolution
    def resolve(self, rel: str) -> str:
        """The path to open for ``rel``, or :class:`Rejected` (``path_outside_root``)."""
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise Rejected(STAGE_IMAGE, "invalid_value", f"image path {show(rel)} is not a usable path")
        if rel.startswith(("/", "\\")) or (self.local and os.path.isabs(rel)):
            raise _outside(rel, "is absolute; image paths are relative to the image root")
        if not self.local:
            if "://" in rel or rel.split("/", 1)[0].endswith(":"):
                raise _outside(rel, "names another filesystem or bucket")
            if ".." in rel.replace("\\", "/").split("/"):
                raise _outside(rel, "leads outside the image root")  # same words as a local escape
            return io_.join(self.root, rel)
        target = os.path.realpath(os.path.join(self.real, rel))
        if os.path.commonpath([self.real, target]) != self.real:
            raise _outside(rel, "leads outside the image root")
        return target

    # ----------------------------------------------------------------------- reading
    def read(self, rel: str) -> bytes:
        """The bytes of ``rel``; raises :class:`Rejected`, or ``FileNotFoundError`` when missing."""
        path = self.resolve(rel)
        data = self._read_local(rel, path) if self.local else self._read_remote(rel, path)
        if not data:
            raise Rejected(STAGE_IMAGE, "empty_image", f"image file {show(rel)} is empty (0 bytes)")
        return data

    @staticmethod
    def _read_remote(rel: str, path: str) -> bytes:
        try:
            return io_.read_bytes(path)
        except FileNotFoundError:
            # An object store has no folders, only prefixes: "x.jpg/" holding objects is the
            # remote form of a folder at the image path, rejected in the same words as locally.
            if io_.list_files(path):
                raise Rejected(STAGE_IMAGE, "not_a_regular_file", f"image path {show(rel)} is a folder, not a file") from None
            raise

    @staticmethod
    def _read_local(rel: str, path: str) -> bytes:
        try:
            kind = _kind(os.stat(path).st_mode)  # before open: a FIFO or device is never opened
            if kind is not None:
                raise Rejected(STAGE_IMAGE, "not_a_regular_file", f"image path {show(rel)} is a {kind}, not a file")
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(path, flags)  # NOFOLLOW: realpath resolved every link; one appearing now is refused
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                kind = _kind(st.st_mode)
                if kind is not None:
                    raise Rejected(STAGE_IMAGE, "not_a_regular_file", f"image path {show(rel)} is a {kind}, not a file")
                if st.st_size > MAX_IMAGE_BYTES:
                    raise Rejected(STAGE_IMAGE, "image_too_large",
                                   f"image file {show(rel)} has {st.st_size} bytes > {MAX_IMAGE_BYTES}")
                return f.read(MAX_IMAGE_BYTES + 1)
        except OSError as e:
            if e.errno in _MISSING:
                raise FileNotFoundError(errno.ENOENT, "no such file", rel) from None
            if e.errno in _PER_FILE_ERRORS:
                reason = "not_a_regular_file" if e.errno in (errno.ELOOP, errno.EISDIR) else "unreadable_image"
                raise Rejected(STAGE_IMAGE, reason, f"image path {show(rel)}: {_PER_FILE_ERRORS[e.errno]}") from None
            raise


def read_image(root: ImageRoot, image_dirs: list[str], image_rel: str) -> tuple[str, bytes]:
    """``(path relative to the root, bytes)`` of the first candidate folder holding the image.

    Raises :class:`Rejected`: ``missing_image`` when no folder has it, or the first other reject
    (outside the root, not a file, empty, too large) met on the way.
    """
    tried = []
    for d in image_dirs:
        rel = posixpath.join(d, image_rel) if d else image_rel
        tried.append(rel)
        try:
            return rel, root.read(rel)
        except FileNotFoundError:  # read_bytes maps a missing object on any filesystem to this
            continue
    raise Rejected(STAGE_IMAGE, "missing_image",
                   "image not found at " + " or ".join(show(t) for t in tried) + " under the image root")
