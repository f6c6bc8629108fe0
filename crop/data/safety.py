"""Safe reading of shard members: name rules, JSON/image decoding with a pixel cap, error policy.

Why this module exists: a tar shard is untrusted input. WebDataset's default decoders unpickle
``.pyd``/``.pickle`` members (arbitrary code execution), a member name can be absolute or contain
``..``, and a small PNG can declare a billion pixels. Every CROP reader therefore goes through
:func:`iter_shard_samples`, which

* reads only members whose name is ``<key>.<ext>`` with a dot-free key (the contract's key
  pattern) -- anything else is skipped and counted as ``unsafe_name``;
* keeps only ``.json`` and image members (``IMAGE_EXTS``); every other member, pickles included,
  is never even read (counted as ``ignored_member`` / ``pickle_member``);
* never decodes anything itself except through :func:`decode_json` (UTF-8 JSON object) and
  :func:`decode_image` (Pillow restricted to ``IMAGE_FORMATS``, pixel count checked from the header
  before any pixel is decoded).

Errors go through :class:`ErrorPolicy`: under ``on_error="skip"`` they are counted in
:class:`Counters` and warned about (:class:`ShardWarning`, the first ``max_warnings`` per kind);
under ``on_error="raise"`` they raise :class:`ShardReadError` naming the shard and member.
"""

from __future__ import annotations

import collections
import io
import json
import re
import tarfile
import warnings
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

from PIL import Image

from crop.data.tar_headers import (FastTarInfo, LocalSource, MemberReader, lazy_source, open_mode,
                                  read_member_data)

MEMBER_RE = re.compile(r"(?P<key>[a-z0-9][a-z0-9_-]{0,95})\.(?P<ext>[A-Za-z0-9]{1,10})")
"""A safe member name (matched whole): the contract's dot-free key, one dot, a short alphanumeric
extension. ``fullmatch``, not ``match`` with ``$``, which would let a trailing newline through."""
_safe_name = MEMBER_RE.fullmatch

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp"})
PICKLE_EXTS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "npy", "npz", "joblib"})
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
"""Pillow plugins allowed to open a member. Any of them for any image extension, because real
sources mislabel files (GIFs named .jpg); never EPS/PSD/etc., whose plugins call external tools."""

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
"""Pillow's own default bomb threshold, made explicit and per-dataset."""

_KIND_OF_EXT = {"json": "json", **{e: "image" for e in IMAGE_EXTS}, **{e: "pickle" for e in PICKLE_EXTS}}

ON_ERROR = ("skip", "raise")
INFO_KINDS = frozenset({"ignored_member", "pickle_member"})
"""Counter kinds that are bookkeeping, not errors: never warned about, never raised."""


class ShardReadError(RuntimeError):
    """A shard, member or sample could not be read and the policy is ``on_error="raise"``."""


class ShardWarning(UserWarning):
    """A shard, member or sample was skipped under ``on_error="skip"``."""


class ImageTooLargeError(ValueError):
    """An image header declares more pixels than the configured cap."""


class Counters:
    """Per-process counts of everything skipped or ignored, with the first example of each kind.

    Under a multi-worker DataLoader each worker holds its own copy; each worker warns as it goes
    and logs its totals when its epoch ends (see :mod:`crop.data.stream`).
    """

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.first: dict[str, str] = {}

    def bump(self, kind: str, where: str, n: int = 1) -> int:
        self.counts[kind] += n
        self.first.setdefault(kind, where)
        return self.counts[kind]

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def __repr__(self) -> str:
        return f"Counters({dict(self.counts)})"


_ADDRESS = re.compile(r" (?:object )?at 0x[0-9A-Fa-f]+")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str, limit: int = 500) -> str:
    """Text safe to publish, log and encode: no memory addresses (``<_io.BytesIO object at 0x7f..>``
    differs between runs), lone surrogates written as ``\\udXXX`` escapes, at most ``limit``
    characters. Used for reject details (the pipeline) and loader warnings alike."""
    text = _ADDRESS.sub("", text)
    if _LONE_SURROGATE.search(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:limit]


