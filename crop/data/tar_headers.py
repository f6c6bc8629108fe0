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

Usage: ``tarfile.open(fileobj=f, mode=open_mode(f), tarinfo=FastTarInfo)`` (``tarinfo`` and the two
class methods overridden here are tarfile's documented extension points).
"""

from __future__ import annotations

import struct
import tarfile
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
