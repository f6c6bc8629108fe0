"""``crop report``: one static HTML file describing a built dataset, readable offline.

Everything is inside the file: gallery pictures are PNG data URIs, the region histogram is inline
SVG, styles are inline, and a Content-Security-Policy forbids any other source, so the page renders
the same on an air-gapped machine as anywhere else. Sections: counts per source, rejects by
reason (``stats.json``, with examples from ``rejects.jsonl``), region size histogram, and a gallery
of samples drawn by :func:`crop.viz.draw.render_sample` (round-robin over sources).

Every gallery picture starts with a solid ``GALLERY_BAND`` strip; a screenshot test looks for it
to prove the browser really decoded and painted the images.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import sys
from collections import Counter, defaultdict
from typing import Iterable, Mapping

GALLERY_BAND = (255, 0, 200)  # appears nowhere else on the page
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body { font: 14px/1.4 sans-serif; margin: 16px 24px; color: #222; background: #fafafa; }
table { border-collapse: collapse; margin: 8px 0 16px; } td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #eee; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.bar { display: inline-block; height: 10px; background: #4a78c2; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, var(--thumb)), 1fr));
           gap: 12px; align-items: start; }
figure { margin: 0; background: #fff; border: 1px solid #ccc; } img.sample { width: 100%; height: auto; display: block; }
h2.bad { color: #b00; }
code { background: #eee; padding: 0 3px; } .muted { color: #777; }
"""


def _load_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def reject_examples(path: str, per_reason: int = 3) -> tuple[Counter, dict[str, list[dict]], int]:
    """Count ``rejects.jsonl`` rows by reason and keep the first few of each; also count bad lines."""
    counts: Counter = Counter()
    examples: dict[str, list[dict]] = defaultdict(list)
    bad = 0
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    reason = row["reason"]
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    continue
                counts[reason] += 1
                if len(examples[reason]) < per_reason:
                    examples[reason].append(row)
    return counts, examples, bad


def histogram_svg(by_area: Mapping[int, int], grid: int = 8, width: int = 760, height: int = 220) -> str:
    """Inline SVG bar chart of region area in blocks (1 .. grid*grid)."""
    n = grid * grid
    top = max(by_area.values(), default=0) or 1
    left, bottom, pad = 48, 28, 8
    plot_w, plot_h = width - left - pad, height - bottom - pad
    bar_w = plot_w / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="region area histogram">',
             f'<line x1="{left}" y1="{pad + plot_h}" x2="{left + plot_w}" y2="{pad + plot_h}" stroke="#444"/>',
             f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{pad + plot_h}" stroke="#444"/>',
             f'<text x="{left - 6}" y="{pad + 10}" font-size="11" text-anchor="end">{top}</text>',
             f'<text x="{left - 6}" y="{pad + plot_h}" font-size="11" text-anchor="end">0</text>']
    for area in range(1, n + 1):
        count = by_area.get(area, 0)
        h = plot_h * count / top
        x = left + (area - 1) * bar_w
        parts.append(f'<rect class="hbar" x="{x + 0.5:.1f}" y="{pad + plot_h - h:.1f}" '
                     f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" fill="#4a78c2">'
                     f'<title>{area} blocks: {count}</title></rect>')
        if area in (1, 8, 16, 24, 32, 40, 48, 56, 64) and area <= n:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - 10}" font-size="11" '
                         f'text-anchor="middle">{area}</text>')
    parts.append("</svg>")
    return "".join(parts)


def pick_gallery(paths: Iterable[str], n: int, max_scan: int = 5000,
                 skipped: list[tuple[str, str]] | None = None) -> list[tuple[dict, bytes | None]]:
    """Up to ``n`` samples, round-robin over sources, from the first ``max_scan`` samples read.

    Damaged shards are skipped and named in ``skipped`` (``crop.viz.show.iter_samples``)."""
    from crop.viz.show import iter_samples

    by_source: dict[str, list] = defaultdict(list)
    for i, (record, image) in enumerate(iter_samples(paths, skipped=[] if skipped is None else skipped)):
        if i >= max_scan:
            break
        bucket = by_source[record.get("source", "?")]
        if len(bucket) < n:
            bucket.append((record, image))
    picked: list = []
    sources = sorted(by_source)
    depth = 0
    while len(picked) < n and any(depth < len(by_source[s]) for s in sources):
        picked += [by_source[s][depth] for s in sources if depth < len(by_source[s])][: n - len(picked)]
        depth += 1
    return picked


