"""The fast tar path under ShardStream: same headers, same data, same errors as plain tarfile."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crop.data.safety import ErrorPolicy, classify_member, count_sample_runs, iter_shard_samples
from crop.data.stream import ShardStream
from crop.data.tar_headers import FastTarInfo, open_mode, parse_plain_header, read_member_data
from shard_factory import make_sample

SIZES = (0, 1, 511, 512, 513, 3000)


def _archive(fmt: int, compress: bool = False, global_pax: bool = False) -> bytes:
    """Every member kind the fast path must either parse exactly or hand back to tarfile."""
    buf = io.BytesIO()
    extra = {"pax_headers": {"comment": "global"}} if global_pax else {}
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **extra) as tar:
        for i, size in enumerate(SIZES):
            info = tarfile.TarInfo(f"k{i}.jpg")
            info.size, info.mode, info.mtime, info.uid, info.uname = size, 0o640, 1_700_000_000 + i, 7, "u"
            tar.addfile(info, io.BytesIO(bytes([i]) * size))
        long = () if fmt == tarfile.USTAR_FORMAT else ("d" * 120 + ".json",)  # ustar: prefix only
        for name in (*long, "x/" * 60 + "deep.json", "dir/", "ünïcode.json"):
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            else:
                info.size = 5
            tar.addfile(info, io.BytesIO(b"hello") if info.isreg() else None)
        link = tarfile.TarInfo("k0.lnk")
        link.type, link.linkname = tarfile.SYMTYPE, "k0.jpg"
        tar.addfile(link)
    data = buf.getvalue()
    return gzip.compress(data, mtime=0) if compress else data


def _members(data: bytes, tarinfo, mode: str):
    """``[(header fields, offsets, data)]`` of every member, read the way iter_shard_samples does."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode=mode, tarinfo=tarinfo) as tar:
        while (info := tar.next()) is not None:
            body = read_member_data(tar, info) if info.isreg() else None
            out.append((info.get_info(), info.offset, info.offset_data, info.pax_headers, body))
    return out


@pytest.mark.parametrize("mode", ["r|*", "r:*"])
@pytest.mark.parametrize("fmt,compress,global_pax", [
    (tarfile.USTAR_FORMAT, False, False), (tarfile.GNU_FORMAT, False, False),
    (tarfile.PAX_FORMAT, False, False), (tarfile.USTAR_FORMAT, True, False),
    (tarfile.PAX_FORMAT, True, False), (tarfile.PAX_FORMAT, False, True),  # global: PAX only
])
def test_fast_headers_and_reads_match_plain_tarfile(fmt, mode, compress, global_pax):
    data = _archive(fmt, compress, global_pax)
    fast = _members(data, FastTarInfo, mode)
    plain = [(i.get_info(), i.offset, i.offset_data, i.pax_headers, body)
             for i, body in _plain_members(data)]
    assert fast == plain
    assert [f[4] for f in fast[:len(SIZES)]] == [bytes([i]) * s for i, s in enumerate(SIZES)]
    if global_pax:
        assert all(f[3].get("comment") == "global" for f in fast)


def _plain_members(data: bytes):
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(i, tar.extractfile(i).read() if i.isreg() else None) for i in tar.getmembers()]


def test_plain_headers_take_the_fast_path_and_others_do_not():
    with tarfile.open(fileobj=io.BytesIO(_archive(tarfile.GNU_FORMAT)), mode="r|") as tar:
        headers = []
        while (info := tar.next()) is not None:
            headers.append((info.name, info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")))
    # the first block of each member is what tarfile reads first: a long name's is a GNU 'L' record
    fast = {name for name, buf in headers
            if parse_plain_header(FastTarInfo, buf[:512], "utf-8", "surrogateescape") is not None}
    assert fast == {f"k{i}.jpg" for i in range(len(SIZES))} | {"ünïcode.json"}
    zero = parse_plain_header(FastTarInfo, bytes(512), "utf-8", "strict")
    assert zero is None  # the end-of-archive block is tarfile's to report


def _one_header() -> bytes:
    info = tarfile.TarInfo("sample-0001.json")
    info.size, info.mtime, info.mode = 1234, 1_700_000_000, 0o644
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def _outcome(cls, buf: bytes):
    try:
        return cls.frombuf(buf, "utf-8", "surrogateescape").get_info()
    except Exception as e:  # noqa: BLE001 - the error type is the outcome being compared
        return type(e)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 511), st.sampled_from(
    [0, 32, 48, 55, 56, 0x80, 0xFF, ord("/"), ord("-"), ord("_"), ord("x"), ord("5")])), max_size=4),
    st.booleans())
