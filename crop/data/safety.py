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
from typing import IO, Iterator

from PIL import Image

MEMBER_RE = re.compile(r"^(?P<key>[a-z0-9][a-z0-9_-]{0,95})\.(?P<ext>[A-Za-z0-9]{1,10})$")
"""A safe member name: the contract's dot-free key, one dot, a short alphanumeric extension."""

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
        msg = f"{where}: {kind}: {exc}"
        if self.on_error == "raise":
            if isinstance(exc, BaseException):
                raise ShardReadError(msg) from exc
            raise ShardReadError(msg)
        if seen <= self.max_warnings:
            warnings.warn(f"skipped ({kind} #{seen}) {msg}", ShardWarning, stacklevel=2)


def classify_member(name: str) -> tuple[str, str | None, str | None]:
    """``(kind, key, ext)`` of a tar member name; kind is json | image | pickle | other | unsafe."""
    m = MEMBER_RE.match(name)
    if m is None:
        return "unsafe", None, None
    key, ext = m.groups()
    ext = ext.lower()
    return _KIND_OF_EXT.get(ext, "other"), key, ext


@dataclass
class RawSample:
    """One sample's undecoded members, as read from a shard."""

    key: str
    index: int          # 0-based position among the shard's samples (samples = json members)
    json_bytes: bytes
    image_bytes: bytes | None
    image_ext: str | None


class _Selector:
    """Decides, member by member and from the name alone, what :func:`iter_shard_samples` reads.

    It sees every member name in order, so it is where sample indices are counted (a sample is a
    run of members sharing a key that contains a ``.json``), unsafe names are reported, and data
    outside ``[start, stop)`` is skipped without being read. ``past_stop`` tells the reader that
    the rest of the shard is not wanted.
    """

    def __init__(self, shard: str, policy: ErrorPolicy, start: int, stop: int | None) -> None:
        self.shard, self.policy, self.start, self.stop = shard, policy, start, stop
        self.key: str | None = None     # key of the run being read
        self.has_json = False
        self.done = 0                   # completed runs that had a json member
        self.kind = self.ext = None
        self.past_stop = False

    @property
    def index(self) -> int:
        return self.done

    def __call__(self, fname: str) -> bool:
        kind, key, ext = classify_member(fname)
        if kind == "unsafe":
            self.policy.report("unsafe_name", f"{self.shard}:{fname}", "member name is not <key>.<ext>")
            return False
        if key != self.key:
            if self.has_json:
                self.done += 1
            self.key, self.has_json = key, False
        if kind == "json":
            self.has_json = True
        if self.stop is not None and self.done >= self.stop:
            self.past_stop = True
            return False
        if kind in ("pickle", "other"):
            self.policy.report("pickle_member" if kind == "pickle" else "ignored_member",
                               f"{self.shard}:{fname}", kind)
            return False
        self.kind, self.ext = kind, ext
        return self.done >= self.start


def iter_shard_samples(fileobj: IO[bytes], shard: str, policy: ErrorPolicy,
                       start: int = 0, stop: int | None = None) -> Iterator[RawSample]:
    """Yield the shard's samples with ``start <= index < stop`` as :class:`RawSample`.

    A streaming read (``tarfile`` mode ``r|*``: works on pipes and remote streams, plain or
    compressed); members outside the range or not wanted are skipped without being read.
    Member-level problems (a key without ``.json``, a duplicated member) are reported and the
    sample skipped. Tar-level errors (corrupt header, truncated data) propagate: the caller decides
    what the rest of the shard is worth (see ``crop.data.stream``).

    Why not ``webdataset.tariterators.tar_file_iterator``: same loop, but its per-member regex and
    exception plumbing cost ~15% of the bytes-only rate (``benchmarks/loader_throughput.py``),
    and it cannot stop a shard early.
    """
    sel = _Selector(shard, policy, start, stop)
    group: dict | None = None

    def finish(g: dict) -> Iterator[RawSample]:
        where = f"{shard}:{g['key']}"
        if g["dup"]:
            policy.report("duplicate_member", where, f"repeated member(s) {sorted(g['dup'])}")
        elif g["json"] is None:
            policy.report("missing_json", where, "sample has no .json member")
        else:
            yield RawSample(g["key"], g["index"], g["json"], g["image"], g["ext"])

    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for info in tar:
            tar.members = []  # a streaming TarFile keeps every header otherwise
            if not info.isreg():
                continue
            if not sel(info.name):
                if sel.past_stop:
                    break
                continue
            data = tar.extractfile(info).read()
            key, kind = sel.key, sel.kind
            if group is None or group["key"] != key:
                if group is not None:
                    yield from finish(group)
                group = {"key": key, "index": sel.index, "json": None, "image": None, "ext": None,
                         "dup": []}
            slot = "json" if kind == "json" else "image"
            if group[slot] is not None:
                group["dup"].append(info.name)
            group[slot] = data
            if slot == "image":
                group["ext"] = sel.ext
    if group is not None:
        yield from finish(group)


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
