"""Safety of shard reading: no unpickling, unsafe names skipped, bombs refused, errors counted/raised."""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from crop.data import safety
from crop.data.safety import (ErrorPolicy, ImageTooLargeError, ShardReadError, ShardWarning,
                              classify_member, decode_image, decode_json, iter_shard_samples)
from crop.data.stream import ShardStream
from shard_factory import image_bytes, make_sample


def write_raw_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(i: int) -> list[tuple[str, bytes]]:
    rec, data, ext = make_sample(i)
    members = [(f"{rec['key']}.json", json.dumps(rec).encode())]
    if data is not None:
        members.insert(0, (f"{rec['key']}.{ext}", data))
    return members


class _Payload:
    """Unpickling this object creates ``marker`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def read_all(path: Path, policy: ErrorPolicy) -> list:
    with open(path, "rb") as f:
        return list(iter_shard_samples(f, path.name, policy))


@pytest.mark.parametrize("name,kind", [
    ("textvqa-0123abcd.json", "json"), ("llava-9f.jpg", "image"), ("k.JPEG", "image"),
    ("k.png", "image"), ("k.pyd", "pickle"), ("k.pickle", "pickle"), ("k.txt", "other"),
    ("/etc/passwd.json", "unsafe"), ("../up.json", "unsafe"), ("a/b.json", "unsafe"),
    ("a.b.json", "unsafe"), ("Upper.json", "unsafe"), ("k", "unsafe"), (".json", "unsafe"),
    ("k" * 97 + ".json", "unsafe"),
])
def test_classify_member(name, kind):
    assert classify_member(name)[0] == kind


def test_pickle_members_are_never_decoded(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    members = sample_members(0)
    key = members[-1][0][:-5]
    members += [(f"{key}.pyd", payload), (f"{key}.pickle", payload)]
    shard = write_raw_tar(tmp_path / "evil-000000.tar", sorted(members))
    ds = ShardStream(str(shard), decode=True)
    samples = list(ds)
    assert [s["__key__"] for s in samples] == [key]
    assert set(samples[0]) == {"__key__", "json", "image", "image_bytes", "image_ext", "__shard__",
                               "__index__", "__pad__"}
    assert not marker.exists()
    assert ds.counters.counts["pickle_member"] == 2
    # the payload is live: unpickling it (what webdataset's default decoder would do) runs code
    pickle.loads(payload).close()
    assert marker.exists()


def test_unsafe_member_names_are_skipped_and_counted(tmp_path):
    good = sample_members(0) + sample_members(1)
    bad = [("/abs-path.json", b"{}"), ("../escape.json", b"{}"), ("dir/nested.json", b"{}"),
           ("two.dots.json", b"{}"), ("UPPER.json", b"{}")]
    shard = write_raw_tar(tmp_path / "mixed-000000.tar", bad[:2] + good[:2] + bad[2:] + good[2:])
    policy = ErrorPolicy("skip")
    with pytest.warns(ShardWarning, match="unsafe_name"):
        got = read_all(shard, policy)
    assert [r.key for r in got] == [m[0].split(".")[0] for m in good if m[0].endswith(".json")]
    assert policy.counters.counts["unsafe_name"] == len(bad)
    with pytest.raises(ShardReadError, match="abs-path"):
        read_all(shard, ErrorPolicy("raise"))


def test_corrupt_shard_is_skipped_with_a_counted_warning_or_raises(demo_folder):
    victim = demo_folder / "demo-000001.tar"          # 3 samples
    victim.write_bytes(b"this is not a tar file" * 100)
    ds = ShardStream(demo_folder, shuffle=False)
    with pytest.warns(ShardWarning, match="corrupt_shard"):
        samples = list(ds)
    assert ds.counters.counts["corrupt_shard"] == 1
    assert len(samples) == len(ds) == 14              # the length promise holds ...
    assert sum(s["__pad__"] for s in samples) == ds.counters.counts["filled"] == 3
    real = [s["__key__"] for s in samples if not s["__pad__"]]
    assert len(real) == len(set(real)) == 11          # ... by repeats flagged __pad__
    assert "demo-000001.tar" not in {s["__shard__"] for s in samples if not s["__pad__"]}
    with pytest.raises(ShardReadError, match="demo-000001.tar"):
        list(ShardStream(demo_folder, shuffle=False, on_error="raise"))


def test_smashed_header_mid_shard_counts_the_missing_samples(demo_folder):
    victim = demo_folder / "demo-000000.tar"           # 5 samples, 9 members
    with tarfile.open(victim) as tar:
        offset = tar.getmembers()[4].offset            # header of the 3rd sample's first member
    data = bytearray(victim.read_bytes())
    data[offset:offset + 512] = b"\xff" * 512
    victim.write_bytes(bytes(data))
    ds = ShardStream(demo_folder, shuffle=False, fill_failures=False)
    with pytest.warns(ShardWarning, match="short_shard"):
        samples = list(ds)
    assert len(samples) == 14 - 3
    assert ds.counters.counts["short_shard"] == 1
    with pytest.raises(ShardReadError, match="3 of the manifest's samples are missing"):
        list(ShardStream(demo_folder, shuffle=False, on_error="raise"))


def test_bad_json_member_is_skipped(tmp_path):
    members = sample_members(0) + sample_members(1)
    name = members[1][0]
    members[1] = (name, b"\xff not json")
    shard = write_raw_tar(tmp_path / "bad-000000.tar", members)
    ds = ShardStream(str(shard), fill_failures=False)
    with pytest.warns(ShardWarning, match="bad_json"):
        assert len(list(ds)) == 1
    assert ds.counters.counts["bad_json"] == 1


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _png_header(width: int, height: int) -> bytes:
    """A PNG declaring ``width x height`` whose IDAT holds a few bytes only (nothing to decode)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _chunk(b"IEND", b""))


