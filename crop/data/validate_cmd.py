"""``crop validate FOLDER``: check a built dataset against ``schemas/`` and its own manifest.

Checks, each failure becoming one violation line that names the file (and record key):

* ``manifest.json``, ``stats.json``, every ``rejects.jsonl`` line and every ``<shard>.stats.json``
  against their schemas (:func:`crop.contract.validate`);
* each shard listed in the manifest: exists, size and sha256 as recorded, its stats file agrees
  with the manifest entry; every member has a safe ``<key>.<ext>`` name, members are sorted, each
  sample has exactly one ``.json`` that satisfies the sample schema and carries the member key, an
  image member exactly when ``record["image"]`` is set, whose header size equals
  ``image_width x image_height``; sample, per-source and per-kind counts equal the manifest's;
  keys are unique across shards;
* no ``*.tar`` in the folder is missing from the manifest; totals add up; rejects per source
  match ``totals.rejected``.

Nothing is unpickled or decoded beyond JSON and image headers. Exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from crop.contract import ContractError, validate
from crop.data.safety import classify_member, decode_json, image_size

CORE_FIELDS = ("shard", "samples", "bytes", "sha256", "per_source", "per_kind")


@dataclass
class Report:
    folder: str
    shards: int = 0
    samples: int = 0
    per_kind: collections.Counter = field(default_factory=collections.Counter)
    rejects: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def bad(self, where: str, message: str) -> None:
        self.violations.append(f"{where}: {message}")


def _load_json(path: Path, report: Report, schema: str) -> dict | None:
    if not path.is_file():
        report.bad(path.name, "missing")
        return None
    try:
        obj = decode_json(path.read_bytes(), path.name)
        validate(obj, schema)
        return obj
    except (ValueError, ContractError) as e:
        report.bad(path.name, str(e))
        return None


def _sha256(path: Path) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def _check_sample(shard: str, key: str, members: dict[str, bytes], report: Report,
                  check_images: bool) -> dict | None:
    where = f"{shard}: {key}"
    if "json" not in members:
        report.bad(where, "no .json member")
        return None
    try:
        rec = decode_json(members["json"], f"{key}.json")
        validate(rec, "sample")
    except (ValueError, ContractError) as e:
        report.bad(where, str(e))
        return None
    if rec["key"] != key:
        report.bad(where, f"record key {rec['key']!r} differs from the member name")
    images = [ext for ext in members if ext != "json"]
    if rec["image"] is None and images:
        report.bad(where, f"text-only record has image member(s) {images}")
    elif rec["image"] is not None and len(images) != 1:
        report.bad(where, f"record has an image but {len(images)} image members")
    elif rec["image"] is not None and check_images:
        try:
            size = image_size(members[images[0]])
        except Exception as e:  # noqa: BLE001 - any Pillow failure means "unreadable"
            report.bad(where, f"image member .{images[0]} unreadable: {e}")
        else:
            if size != (rec["image_width"], rec["image_height"]):
                report.bad(where, f"image is {size[0]}x{size[1]}, record says "
                                  f"{rec['image_width']}x{rec['image_height']}")
    return rec


def check_shard(path: Path, entry: dict, report: Report, seen: dict[str, str],
                check_images: bool = True) -> None:
    """Check one shard file against its manifest entry (appends to ``report``)."""
    name = path.name
    if not path.is_file():
        report.bad(name, "listed in the manifest but missing")
        return
    size, digest = _sha256(path)
    if size != entry["bytes"]:
        report.bad(name, f"{size} bytes, manifest says {entry['bytes']}")
    if digest != entry["sha256"]:
        report.bad(name, f"sha256 {digest[:12]}... differs from the manifest's {entry['sha256'][:12]}...")
    stats = _load_json(path.with_name(name[:-4] + ".stats.json"), report, "shard_stats")
    if stats is not None:
        for k in CORE_FIELDS:
            if stats[k] != entry[k]:
                report.bad(name[:-4] + ".stats.json", f"{k} {stats[k]!r} != manifest {entry[k]!r}")
    names: list[str] = []
    groups: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                names.append(info.name)
                kind, key, ext = classify_member(info.name)
                if not info.isreg() or kind in ("unsafe", "pickle", "other"):
                    report.bad(f"{name}: {info.name}", f"unexpected member ({kind if info.isreg() else 'not a file'})")
                    continue
                group = groups.setdefault(key, {})
                if ext in group:
                    report.bad(f"{name}: {info.name}", "duplicate member")
                group[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        report.bad(name, f"unreadable tar: {e!r}")
        return
    if names != sorted(names):
        report.bad(name, "members are not sorted by name")
    per_source, per_kind = collections.Counter(), collections.Counter()
    for key, members in groups.items():
        if key in seen:
            report.bad(f"{name}: {key}", f"duplicate key, also in {seen[key]}")
        seen[key] = name
        rec = _check_sample(name, key, members, report, check_images)
        if rec is not None:
            per_source[rec["source"]] += 1
            per_kind[rec["kind"]] += 1
    n = sum(1 for m in groups.values() if "json" in m)
    if n != entry["samples"]:
        report.bad(name, f"{n} samples, manifest says {entry['samples']}")
    for label, got, want in (("per_source", per_source, entry["per_source"]),
                             ("per_kind", per_kind, entry["per_kind"])):
        if sum(per_source.values()) == n and dict(got) != dict(want):
            report.bad(name, f"{label} {dict(sorted(got.items()))} != manifest {want}")
    report.samples += n
    report.per_kind.update(per_kind)


def validate_folder(folder: str | os.PathLike, check_images: bool = True,
                    progress: bool = False) -> Report:
    """Run every check on a built dataset folder; the report lists each violation."""
    root = Path(folder)
    report = Report(str(root))
    if not root.is_dir():
        report.bad(str(root), "not a folder")
        return report
    manifest = _load_json(root / "manifest.json", report, "manifest")
    stats = _load_json(root / "stats.json", report, "stats")
    rejects_by_source: collections.Counter = collections.Counter()
    rejects_path = root / "rejects.jsonl"
    if not rejects_path.is_file():
        report.bad("rejects.jsonl", "missing")
    else:
        for i, line in enumerate(rejects_path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = decode_json(line, f"rejects.jsonl:{i}")
                validate(row, "rejects")
                rejects_by_source[row["source"]] += 1
            except (ValueError, ContractError) as e:
                report.bad(f"rejects.jsonl:{i}", str(e))
        report.rejects = sum(rejects_by_source.values())
    if manifest is None:
        return report
    entries = manifest["shards"]
    listed = {e["shard"] for e in entries}
    for extra in sorted(p.name for p in root.glob("*.tar") if p.name not in listed):
        report.bad(extra, "shard on disk but not in manifest.json")
    seen: dict[str, str] = {}
    from tqdm import tqdm

    for entry in tqdm(entries, desc="validate shards", unit="shard", disable=not progress):
        check_shard(root / entry["shard"], entry, report, seen, check_images)
        report.shards += 1
    totals = manifest["totals"]
    sums = {"samples": sum(e["samples"] for e in entries), "bytes": sum(e["bytes"] for e in entries),
            "shards": len(entries)}
    for k, v in sums.items():
        if totals[k] != v:
            report.bad("manifest.json", f"totals.{k} {totals[k]} != sum over shards {v}")
    for k in ("per_source", "per_kind"):
        merged = collections.Counter()
        for e in entries:
            merged.update(e[k])
        if dict(merged) != totals[k]:
            report.bad("manifest.json", f"totals.{k} {totals[k]} != sum over shards {dict(merged)}")
        if stats is not None and stats[k] != totals[k]:
            report.bad("stats.json", f"{k} {stats[k]} != manifest totals {totals[k]}")
    if rejects_path.is_file() and dict(rejects_by_source) != totals["rejected"]:
        report.bad("rejects.jsonl", f"rejects per source {dict(rejects_by_source)} != manifest "
                                    f"totals.rejected {totals['rejected']}")
    return report


def format_report(report: Report, max_show: int = 50) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.per_kind.items())) or "none"
    lines = [f"crop validate {report.folder}: {'OK' if report.ok else 'FAILED'}",
             f"  shards {report.shards}, samples {report.samples} ({kinds}), rejects {report.rejects}",
             f"  violations {len(report.violations)}"]
    lines += [f"  - {v}" for v in report.violations[:max_show]]
    if len(report.violations) > max_show:
        lines.append(f"  ... and {len(report.violations) - max_show} more")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="built dataset folder (manifest.json, shards, stats, rejects)")
    parser.add_argument("--no-image-check", action="store_true",
                        help="skip reading image headers (size vs image_width/image_height)")
    parser.add_argument("--max-show", type=int, default=50, help="violations to print (default 50)")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="also write the report as JSON to this path")


def run(args: argparse.Namespace) -> int:
    report = validate_folder(args.folder, check_images=not args.no_image_check, progress=True)
    print(format_report(report, args.max_show))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"folder": report.folder, "ok": report.ok, "shards": report.shards,
             "samples": report.samples, "rejects": report.rejects,
             "violations": report.violations}, indent=2))
    return 0 if report.ok else 1