class ErrorPolicy:
    """Decides what a failure does: count + warn (``"skip"``) or raise (``"raise"``)."""

    def __init__(self, on_error: str = "skip", counters: Counters | None = None,
                 max_warnings: int = 20) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: choose one of {ON_ERROR}")
        self.on_error = on_error
        self.counters = counters if counters is not None else Counters()
        self.max_warnings = max_warnings

    def report(self, kind: str, where: str, exc: BaseException | str, n: int = 1) -> None:
        """Record one failure of ``kind`` at ``where`` (shard/member); raise if so configured."""
        seen = self.counters.bump(kind, where, n)
        if kind in INFO_KINDS:
            return
        msg = f"{where}: {kind}: {clean_text(str(exc))}"
        if self.on_error == "raise":
            if isinstance(exc, BaseException):
                raise ShardReadError(msg) from exc
            raise ShardReadError(msg)
        if seen <= self.max_warnings:
            warnings.warn(f"skipped ({kind} #{seen}) {msg}", ShardWarning, stacklevel=2)


def classify_member(name: str) -> tuple[str, str | None, str | None]:
    """``(kind, key, ext)`` of a tar member name; kind is json | image | pickle | other | unsafe."""
    m = _safe_name(name)
    if m is None:
        return "unsafe", None, None
    key, ext = m.groups()
    ext = ext.lower()
    return _KIND_OF_EXT.get(ext, "other"), key, ext


def count_sample_runs(names: Iterable[str]) -> int:
    """Samples among member names, counted as :func:`iter_shard_samples` indexes them.

    A sample is a run of consecutive safe names sharing a key that contains a ``.json``; unsafe
    names are not part of any run.
    """
    done, run_key, run_json = 0, None, False
    for name in names:
        kind, key, _ = classify_member(name)
        if kind == "unsafe":
            continue
        if key != run_key:
            done += run_json
            run_key, run_json = key, False
        run_json = run_json or kind == "json"
    return done + run_json


@dataclass(slots=True)
class RawSample:
    """One sample's undecoded members, as read from a shard.

    With a lazy scan (``iter_shard_samples(..., path=...)``) no member is read yet:
    ``json_bytes``/``image_bytes`` are None and ``json_at``/``image_at`` say where they are,
    ``(source, offset, size)``, for :meth:`~crop.data.tar_headers.MemberReader.read`.
    ``image_ext`` is set whenever there is an image; :meth:`read` gives both byte strings.
    """

    key: str
    index: int          # 0-based position among the shard's samples (samples = json members)
    json_bytes: bytes | None
    image_bytes: bytes | None
    image_ext: str | None
    json_at: tuple[LocalSource, int, int] | None = None
    image_at: tuple[LocalSource, int, int] | None = None

    def read(self, reader: MemberReader | None) -> tuple[bytes, bytes | None]:
        """``(json bytes, image bytes or None)``, reading located members with ``reader``.

        Raises ``tarfile.ReadError``/``OSError`` when a located member cannot be read whole.
        """
        json_bytes, image = self.json_bytes, self.image_bytes
        if self.json_at is not None:
            json_bytes = reader.read(*self.json_at)
        if self.image_at is not None:
            image = reader.read(*self.image_at)
        return json_bytes, image