def test_fast_parser_never_disagrees_with_tarfile(edits, fix_checksum):
    """Corrupted headers (digits, NULs, base-256 markers, types, prefixes): same result or error."""
    buf = bytearray(_one_header())
    for pos, value in edits:
        buf[pos] = value
    if fix_checksum:  # make the checksum valid again so the field parsers are what is tested
        buf[148:156] = b" " * 8
        buf[148:156] = b"%06o\0 " % (sum(buf) & 0o777777)
    assert _outcome(FastTarInfo, bytes(buf)) == _outcome(tarfile.TarInfo, bytes(buf))


def test_read_member_data_refuses_truncation_and_negative_sizes():
    data = _archive(tarfile.USTAR_FORMAT)
    cut = data[:512 + 600]          # k0 (empty) header, k1 header + 1 byte ... into k2's data
    with pytest.raises(tarfile.ReadError, match="unexpected end"):
        _members(cut + bytes(10), FastTarInfo, "r|*")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|", tarinfo=FastTarInfo) as tar:
        info = tar.next()
        info.size = -1
        with pytest.raises(tarfile.ReadError, match="negative size"):
            read_member_data(tar, info)


def test_open_mode_is_random_access_only_for_os_files(tmp_path):
    path = tmp_path / "a.tar"
    path.write_bytes(_archive(tarfile.USTAR_FORMAT))
    with open(path, "rb", buffering=0) as raw, open(path, "rb") as buffered:
        assert open_mode(raw) == open_mode(buffered) == "r:*"
    assert open_mode(io.BytesIO(b"")) == "r|*"
    r, w = os.pipe()
    try:
        with os.fdopen(r, "rb", buffering=0) as pipe:
            assert open_mode(pipe) == "r|*"
    finally:
        os.close(w)


def _shard(path: Path, n: int) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n):
            rec, data, ext = make_sample(i)
            members = [(f"{rec['key']}.json", json.dumps(rec).encode())]
            if data is not None:
                members.insert(0, (f"{rec['key']}.{ext}", data))
            members.insert(0, (f"{rec['key']}.pyd", b"\x80\x04K\x01."))
            for name, body in members:
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return path


@pytest.mark.parametrize("start,stop", [(0, None), (2, 5), (6, 7)])
def test_file_and_stream_reads_give_the_same_samples(tmp_path, start, stop):
    path = _shard(tmp_path / "s.tar", 7)
    policy_a, policy_b = ErrorPolicy(), ErrorPolicy()
    with open(path, "rb", buffering=0) as f:
        from_file = list(iter_shard_samples(f, "s", policy_a, start, stop))
    from_stream = list(iter_shard_samples(io.BytesIO(path.read_bytes()), "s", policy_b, start, stop))
    assert from_file == from_stream
    assert [s.index for s in from_file] == list(range(start, 7 if stop is None else stop))
    assert policy_a.counters.counts == policy_b.counters.counts
    assert policy_a.counters.counts["pickle_member"] >= 1          # seen, counted, never read
    with tarfile.open(path) as tar:
        assert count_sample_runs(m.name for m in tar) == 7


def test_trailing_newline_in_a_name_is_unsafe():
    assert classify_member("k.json\n")[0] == "unsafe"
    assert classify_member("k.json")[0] == "json"


def test_a_fill_repeats_the_last_good_sample_exactly(tmp_path):
    """Failures are filled by re-finishing the last good item: same record, flagged __pad__."""
    path = _shard(tmp_path / "s.tar", 6)
    data = bytearray(path.read_bytes())
    key = make_sample(3)[0]["key"]
    at = data.index(f"{key}.json".encode()) + 512     # that member's data block
    data[at:at + 1] = b"]"                             # its JSON no longer parses
    path.write_bytes(bytes(data))
    with pytest.warns(Warning, match="bad_json"):
        samples = list(ShardStream(str(path), shuffle=False, decode=True))
    assert len(samples) == 6 and samples[3]["__pad__"] and not samples[2]["__pad__"]
    assert samples[3]["__key__"] == samples[2]["__key__"]
    assert samples[3]["json"] == samples[2]["json"] and samples[3]["json"] is not samples[2]["json"]
    if samples[2]["image"] is not None:
        assert samples[3]["image"].tobytes() == samples[2]["image"].tobytes()
