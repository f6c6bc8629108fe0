"""Input files -> chunks of records known by byte range, and records read back by byte range.

Why: one DoFn streaming a whole 1 GB LLaVA JSON list leaves every other worker idle, and holding
every parsed record between the selection and the shard writers made memory grow ~8 KB per
record. So the build reads in three steps:

1. ``index_file`` streams each input file once (one worker per file): its sha256 and size, and
   the byte boundaries of its records, cut into chunks of ``CHUNK_RECORDS``. A chunk descriptor
   costs a few bytes per record (JSONL: a byte range; JSON list: one offset per element).
2. Chunks are redistributed; ``read_chunk`` reads one chunk's bytes and yields its records, so
   parsing, validation and (later) image reads run on every worker.
3. Past parsing only a small :data:`RecordRef` ``(spec index, line, start, end)`` travels; the
   shard writer reads the record's bytes again with ``read_record`` (one small read next to the
   image it reads anyway) and parses it again (the parsers are pure).

Inputs are read as raw bytes (never decompressed): byte offsets must mean the same thing to the
index, the chunk readers and the writers. Record semantics are those of reading the whole file:
JSONL lines split on ``\\n`` (blank lines skipped but numbered), JSON lists parsed by ijson's
C backend without ``use_float`` (``build.read_input`` documents the conventions).
"""

from __future__ import annotations

import hashlib
import io
import re
from array import array
from decimal import Decimal as _Decimal
from typing import Iterator, NamedTuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

CHUNK_RECORDS = 2000  # most records per chunk: ~330 chunks for LLaVA's 665k, ~1-3 MB of input each
MIN_CHUNK_RECORDS = 100
TARGET_CHUNKS = 64  # smaller files are cut finer (down to MIN_CHUNK_RECORDS) to spread over workers
BLOCK = 1 << 22  # bytes read per call while indexing

# A JSON string (escapes included), or a lone quote (a string cut by the end of the buffer).
_STRING = rb'"(?:[^"\\]++|\\.)*+"'
_TOKEN = re.compile(_STRING + rb'|[\[\]{},]|"')
# Fast path: one regex call consumes a whole element nested up to 3 containers deep (LLaVA's
# object > conversations list > turn object). Brackets are not matched by type here; ijson
# validates the element later. Anything deeper falls back to the token scan.
_FLAT = rb'(?:' + _STRING + rb'|[^"\[\]{}]++)*+'
_V1 = rb'[\[{]' + _FLAT + rb'[\]}]'
_L1 = rb'(?:' + _STRING + rb'|[^"\[\]{}]++|' + _V1 + rb')*+'
_V2 = rb'[\[{]' + _L1 + rb'[\]}]'
_L2 = rb'(?:' + _STRING + rb'|[^"\[\]{}]++|' + _V2 + rb')*+'
_V3 = rb'[\[{]' + _L2 + rb'[\]}]'
_ELEMENT = re.compile(rb'(?:' + _STRING + rb'|[^"\[\]{},]++|' + _V3 + rb')*+')
_SPACE = b" \t\r\n"


class Chunk(NamedTuple):
    """Records ``[first, first + n)`` (1-based line / element numbers) of input ``spec_index``.

    ``cuts`` (JSON lists) is ``array('q')`` bytes of the n + 1 separator offsets (``[``, ``,``,
    ``]``): element i spans ``(cuts[i], cuts[i + 1])``. JSONL chunks have no cuts: the chunk is
    the byte range ``[start, end)`` of whole lines and ``first`` is the number of its first line.
    """
    spec_index: int
    index: int  # 0-based chunk number within the file
    n_chunks: int
    total: int  # records (non-blank lines, elements) in the whole file
    first: int
    start: int
    end: int
    cuts: bytes


class RecordRef(NamedTuple):
    """Where one record lives: enough to read it again (``read_record``) and name it."""
    spec_index: int
    line: int
    start: int
    end: int


class FileIndex(NamedTuple):
    chunks: list
    total: int
    size: int
    sha256: str