def _png_data_uri(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _table(header: list[str], rows: list[list], numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f'<td{" class=n" if i in numeric else ""}>{c if isinstance(c, _Raw) else html.escape(str(c))}</td>'
        for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Raw(str):
    """Already-escaped HTML inside a table cell."""


def _bar(value: int, top: int, px: int = 240) -> _Raw:
    return _Raw(f'<span class="bar" style="width:{round(px * value / top) if top else 0}px"></span>')


def build_report(folder: str, out_path: str, n_gallery: int = 24, thumb_width: int = 320,
                 self_rows: str | None = None) -> str:
    """Write the HTML report of the built dataset in ``folder`` to ``out_path``; return the path."""
    from crop.viz.show import picture, shard_paths

    manifest = _load_json(os.path.join(folder, "manifest.json")) or {}
    stats = _load_json(os.path.join(folder, "stats.json")) or {}
    reject_counts, reject_rows, bad_lines = reject_examples(os.path.join(folder, "rejects.jsonl"))
    name = manifest.get("name") or os.path.basename(os.path.abspath(folder))
    grid = int((manifest.get("recipe") or {}).get("grid_size", 8))
    esc = html.escape
    sec: list[str] = []

    totals = manifest.get("totals", {})
    sec.append(f"<p>{totals.get('samples', '?')} samples in {totals.get('shards', '?')} shards, "
               f"{totals.get('bytes', '?')} bytes. Kinds: "
               + esc(", ".join(f"{k} {v}" for k, v in sorted(totals.get("per_kind", {}).items()))) + "</p>")

    written = stats.get("per_source") or totals.get("per_source") or {}
    rejected_by = stats.get("rejected_by_reason", {})
    top = max(written.values(), default=0)
    rows = [[s, stats.get("read", {}).get(s, ""), written.get(s, 0), _bar(written.get(s, 0), top),
             stats.get("capped", {}).get(s, 0), sum(rejected_by.get(s, {}).values())]
            for s in sorted(set(written) | set(stats.get("read", {})))]
    sec.append("<h2>Samples per source</h2>" + _table(["source", "read", "written", "", "capped", "rejected"],
                                                      rows, numeric=(1, 2, 4, 5)))

    per_reason: Counter = Counter()
    for reasons in rejected_by.values():
        per_reason.update(reasons)
    if not per_reason:
        per_reason = reject_counts
    top_r = max(per_reason.values(), default=0)
    rrows = []
    for reason, count in per_reason.most_common():
        ex = "; ".join(f"{r.get('file')}:{r.get('line')} {r.get('detail', '')}" for r in reject_rows.get(reason, []))
        rrows.append([reason, count, _bar(count, top_r), ex])
    note = f" ({bad_lines} unreadable lines in rejects.jsonl)" if bad_lines else ""
    sec.append("<h2>Rejected records by reason</h2>"
               + (_table(["reason", "count", "", "examples (file:line detail)"], rrows, numeric=(1,)) if rrows
                  else "<p>None.</p>") + f'<p class="muted">{sum(reject_counts.values())} rows in '
               f"rejects.jsonl{esc(note)}.</p>")

    by_area = {int(k): int(v) for k, v in stats.get("regions_by_area_blocks", {}).items()}
    sec.append(f"<h2>Region size (blocks of the {grid}x{grid} grid)</h2>" + histogram_svg(by_area, grid)
               + f'<p class="muted">{sum(by_area.values())} regions; {grid * grid} blocks = the whole image.</p>')

    figures, skipped = [], []
    for record, image in pick_gallery(shard_paths([folder]), n_gallery, skipped=skipped):
        uri = _png_data_uri(picture(record, image, width=thumb_width, band=GALLERY_BAND))
        figures.append(f'<figure><img class="sample" alt="{esc(record.get("key", ""))}" src="{uri}"></figure>')
    sec.append(f"<h2>Gallery ({len(figures)} samples)</h2><div class=\"gallery\">{''.join(figures)}</div>")
    if skipped:
        sec.append('<h2 class="bad">Damaged shards</h2><p>The rest of these shards could not be read '
                   "(run <code>crop validate</code> on the folder):</p>"
                   + _table(["shard", "error"], [[shard, reason] for shard, reason in skipped]))
    for shard, reason in skipped:
        print(f"crop report: skipped the rest of damaged shard {shard}: {reason}", file=sys.stderr)

    if self_rows:  # `crop eval --method self` rows: block scores and the chosen rectangle
        from crop.viz.self_region import self_region_section

        sec.append(self_region_section(self_rows, n_gallery))

    shard_rows = [[s.get("shard"), s.get("samples"), s.get("bytes")] for s in manifest.get("shards", [])]
    sec.append(f"<details><summary>{len(shard_rows)} shards</summary>"
               + _table(["shard", "samples", "bytes"], shard_rows, numeric=(1, 2)) + "</details>")

    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>CROP dataset report: {esc(name)}</title><style>:root {{ --thumb: {thumb_width}px; }}{_CSS}</style></head><body>"
            f"<h1>CROP dataset report: <code>{esc(name)}</code></h1>" + "\n".join(sec) + "</body></html>")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(page)
    return out_path


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="built dataset folder (shards, manifest.json, stats.json, rejects.jsonl)")
    parser.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    parser.add_argument("--n", type=int, default=24, help="gallery size (default 24)")
    parser.add_argument("--width", type=int, default=320, help="gallery picture width in pixels (default 320)")
    parser.add_argument("--self-rows", default=None, help="efficiency.jsonl of a `crop eval --method self` run: "
                        "adds block-score pictures with the chosen rectangles")


def run(args) -> int:
    try:
        print(build_report(args.folder, args.out, n_gallery=args.n, thumb_width=args.width,
                           self_rows=getattr(args, "self_rows", None)))
    except FileNotFoundError as e:
        print(f"crop report: {e}")
        return 2
    return 0