def iter_shard_samples(fileobj: IO[bytes], shard: str, policy: ErrorPolicy,
                       start: int = 0, stop: int | None = None,
                       path: str | None = None) -> Iterator[RawSample]:
    """Yield the shard's samples with ``start <= index < stop`` as :class:`RawSample`.

    ``path`` (the local file ``fileobj`` reads) asks for a lazy scan: when the shard is an
    uncompressed tar read in random-access mode, members are not read, only located
    (``RawSample.json_at``/``image_at``, read later with :meth:`RawSample.read`); otherwise
    (compressed, streamed) the argument is ignored. The name rules, grouping and truncation
    checks are the same either way: ``tarfile`` still verifies each member's data is present.

    A single front-to-back pass (``tarfile`` random access for local files, streaming for pipes
    and remote streams; plain or compressed: :func:`~crop.data.tar_headers.open_mode`). Each
    member is judged from its name alone before any of its data is read: unsafe names are
    reported and skipped, members that are neither ``.json`` nor an image (pickles
    included) are counted and never read, data outside ``[start, stop)`` is skipped and the shard
    is left as soon as ``stop`` is reached. Member-level problems (a key without ``.json``, a
    duplicated member) are reported and the sample skipped. Tar-level errors (corrupt header,
    truncated data) propagate: the caller decides what the rest of the shard is worth.

    Cost: this loop runs once per member, so it keeps its state in locals (no per-member dicts or
    helper objects), matches a name with one precompiled regex, parses headers with
    :class:`~crop.data.tar_headers.FastTarInfo` and reads data without ``extractfile``'s
    wrappers. Why not ``webdataset.tariterators.tar_file_iterator``: slower per member and it
    cannot stop a shard early (``benchmarks/loader_throughput.py``).
    """
    report, kinds, safe_name = policy.report, _KIND_OF_EXT, _safe_name
    done, run_key, run_json = 0, None, False   # completed json runs; the run being seen
    g_key = None                               # the sample being collected (None: none)
    g_index, g_json, g_image, g_ext, g_dup = 0, None, None, None, None

    def finished() -> RawSample | None:
        where = f"{shard}:{g_key}"
        if g_dup:
            report("duplicate_member", where, f"repeated member(s) {sorted(g_dup)}")
        elif g_json is None:
            report("missing_json", where, "sample has no .json member")
        else:
            if type(g_json) is tuple or type(g_image) is tuple:   # located by a lazy scan
                j_at = g_json if type(g_json) is tuple else None     # (a sparse member was read)
                i_at = g_image if type(g_image) is tuple else None
                return RawSample(g_key, g_index, None if j_at else g_json,
                                 None if i_at else g_image, g_ext, j_at, i_at)
            return RawSample(g_key, g_index, g_json, g_image, g_ext)
        return None

    with tarfile.open(fileobj=fileobj, mode=open_mode(fileobj), tarinfo=FastTarInfo) as tar:
        next_member, seen = tar.next, tar.members  # a streaming TarFile keeps every header: clear
        lazy = lazy_source(tar, fileobj, path)     # images located, read by the consumer
        while (info := next_member()) is not None:
            seen.clear()
            if not info.isreg():
                continue
            name = info.name
            m = safe_name(name)
            if m is None:
                report("unsafe_name", f"{shard}:{name}", "member name is not <key>.<ext>")
                continue
            key, ext = m.groups()
            kind = kinds.get(ext)
            if kind is None:
                ext = ext.lower()
                kind = kinds.get(ext, "other")
            if key != run_key:
                done += run_json
                run_key, run_json = key, False
            if kind == "json":
                run_json = True
            if stop is not None and done >= stop:
                break
            if kind != "json" and kind != "image":
                report("pickle_member" if kind == "pickle" else "ignored_member",
                       f"{shard}:{name}", kind)
                continue
            if done < start:
                continue
            if lazy is None or info.sparse is not None:
                data = read_member_data(tar, info)
            elif info.size < 0:
                raise tarfile.ReadError(f"member {name!r} declares a negative size {info.size}")
            else:   # located only; tar.next() still checks the data is there (truncation)
                data = (lazy, info.offset_data, info.size)
            if key != g_key:
                if g_key is not None and (sample := finished()) is not None:
                    yield sample
                g_key, g_index, g_json, g_image, g_ext, g_dup = key, done, None, None, None, None
            if kind == "json":
                if g_json is not None:
                    g_dup = (g_dup or []) + [name]
                g_json = data
            else:
                if g_image is not None:
                    g_dup = (g_dup or []) + [name]
                g_image, g_ext = data, ext
    if g_key is not None and (sample := finished()) is not None:
        yield sample


def decode_json(data: bytes, where: str = "json") -> dict:
    """UTF-8 JSON object -> dict; anything else raises ``ValueError`` naming ``where``."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{where}: not UTF-8 JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: JSON member is a {type(obj).__name__}, not an object")
    return obj


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from the image header only (no pixel decoding)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            return im.size


def decode_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 where: str = "image") -> Image.Image:
    """Decode to an RGB ``PIL.Image`` after checking the header's pixel count against the cap.

    The effective cap is ``min(max_pixels, 2 * PIL.Image.MAX_IMAGE_PIXELS)`` because Pillow itself
    refuses anything above twice its threshold at ``open``; both cases raise
    :class:`ImageTooLargeError`. Our check runs on the header, before any pixel is decoded.
    """
    try:
        with warnings.catch_warnings():
            # Our own cap replaces Pillow's warning between 1x and 2x its threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLargeError(f"{where}: {w}x{h} = {w * h} pixels > cap {max_pixels}")
            if im.mode == "RGB":  # decode in place; convert() would copy the pixels once more
                im.load()
                return im
            return im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{where}: {e}") from e