def _open(path: str):
    """Raw bytes, seekable; local files with a plain ``open`` (the writer opens one per record)."""
    if "://" not in path:
        return open(path, "rb")
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def chunk_size(total: int) -> int:
    """Records per chunk for a file of ``total``: ~``TARGET_CHUNKS`` chunks, within
    [``MIN_CHUNK_RECORDS``, ``CHUNK_RECORDS``] (a multiple of the minimum)."""
    per = -(-total // TARGET_CHUNKS)
    return min(CHUNK_RECORDS, max(MIN_CHUNK_RECORDS, -(-per // MIN_CHUNK_RECORDS) * MIN_CHUNK_RECORDS))


def index_file(spec_index: int, fmt: str, path: str, chunk_records: int | None = None) -> FileIndex:
    """Stream ``path`` once: checksum, record count and chunk boundaries (``chunk_records`` per
    chunk, or :func:`chunk_size` of the file's record count)."""
    with _open(path) as f:
        if fmt == "cot_jsonl":
            bounds, total, size, digest = _index_jsonl(f, chunk_records or MIN_CHUNK_RECORDS)
            if chunk_records is None:  # merge the fine chunks into chunk_size(total) records each
                k = chunk_size(total) // MIN_CHUNK_RECORDS
                bounds = [(bounds[i][0], bounds[i][1], bounds[min(i + k, len(bounds)) - 1][2])
                          for i in range(0, len(bounds), k)]
            cuts_of = [b""] * len(bounds)
        else:
            bounds, cuts_of, total, size, digest = _index_json_list(f, path, chunk_records)
    n = len(bounds)
    chunks = [Chunk(spec_index, i, n, total, first, start, end, cuts)
              for i, ((first, start, end), cuts) in enumerate(zip(bounds, cuts_of))]
    return FileIndex(chunks, total, size, digest)


def _index_jsonl(f, chunk_records: int):
    h, offset, line, records = hashlib.sha256(), 0, 0, 0
    bounds, first, start, in_chunk = [], 1, 0, 0
    for raw in f:  # the same line splitting as iterating the file when reading (on b"\n")
        h.update(raw)
        line += 1
        offset += len(raw)
        if raw.strip():
            records += 1
            in_chunk += 1
        if in_chunk == chunk_records:
            bounds.append((first, start, offset))
            first, start, in_chunk = line + 1, offset, 0
    if in_chunk:
        bounds.append((first, start, offset))
    return bounds, records, offset, h.hexdigest()


class _JsonListScanner:
    """Finds the top-level element boundaries of a JSON list streamed in blocks.

    Only strings (skipped whole, escapes included), brackets and top-level commas matter; the
    content of each element is validated by ijson when a chunk is read."""

    def __init__(self, f, path: str):
        self.f, self.path = f, path
        self.h = hashlib.sha256()
        self.buf, self.base, self.eof = b"", 0, False  # base: file offset of buf[0]

    def more(self, keep_from: int) -> bool:
        """Drop ``buf[:keep_from]``, append a block; False at end of file."""
        if self.eof:
            return False
        block = self.f.read(BLOCK)
        self.h.update(block)
        self.base += keep_from
        self.buf = self.buf[keep_from:] + block
        self.eof = not block
        return bool(block)

    def fail(self, element: int, why: str):
        return ValueError(f"{self.path}: not a valid JSON list near element {element}: {why}")

    def element_end(self, p: int) -> int | None:
        """Offset in ``buf`` of the ``,`` or ``]`` ending the element starting at ``p``; None
        when the buffer ends first."""
        m = _ELEMENT.match(self.buf, p)
        q = m.end()
        if q < len(self.buf) and self.buf[q] in b",]":
            return q
        depth = 0  # slow path: nesting deeper than the fast regex, or a cut string
        for t in _TOKEN.finditer(self.buf, p):
            c = t.group()
            if c[0] == 0x22:  # '"'
                if len(c) == 1 or t.end() == len(self.buf):  # cut by the buffer (or unterminated)
                    return None
            elif c in b"[{":
                depth += 1
            elif c in b"]}":
                if depth == 0:
                    return t.start()
                depth -= 1
            elif depth == 0:  # ','
                return t.start()
        return None

    def scan(self) -> Iterator[int]:
        """Yield the file offsets of ``[``, every top-level ``,`` and the final ``]`` (only ``[``
        for an empty list): n + 1 cuts for n elements."""
        p = 0
        while True:  # the opening bracket
            while p < len(self.buf) and self.buf[p] in _SPACE:
                p += 1
            if p < len(self.buf):
                break
            if not self.more(p):
                raise self.fail(1, "empty file")
            p = 0
        if self.buf[p] != 0x5B:
            raise self.fail(1, "the file does not start with '['")
        yield self.base + p
        p += 1
        n = 0
        empty = True  # '[' followed only by whitespace so far: maybe an empty list
        while True:
            q = p
            while q < len(self.buf) and self.buf[q] in _SPACE:
                q += 1
            if empty and q < len(self.buf) and self.buf[q] == 0x5D:  # "[]": no element, no more cut
                return self.trailer(q + 1, n)
            if q < len(self.buf):
                empty = False
                end = self.element_end(p)
            else:
                end = None
            if end is None:
                if not self.more(p):
                    raise self.fail(n + 1, "unexpected end of file")
                p = 0
                continue
            n += 1
            yield self.base + end
            if self.buf[end] == 0x5D:  # ']'
                return self.trailer(end + 1, n)
            p = end + 1

    def trailer(self, p: int, n: int) -> None:
        while True:
            rest = self.buf[p:]
            if rest.strip(_SPACE):
                raise self.fail(n + 1, "data after the closing ']'")
            if not self.more(len(self.buf)):
                return
            p = 0


def _index_json_list(f, path: str, chunk_records: int | None):
    scanner = _JsonListScanner(f, path)
    cuts = array("q", scanner.scan())  # n + 1 separators for n elements (8 bytes per record)
    while scanner.more(len(scanner.buf)):  # hash any bytes after the list (whitespace)
        pass
    total = len(cuts) - 1
    chunk_records = chunk_records or chunk_size(total)
    bounds, cuts_of = [], []
    for i in range(0, total, chunk_records):
        part = cuts[i: i + chunk_records + 1]
        bounds.append((i + 1, part[0], part[-1] + 1))
        cuts_of.append(part.tobytes())
    return bounds, cuts_of, total, scanner.base + len(scanner.buf), scanner.h.hexdigest()


def _read_range(path: str, start: int, end: int) -> bytes:
    with _open(path) as f:
        f.seek(start)
        data = f.read(end - start)
    if len(data) != end - start:
        raise IOError(f"{path}: changed while the build ran (bytes {start}-{end} no longer there)")
    return data


def read_chunk(fmt: str, path: str, chunk: Chunk) -> Iterator[tuple[RecordRef, object]]:
    """``(ref, payload)`` for every record of ``chunk``: raw line bytes (JSONL) or the parsed
    element (JSON list). A JSON list that ijson cannot parse fails naming the element."""
    data = _read_range(path, chunk.start, chunk.end)
    if fmt == "cot_jsonl":
        line, offset = chunk.first, chunk.start
        for raw in io.BytesIO(data):
            if raw.strip():
                yield RecordRef(chunk.spec_index, line, offset, offset + len(raw)), raw
            line += 1
            offset += len(raw)
        return
    cuts = array("q")
    cuts.frombytes(chunk.cuts)
    body = b"[" + data[1:-1] + b"]"  # the separators around this chunk's elements -> one list
    n, count = len(cuts) - 1, 0
    try:
        for obj in _json_items(body, "item"):
            if count == n:
                raise ValueError("more elements than the index found")
            yield RecordRef(chunk.spec_index, chunk.first + count, cuts[count] + 1, cuts[count + 1]), obj
            count += 1
    except (ValueError, _json_error()) as e:
        raise ValueError(f"{path}: not a valid JSON list near element {chunk.first + count}: {e}") from None
    if count != n:
        raise ValueError(f"{path}: not a valid JSON list near element {chunk.first + count}: "
                         f"{count} elements parsed where the index found {n}")


def read_record(fmt: str, path: str, ref: RecordRef, opened=None):
    """The payload of one record again (raw line bytes, or the parsed JSON element).

    ``opened``: an open binary file of ``path`` to seek in (the writer reads many records of
    one file); else the file is opened for this record."""
    if opened is None:
        data = _read_range(path, ref.start, ref.end)
    else:
        opened.seek(ref.start)
        data = opened.read(ref.end - ref.start)
    if fmt == "cot_jsonl":
        return data
    for obj in _json_items(data, ""):
        return obj
    raise ValueError(f"{path}: element {ref.line} is empty (the file changed while the build ran?)")


def _json_error() -> type:
    import ijson

    return ijson.JSONError


def _json_items(data: bytes, prefix: str) -> Iterator:
    import ijson

    # no use_float: with it, yajl's C backend fails the whole file on an integer beyond 64 bits;
    # without it, ints stay exact and floats come as Decimal, made float here
    for obj in ijson.items(io.BytesIO(data), prefix):
        yield plain_numbers(obj)


def plain_numbers(obj):
    """ijson's Decimal -> float, recursively (records are small; ints and strings untouched).
    Strings, the bulk of every record, are passed over without a call."""
    t = type(obj)
    if t is dict:
        return {k: v if type(v) is str else plain_numbers(v) for k, v in obj.items()}
    if t is list:
        return [v if type(v) is str else plain_numbers(v) for v in obj]
    if t is _Decimal:
        return float(obj)
    return obj



