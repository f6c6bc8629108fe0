"""The shard tar writer: byte-identical to tarfile's own stream writer, hash and size exact."""

import hashlib
import io
import json
import tarfile

from pipelines import shards

SAMPLES = [("a-1", {"k": 1}, b"x" * 1000, "jpg"), ("a-2", {"k": 2}, None, None),
           ("b-3", {"ü": "é"}, b"y" * 513, "png"), ("c-4", {"big": "z" * 20000}, b"\0" * 10240, "webp")]


def _tarfile_reference(samples) -> bytes:
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for key, record, data, ext in samples:
            members = {"json": json.dumps(record, sort_keys=True, ensure_ascii=False).encode()}
            if data is not None:
                members[ext] = data
            for e, payload in sorted(members.items()):
                ti = tarfile.TarInfo(f"{key}.{e}")
                ti.size, ti.mtime, ti.mode = len(payload), 0, 0o644
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = "crop"
                tf.addfile(ti, io.BytesIO(payload))
    return ref.getvalue()


def test_writer_matches_tarfile_stream_mode_byte_for_byte():
    buf = io.BytesIO()
    info = shards._write_tar(buf, SAMPLES)
    assert buf.getvalue() == _tarfile_reference(SAMPLES)
    assert info == {"bytes": len(buf.getvalue()), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}


def test_batches_larger_than_the_flush_size_hash_correctly(monkeypatch):
    monkeypatch.setattr(shards._BatchedSink, "BATCH", 600)  # force many batches
    buf = io.BytesIO()
    info = shards._write_tar(buf, SAMPLES)
    assert info["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        assert tf.getnames() == sorted(tf.getnames()) and len(tf.getnames()) == 7
        assert tf.extractfile("b-3.png").read() == b"y" * 513
