"""A faster ``tarfile`` header parser for plain regular-file headers, identical results otherwise.

Why: ``tarfile.TarInfo.frombuf`` decodes every header field through two helper calls each and
sums the checksum twice (unsigned and signed); with ``_proc_member`` dispatch that is about half
the cost of streaming a shard of small members (``benchmarks/loader_throughput.py``). CROP shards
are almost entirely plain ustar/PAX/GNU headers of regular files with short names, so
:class:`FastTarInfo` parses exactly those in one ``struct`` unpack and hands *every* other header
-- zero blocks, bad or signed checksums, base-256 numbers, a ustar name prefix, directories,
links, PAX/GNU long-name records, sparse files, anything that does not parse -- to the stock
parser unchanged. So ``tarfile`` stays the only authority on what a header means and which
errors it raises; this class only skips work for headers whose result is already certain.
``tests/data/test_stream_tar.py`` checks the two parsers agree on every field, offsets included.

:class:`MemberReader` reads members located by an earlier scan (``os.pread`` by offset), for the
lazy shuffle blocks of :mod:`crop.data.stream`.

Usage: ``tarfile.open(fileobj=f, mode=open_mode(f), tarinfo=FastTarInfo)`` (``tarinfo`` and the two
class methods overridden here are tarfile's documented extension points).
"""

from __future__ import annotations

import os
import struct
import tarfile
from dataclasses import dataclass
from tarfile import BLOCKSIZE

# name mode uid gid size mtime chksum [type] linkname [magic version] uname gname devmajor devminor
_HEADER = struct.Struct("100s8s8s8s12s12s8sx100s8x32s32s8s8s")
_PLAIN_TYPES = (ord(tarfile.REGTYPE), ord(tarfile.AREGTYPE))   # b"0" and b"\0"


def _octal(field: bytes) -> int:
    """A NUL/space-terminated octal field (``ValueError`` on anything the fast path won't take).

    Equal to tarfile's ``nti`` whenever it returns: ``int`` refuses NUL and non-ASCII bytes, so a
    parsed value never came from a field that ``nti`` would cut short or read as base-256.
    """
    return int(field.rstrip(b"\0 ") or b"0", 8)


def _text(field: bytes, encoding: str, errors: str) -> str:
    return field.split(b"\0", 1)[0].decode(encoding, errors)


def parse_plain_header(cls, buf: bytes, encoding: str, errors: str):
    """A ``cls`` instance for a plain regular-file header, or None to defer to ``tarfile``."""
    if len(buf) != BLOCKSIZE or buf[156] not in _PLAIN_TYPES or buf[345]:  # buf[345]: name prefix
        return None
    try:
        (name, mode, uid, gid, size, mtime, chk, link, uname, gname, major,
         minor) = _HEADER.unpack_from(buf)
        chksum = _octal(chk)
        if chksum != 256 + sum(buf) - sum(buf[148:156]):   # checksum field counted as 8 spaces
            return None                                    # (the stock parser also tries signed)
        name = _text(name, encoding, errors)
        if name.endswith("/"):                             # an old-style directory
            return None
        obj = cls(name)
        # _octal / _text inlined: this runs for every member of every shard
        obj.mode = int(mode.rstrip(b"\0 ") or b"0", 8)
        obj.uid = int(uid.rstrip(b"\0 ") or b"0", 8)
        obj.gid = int(gid.rstrip(b"\0 ") or b"0", 8)
        obj.size = int(size.rstrip(b"\0 ") or b"0", 8)
        obj.mtime = int(mtime.rstrip(b"\0 ") or b"0", 8)
        obj.chksum = chksum
        obj.type = buf[156:157]
        obj.linkname = link.split(b"\0", 1)[0].decode(encoding, errors)
        obj.uname = uname.split(b"\0", 1)[0].decode(encoding, errors)
        obj.gname = gname.split(b"\0", 1)[0].decode(encoding, errors)
        obj.devmajor = int(major.rstrip(b"\0 ") or b"0", 8)
        obj.devminor = int(minor.rstrip(b"\0 ") or b"0", 8)
    except ValueError:   # UnicodeDecodeError included: the stock parser raises its own error
        return None
    return obj


