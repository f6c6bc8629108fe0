"""Merging per-shard stats into ``manifest.json`` / ``stats.json``, and count reconciliation.

Pure functions: the Beam graph hands them plain lists collected at the end of the run.
Reconciliation is the safety net against silent element loss in a runner: for every source,
records read = samples written + records rejected + valid records the recipe did not take
(``capped``). A mismatch fails the build.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable, Mapping

SCHEMA_VERSION = 1
SHARD_CORE_FIELDS = ("shard", "samples", "bytes", "sha256", "per_source", "per_kind")


class ReconciliationError(RuntimeError):
    """Counts do not add up: records were lost (or duplicated) somewhere in the run."""


def empty_sample_stats() -> dict:
    return {"regions_by_area_blocks": {}, "regions_by_shape": {}, "regions_per_sample": {},
            "boxes": {"total": 0, "clipped": 0, "multi_box_records": 0, "merged_away": 0,
                      "dropped_invalid": 0},
            "image_sizes": {"min_width": None, "max_width": None, "min_height": None,
                            "max_height": None, "count": 0}}


def add_sample(stats: dict, record: Mapping, boxes_info: Mapping | None) -> None:
    """Fold one written record into mergeable sample stats (mutates ``stats``)."""
    if record["image_width"] is not None:
        s = stats["image_sizes"]
        w, h = record["image_width"], record["image_height"]
        s["min_width"] = w if s["min_width"] is None else min(s["min_width"], w)
        s["max_width"] = w if s["max_width"] is None else max(s["max_width"], w)
        s["min_height"] = h if s["min_height"] is None else min(s["min_height"], h)
        s["max_height"] = h if s["max_height"] is None else max(s["max_height"], h)
        s["count"] += 1
    region = record["region_blocks"]
    if region is not None:
        w, h = region[2] - region[0] + 1, region[3] - region[1] + 1
        area, shape = str(w * h), f"{w}x{h}"
        stats["regions_by_area_blocks"][area] = stats["regions_by_area_blocks"].get(area, 0) + 1
        stats["regions_by_shape"][shape] = stats["regions_by_shape"].get(shape, 0) + 1
        n = str(len(record.get("regions_blocks") or [region]))  # v1 records: one region
        stats["regions_per_sample"][n] = stats["regions_per_sample"].get(n, 0) + 1
    if boxes_info is not None:
        b = stats["boxes"]
        n = boxes_info["n_boxes"]
        b["total"] += n
        b["clipped"] += boxes_info["n_clipped"]
        b["dropped_invalid"] += boxes_info["n_dropped"]
        if n > 1:
            b["multi_box_records"] += 1
            b["merged_away"] += n - boxes_info["n_dropped"] - len(boxes_info.get("regions") or [None])


def merge_sample_stats(parts: Iterable[Mapping]) -> dict:
    out = empty_sample_stats()
    for p in parts:
        for k in ("regions_by_area_blocks", "regions_by_shape", "regions_per_sample"):
            for key, n in p.get(k, {}).items():
                out[k][key] = out[k].get(key, 0) + n
        for k, n in p["boxes"].items():
            out["boxes"][k] += n
        s, o = p["image_sizes"], out["image_sizes"]
        if s["count"]:
            for k, f in (("min_width", min), ("max_width", max), ("min_height", min), ("max_height", max)):
                o[k] = s[k] if o[k] is None else f(o[k], s[k])
            o["count"] += s["count"]
    # Stable, readable order: areas numerically, shapes by area then name.
    out["regions_by_area_blocks"] = dict(sorted(out["regions_by_area_blocks"].items(), key=lambda kv: int(kv[0])))
    out["regions_by_shape"] = dict(sorted(out["regions_by_shape"].items()))
    out["regions_per_sample"] = dict(sorted(out["regions_per_sample"].items(), key=lambda kv: int(kv[0])))
    return out


def _sorted_counts(c: Mapping) -> dict:
    return {k: c[k] for k in sorted(c)}


def reconcile(read: Mapping[str, int], written: Mapping[str, int],
              rejected: Mapping[str, int], capped: Mapping[str, int]) -> None:
    """Raise :class:`ReconciliationError` unless read = written + rejected + capped per source."""
    bad = []
    for s in sorted(set(read) | set(written) | set(rejected) | set(capped)):
        r, w, j, c = read.get(s, 0), written.get(s, 0), rejected.get(s, 0), capped.get(s, 0)
        if r != w + j + c:
            bad.append(f"{s}: read {r} != written {w} + rejected {j} + capped {c} "
                       f"(missing {r - w - j - c})")
    if bad:
        raise ReconciliationError("record counts do not reconcile; elements were lost or duplicated:\n  "
                                  + "\n  ".join(bad))


def build_outputs(*, name: str, recipe: Mapping, shard_stats: list[Mapping], rejects: list[Mapping],
                  read: Mapping[str, int], selection: Mapping[str, Mapping], inputs: list[Mapping]
                  ) -> tuple[dict, dict, list[dict]]:
    """Assemble ``(manifest, stats, all_rejects_sorted)`` and reconcile the counts."""
    shard_stats = sorted(shard_stats, key=lambda s: s["shard"])
    all_rejects = list(rejects) + [r for s in shard_stats for r in s["rejects"]]
    all_rejects.sort(key=lambda r: (r["source"], r["file"], r["line"] or 0, r["id"] or "", r["reason"]))
    per_source, per_kind = Counter(), Counter()
    for s in shard_stats:
        per_source.update(s["per_source"])
        per_kind.update(s["per_kind"])
    rejected_n = Counter(r["source"] for r in all_rejects)
    by_reason: dict[str, Counter] = defaultdict(Counter)
    for r in all_rejects:
        by_reason[r["source"]][r["reason"]] += 1
    capped = {s: v["capped"] for s, v in selection.items() if v["capped"]}
    shortfall = {s: v["wanted"] - v["selected"] for s, v in selection.items()
                 if v["wanted"] is not None and v["wanted"] > v["selected"]}
    reconcile(read, per_source, rejected_n, capped)

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "shards": [{k: s[k] for k in SHARD_CORE_FIELDS} for s in shard_stats],
        "totals": {
            "samples": sum(s["samples"] for s in shard_stats),
            "bytes": sum(s["bytes"] for s in shard_stats),
            "shards": len(shard_stats),
            "per_source": _sorted_counts(per_source),
            "per_kind": _sorted_counts(per_kind),
            "rejected": _sorted_counts(rejected_n),
            "read": _sorted_counts(read),
        },
        "recipe": dict(recipe),
        "inputs": sorted(inputs, key=lambda i: (i["input"], i["path"])),
    }
    stats = {
        "schema_version": SCHEMA_VERSION,
        "per_source": _sorted_counts(per_source),
        "per_kind": _sorted_counts(per_kind),
        "read": _sorted_counts(read),
        "rejected_by_reason": {s: _sorted_counts(by_reason[s]) for s in sorted(by_reason)},
        "capped": _sorted_counts(capped),
        "shortfall": _sorted_counts(shortfall),
        **merge_sample_stats(s["sample_stats"] for s in shard_stats),
    }
    return manifest, stats, all_rejects


INTERNAL_ERROR = "internal_error"


def internal_error_count(stats: Mapping) -> int:
    """Records whose processing raised an unexpected exception (a builder bug, see rejects.jsonl)."""
    return sum(per.get(INTERNAL_ERROR, 0) for per in stats["rejected_by_reason"].values())


def internal_error_line(stats: Mapping, color: bool = False) -> str | None:
    """The summary's alarm line when any record hit an internal error (red on a terminal)."""
    n = internal_error_count(stats)
    if not n:
        return None
    line = (f"  INTERNAL ERRORS: {n} record(s) raised an unexpected exception in the builder (a bug, not bad "
            f"data); they are rejects with reason {INTERNAL_ERROR} in rejects.jsonl (exception in the detail)")
    return f"\033[31m{line}\033[0m" if color else line