def test_too_large_images_are_refused_before_decoding():
    # 9000 x 9000 is under Pillow's own threshold: only our header check can refuse it, and the
    # data holds no pixels, so a decode attempt would fail differently.
    with pytest.raises(ImageTooLargeError, match="cap 1000000"):
        decode_image(_png_header(9000, 9000), max_pixels=1_000_000)
    # far beyond Pillow's hard limit: refused as too large too, whatever our cap
    with pytest.raises(ImageTooLargeError):
        decode_image(_png_header(100_000, 100_000), max_pixels=None)
    ok = decode_image(image_bytes(40, 30, "png", 0), max_pixels=40 * 30)
    assert ok.mode == "RGB" and ok.size == (40, 30)


def test_stream_refuses_large_images_and_counts_them(shared_folder):
    ds = ShardStream(shared_folder, decode=True, max_image_pixels=40 * 30 - 1, fill_failures=False)
    with pytest.warns(ShardWarning, match="image_too_large"):
        samples = list(ds)
    assert all(s["image_bytes"] is None for s in samples)   # only text-only samples survive
    assert ds.counters.counts["image_too_large"] == 14 - len(samples) > 0
    with pytest.raises(ShardReadError, match="pixels > cap"):
        list(ShardStream(shared_folder, decode=True, max_image_pixels=100, on_error="raise"))


def test_decoders_reject_non_objects_and_unknown_formats():
    with pytest.raises(ValueError, match="not an object"):
        decode_json(b"[1, 2]", "k.json")
    with pytest.raises(ValueError, match="not UTF-8 JSON"):
        decode_json(b"\xff", "k.json")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(Exception) as info:
        decode_image(eps)
    assert not isinstance(info.value, ImageTooLargeError)


def test_warnings_are_capped_but_counts_are_not():
    policy = ErrorPolicy("skip", max_warnings=2)
    with pytest.warns(ShardWarning) as record:
        for i in range(5):
            policy.report("bad_image", f"s:{i}", "broken")
    assert len(record) == 2 and policy.counters.counts["bad_image"] == 5
    assert policy.counters.first["bad_image"] == "s:0"
    with pytest.raises(ValueError, match="on_error"):
        ErrorPolicy("ignore")
    assert safety.INFO_KINDS >= {"pickle_member", "ignored_member"}