class FastTarInfo(tarfile.TarInfo):
    """``TarInfo`` whose plain regular-file headers skip the generic parse (see module doc)."""

    __slots__ = ()

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        obj = parse_plain_header(cls, buf, encoding, errors)
        return obj if obj is not None else super().frombuf(buf, encoding, errors)

    @classmethod
    def fromtarfile(cls, tarfile):
        """As ``TarInfo.fromtarfile``; for a plain header, ``_proc_builtin`` inlined."""
        fileobj = tarfile.fileobj
        buf = fileobj.read(BLOCKSIZE)
        obj = parse_plain_header(cls, buf, tarfile.encoding, tarfile.errors)
        if obj is None:
            obj = super().frombuf(buf, tarfile.encoding, tarfile.errors)
            obj.offset = fileobj.tell() - BLOCKSIZE
            return obj._proc_member(tarfile)
        obj.offset_data = fileobj.tell()
        obj.offset = obj.offset_data - BLOCKSIZE
        tarfile.offset = obj.offset_data - (-obj.size // BLOCKSIZE) * BLOCKSIZE  # data rounded up
        if tarfile.pax_headers:                            # global PAX records apply to all
            obj._apply_pax_info(tarfile.pax_headers, tarfile.encoding, tarfile.errors)
        return obj


def read_member_data(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    """The data of the regular member ``tar.next()`` just returned, read straight from the stream.

    Equivalent to ``tar.extractfile(info).read()`` without the two file-object wrappers it builds
    per member; the block padding after the data is consumed too, so the next header read needs
    no seek. Sparse members take tarfile's own path. Raises ``tarfile.ReadError`` on a negative
    size or a stream that ends early.
    """
    if info.sparse is not None:
        return tar.extractfile(info).read()
    size = info.size
    if size < 0:
        raise tarfile.ReadError(f"member {info.name!r} declares a negative size {size}")
    fileobj = tar.fileobj
    if fileobj.tell() != info.offset_data:
        fileobj.seek(info.offset_data)
    data = fileobj.read(size)
    while len(data) < size:            # a raw file may return less (e.g. > 2 GiB on Linux)
        more = fileobj.read(size - len(data))
        if not more:
            raise tarfile.ReadError(f"unexpected end of data in member {info.name!r}")
        data += more
    pad = -size % BLOCKSIZE
    if pad and len(fileobj.read(pad)) != pad:
        raise tarfile.ReadError(f"unexpected end of data after member {info.name!r}")
    return data


def open_mode(fileobj) -> str:
    """``tarfile`` mode for reading ``fileobj`` once, front to back.

    A seekable OS file gets random-access mode (``r:*``): each header and each member's data is
    one ``read`` into a bytes object of the right size. Streaming mode (``r|*``, for pipes and
    remote streams) copies every member through its own buffer several times; besides costing
    CPU, that traffic evicts the caches an image decoder works in, which measurably slows the
    decode that follows (``benchmarks/loader_throughput.py``). Both modes detect compression.
    """
    try:
        fileobj.fileno()
        return "r:*" if fileobj.seekable() else "r|*"
    except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation is both
        return "r|*"


class MemberReader:
    """Reads members of local, uncompressed shards by ``(path, offset, size)`` with ``os.pread``.

    Why: a shuffle block scanned eagerly holds every member's bytes (256 JPEGs are ~11 MB), and
    after the block is permuted those bytes -- and the heap pages they were allocated in -- are
    cold by the time each image is decoded. Scanning only headers and reading each image right
    before its decode keeps the bytes cache-hot and lets one freed buffer serve the next read
    (``benchmarks/loader_throughput.py``). A few file descriptors stay open (a block rarely spans
    more than two shards); each is checked on open against the inode, size and mtime seen when
    the shard was scanned, so a shard rewritten mid-epoch fails loudly instead of returning other
    bytes. Use as a context manager (closes every descriptor).
    """

    def __init__(self, max_open: int = 8) -> None:
        self.max_open = max_open
        self._fds: dict[str, int] = {}

    def read(self, source: "LocalSource", offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``; ``tarfile.ReadError`` on a short read."""
        fd = self._fds.get(source.path)
        if fd is None:
            fd = self._open(source)
        data = os.pread(fd, size, offset)
        while len(data) < size:                   # pread may return less (signals, > 2 GiB)
            more = os.pread(fd, size - len(data), offset + len(data))
            if not more:
                raise tarfile.ReadError(f"{source.path}: unexpected end of data at offset "
                                        f"{offset + len(data)} ({size} bytes wanted at {offset})")
            data += more
        return data

    def _open(self, source: "LocalSource") -> int:
        if len(self._fds) >= self.max_open:       # oldest first: blocks move forward through shards
            os.close(self._fds.pop(next(iter(self._fds))))
        fd = os.open(source.path, os.O_RDONLY)
        try:
            if LocalSource.of(source.path, fd) != source:
                raise tarfile.ReadError(f"{source.path}: the shard changed since it was scanned")
        except BaseException:
            os.close(fd)
            raise
        self._fds[source.path] = fd
        return fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __enter__(self) -> "MemberReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class LocalSource:
    """A local shard file as scanned: path plus identity (inode, size, mtime) for later reads."""

    path: str
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str, fd: int) -> "LocalSource":
        st = os.fstat(fd)
        return cls(path, st.st_ino, st.st_size, st.st_mtime_ns)


def lazy_source(tar: tarfile.TarFile, fileobj, path: str | None) -> LocalSource | None:
    """The :class:`LocalSource` whose members may be read later by offset, or None.

    Only when ``path`` is given and ``tar`` reads ``fileobj`` itself: an uncompressed tar on an OS
    file opened in random-access mode (for a compressed shard the offsets ``tarfile`` reports are
    into the decompressed stream, so they cannot be ``pread``).
    """
    if path is None or tar.fileobj is not fileobj:
        return None
    try:
        if not fileobj.seekable():
            return None
        return LocalSource.of(path, fileobj.fileno())
    except (AttributeError, OSError, ValueError):
        return None