def human_summary(manifest: Mapping, stats: Mapping, seconds: float, color: bool = False) -> str:
    t = manifest["totals"]
    lines = [f"Built {manifest['name']}: {t['samples']} samples in {t['shards']} shards, "
             f"{t['bytes'] / 1e6:.1f} MB, {seconds:.1f} s ({t['samples'] / max(seconds, 1e-9):.0f} samples/s)"]
    lines.append(f"  {'source':<16}{'read':>9}{'written':>9}{'rejected':>9}{'capped':>9}")
    for s in sorted(set(t["read"]) | set(t["per_source"])):
        lines.append(f"  {s:<16}{t['read'].get(s, 0):>9}{t['per_source'].get(s, 0):>9}"
                     f"{t['rejected'].get(s, 0):>9}{stats['capped'].get(s, 0):>9}")
    reasons = Counter()
    for per in stats["rejected_by_reason"].values():
        reasons.update(per)
    if reasons:
        lines.append("  rejects by reason: " + ", ".join(f"{r} {n}" for r, n in reasons.most_common()))
    if stats["shortfall"]:
        lines.append("  caps above what a source has (took all): "
                     + ", ".join(f"{s} short by {n}" for s, n in stats["shortfall"].items()))
    alarm = internal_error_line(stats, color)
    if alarm:
        lines.append(alarm)
    return "\n".join(lines)
