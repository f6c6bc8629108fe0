"""``crop validate``: passes on good shards, fails naming the bad record/file on corrupted ones."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from crop.cli import main
from crop.data.validate_cmd import validate_folder


def rewrite_member(shard, member_suffix: str, edit) -> str:
    """Rewrite the first member ending in ``member_suffix`` with ``edit(bytes) -> bytes``, keeping
    order; return the member's key. The manifest is NOT updated (sha/bytes become stale)."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    target = next(m.name for m, _ in members if m.name.endswith(member_suffix))
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            if m.name == target:
                data = edit(data)
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return target.split(".")[0]


def refresh_manifest(folder, shard) -> None:
    """Make manifest + shard stats agree with the file again (isolates the record-level check)."""
    raw = shard.read_bytes()
    info = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    manifest = json.loads((folder / "manifest.json").read_text())
    for e in manifest["shards"]:
        if e["shard"] == shard.name:
            e.update(info)
    manifest["totals"]["bytes"] = sum(e["bytes"] for e in manifest["shards"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    stats_path = folder / (shard.name[:-4] + ".stats.json")
    stats = json.loads(stats_path.read_text())
    stats.update(info)
    stats_path.write_text(json.dumps(stats))


def test_good_folder_passes(demo_folder, capsys):
    report = validate_folder(demo_folder)
    assert report.ok, report.violations
    assert (report.shards, report.samples, report.rejects) == (4, 14, 1)
    assert main(["validate", str(demo_folder)]) == 0
    assert "OK" in capsys.readouterr().out


def test_bad_record_is_named(demo_folder, capsys):
    shard = demo_folder / "demo-000002.tar"

    def break_record(data: bytes) -> bytes:
        rec = json.loads(data)
        rec["region_blocks"] = [0, 0, 9]  # three values, schema wants four
        return json.dumps(rec).encode()

    key = rewrite_member(shard, ".json", break_record)
    refresh_manifest(demo_folder, shard)
    report = validate_folder(demo_folder)
    assert len(report.violations) == 1
    assert report.violations[0].startswith(f"demo-000002.tar: {key}: ")
    assert "region_blocks" in report.violations[0]
    assert main(["validate", str(demo_folder)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and key in out


def test_stale_checksum_and_count_are_reported(demo_folder):
    shard = demo_folder / "demo-000001.tar"
    size = shard.stat().st_size
    rewrite_member(shard, ".json", lambda d: d + b" ")  # same size (block padding), new hash
    text = "\n".join(validate_folder(demo_folder).violations)
    assert "demo-000001.tar: sha256" in text and "bytes, manifest says" not in text
    shard.write_bytes(shard.read_bytes() + bytes(10240))  # extra end-of-archive padding
    text = "\n".join(validate_folder(demo_folder).violations)
    assert f"demo-000001.tar: {size + 10240} bytes, manifest says {size}" in text
    manifest = json.loads((demo_folder / "manifest.json").read_text())
    manifest["shards"][0]["samples"] += 1
    (demo_folder / "manifest.json").write_text(json.dumps(manifest))
    text = "\n".join(validate_folder(demo_folder).violations)
    assert "demo-000000.tar: 5 samples, manifest says 6" in text
    assert "totals.samples 14 != sum over shards 15" in text


def test_image_size_mismatch_unsafe_member_and_extra_shard(demo_folder):
    from shard_factory import image_bytes

    shard = demo_folder / "demo-000003.tar"
    key = rewrite_member(shard, ".jpg", lambda d: image_bytes(41, 30, "jpg", 0))
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("../escape.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    refresh_manifest(demo_folder, shard)
    (demo_folder / "demo-000099.tar").write_bytes((demo_folder / "demo-000000.tar").read_bytes())
    text = "\n".join(validate_folder(demo_folder).violations)
    assert f"demo-000003.tar: {key}: image is 41x30, record says 40x30" in text
    assert "demo-000003.tar: ../escape.json: unexpected member (unsafe)" in text
    assert "demo-000099.tar: shard on disk but not in manifest.json" in text
    assert f"{key}" not in text.replace(f"demo-000003.tar: {key}: image", "")  # no duplicate-key noise


@pytest.mark.parametrize("target,needle", [
    ("stats.json", "stats.json: stats"), ("demo-000000.stats.json", "demo-000000.stats.json: shard_stats"),
    ("rejects.jsonl", "rejects.jsonl:1: rejects"), ("manifest.json", "manifest.json: manifest"),
])
def test_side_files_are_checked_against_their_schemas(demo_folder, target, needle):
    path = demo_folder / target
    text = path.read_text()
    obj = json.loads(text.splitlines()[0] if target.endswith(".jsonl") else text)
    obj["unexpected_field"] = 1
    path.write_text(json.dumps(obj) + "\n")
    report = validate_folder(demo_folder)
    assert not report.ok
    assert any(v.startswith(needle) and "unexpected_field" in v for v in report.violations), report.violations


def test_missing_folder_fails(tmp_path):
    assert main(["validate", str(tmp_path / "nope")]) == 1
