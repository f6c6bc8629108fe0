"""Lazy member reads: a shuffle block holds only member locations; bytes are read at finish time.

These tests fail if a located member is read from the wrong offset/size, if the lazy path is
silently not taken, or if a shard that changes after its scan returns other bytes unreported.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from crop.data.safety import ErrorPolicy, ShardReadError, iter_shard_samples
from crop.data.stream import ShardStream
from crop.data.tar_headers import LocalSource, MemberReader
from shard_factory import make_sample


def _write_shard(path: Path, first: int, n: int, unsafe: bool = True) -> Path:
    """Samples ``first..first+n-1`` with images of varied sizes (so offsets differ from one
    sample to the next), a pickle and an unsafe name in between, and PAX records on some members
    (the data then starts after an extended header, not right after the member's own header)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(first, first + n):
            rec, data, ext = make_sample(i, width=24 + 7 * (i % 5), height=16 + 5 * (i % 3))
            members = []
            if data is not None:
                members.append((f"{rec['key']}.{ext}", data))
            members.append((f"{rec['key']}.json", json.dumps(rec).encode()))
            members.append((f"{rec['key']}.pyd", b"\x80\x04K\x01."))
            for name, body in members:
                info = tarfile.TarInfo(name)
                info.size = len(body)
                if i % 3 == 1:
                    info.pax_headers = {"comment": "x" * (300 + 40 * i)}
                tar.addfile(info, io.BytesIO(body))
            if unsafe and i % 4 == 2:
                bad = tarfile.TarInfo(f"../{rec['key']}.jpg")
                bad.size = 3
                tar.addfile(bad, io.BytesIO(b"bad"))
    return path


def _plain_read(paths) -> dict:
    """``key -> (record, image bytes or None)`` read with nothing but ``tarfile``."""
    out: dict = {}
    for p in paths:
        with tarfile.open(p) as tar:
            for info in tar:
                key, ext = info.name.rsplit(".", 1)
                if "/" in key or ext == "pyd":
                    continue
                body = tar.extractfile(info).read()
                rec, img = out.get(key, (None, None))
                out[key] = (json.loads(body), img) if ext == "json" else (rec, body)
    return out


pytestmark = pytest.mark.filterwarnings("ignore:skipped \\(unsafe_name")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("lazy")
    return [str(_write_shard(folder / f"lazy-{s:06d}.tar", 9 * s, 9)) for s in range(3)]


@pytest.mark.parametrize("seed,buffer,workers", [(0, 256, 1), (1, 4, 1), (2, 5, 3)])
def test_every_shuffled_sample_has_exactly_the_tarfile_bytes(shards, seed, buffer, workers):
    expected = _plain_read(shards)
    ds = ShardStream(shards, seed=seed, shuffle=True, shuffle_buffer=buffer, batch_size=2)
    seen = []
    for batch in ds.loader(num_workers=0) if workers == 1 else _worker_samples(ds, workers):
        for s in batch:
            rec, img = expected[s["__key__"]]
            assert s["json"] == rec, s["__key__"]
            assert s["image_bytes"] == img, s["__key__"]
            seen.append(s["__key__"])
    assert sorted(seen) == sorted(expected)                 # each sample once
    assert seen != sorted(seen)                             # and the order really is shuffled


def _worker_samples(ds: ShardStream, workers: int):
    from unittest import mock
    from types import SimpleNamespace

    from crop.data import stream

    for w in range(workers):
        with mock.patch.object(stream, "get_worker_info",
                               lambda w=w: SimpleNamespace(id=w, num_workers=workers)):
            yield list(ds)


def test_decoded_images_match_a_plain_decode_under_shuffle(shards):
    expected = _plain_read(shards)
    samples = list(ShardStream(shards, seed=3, shuffle_buffer=7, decode=True))
    assert len(samples) == len(expected)
    for s in samples:
        img = expected[s["__key__"]][1]
        if img is None:
            assert s["image"] is None
        else:
            assert s["image"].tobytes() == Image.open(io.BytesIO(img)).convert("RGB").tobytes()


def test_local_scan_locates_members_and_reads_them_back_exactly(shards, tmp_path):
    path = shards[1]
    policies = ErrorPolicy(), ErrorPolicy()
    with open(path, "rb", buffering=0) as f:
        eager = list(iter_shard_samples(f, "s", policies[0]))
    with open(path, "rb", buffering=0) as f:
        lazy = list(iter_shard_samples(f, "s", policies[1], path=path))
    assert len(lazy) == len(eager) == 9
    assert policies[0].counters.counts == policies[1].counters.counts        # same name rules:
    assert policies[1].counters.counts["unsafe_name"] == 2                   # skipped + counted
    assert policies[1].counters.counts["pickle_member"] == 9                 # never read
    assert all(r.json_bytes is None and r.image_bytes is None and r.json_at for r in lazy)
    assert sum(r.image_at is not None for r in lazy) == sum(r.image_bytes is not None for r in eager)
    with MemberReader() as reader:
        for a, b in zip(lazy, eager):
            assert (a.key, a.index, a.image_ext) == (b.key, b.index, b.image_ext)
            assert a.read(reader) == (b.json_bytes, b.image_bytes)
    # a compressed shard cannot be read by offset: the scan falls back to reading members
    gz = tmp_path / "c.tar.gz"
    gz.write_bytes(gzip.compress(Path(path).read_bytes()))
    with open(gz, "rb", buffering=0) as f:
        packed = list(iter_shard_samples(f, "c", ErrorPolicy(), path=str(gz)))
    assert [(r.json_bytes, r.image_bytes, r.json_at) for r in packed] == \
        [(r.json_bytes, r.image_bytes, None) for r in eager]


def test_shard_truncated_after_its_scan_is_skipped_or_raises(tmp_path):
    path = _write_shard(tmp_path / "t.tar", 0, 8, unsafe=False)
    size = path.stat().st_size
    for on_error in ("skip", "raise"):
        ds = ShardStream(str(path), shuffle_buffer=64, decode=True, on_error=on_error)
        it = iter(ds)
        next(it)                                  # the whole shard is scanned, one sample read
        with open(path, "r+b") as f:
            f.truncate(size // 3)
        if on_error == "raise":
            with pytest.raises(ShardReadError, match=r"t\.tar:[\w-]+: unreadable_member"):
                list(it)
        else:
            with pytest.warns(Warning, match="unreadable_member"):
                rest = list(it)
            assert len(rest) == 7                 # the length promise holds: failures are filled
            assert ds.counters.counts["unreadable_member"] >= 1
            assert any(s["__pad__"] for s in rest)
        _write_shard(path, 0, 8, unsafe=False)


def test_reader_refuses_a_shard_replaced_since_its_scan(tmp_path):
    path = _write_shard(tmp_path / "r.tar", 0, 3)
    fd = os.open(path, os.O_RDONLY)
    try:
        source = LocalSource.of(str(path), fd)
    finally:
        os.close(fd)
    with MemberReader() as reader:
        assert reader.read(source, 0, 10) == path.read_bytes()[:10]
    replacement = _write_shard(tmp_path / "new.tar", 5, 3)
    os.replace(replacement, path)
    with MemberReader() as reader, pytest.raises(tarfile.ReadError, match="changed since"):
        reader.read(source, 0, 10)
