"""The offline HTML report: content checks, and a headless-Chromium screenshot check."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import pytest
from PIL import Image

import tinyshards
from crop.cli import main
from crop.viz import draw, report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ds")
    info = tinyshards.make_dataset(folder, shards=2)
    out = folder.parent / "out" / "report.html"
    report.build_report(str(folder), str(out))
    return folder, out, info


def _images(page: str) -> list[Image.Image]:
    uris = re.findall(r'<img[^>]* src="data:image/png;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


def test_report_is_self_contained(built):
    _, out, _ = built
    page = out.read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith("data:") for r in refs), refs
    assert "http-equiv=\"Content-Security-Policy\"" in page and "default-src 'none'" in page
    assert "<script" not in page and "@import" not in page and "url(" not in page


def test_counts_rejects_and_histogram(built):
    _, out, info = built
    page = out.read_text(encoding="utf-8")
    for source, count in info["stats"]["per_source"].items():
        assert re.search(rf"<td>{source}</td><td class=n>\d+</td><td class=n>{count}</td>", page), source
    for reason in ("box_outside_image", "degenerate_box_after_clip", "malformed_json"):
        assert f"<td>{reason}</td><td class=n>1</td>" in page
    assert "docvqa_cot_train.jsonl:3 x2 2252 &gt; width 1700" in page
    bars = re.findall(r'<rect class="hbar"[^>]* height="([0-9.]+)"[^>]*><title>(\d+) blocks: (\d+)</title>', page)
    assert len(bars) == 64
    areas = {int(a): int(c) for a, c in (kv for kv in info["stats"]["regions_by_area_blocks"].items())}
    for height, area, count in bars:
        assert int(count) == areas.get(int(area), 0)
        assert (float(height) > 0) == (int(count) > 0)


def test_gallery_pictures_embedded_with_band(built):
    _, out, info = built
    images = _images(out.read_text(encoding="utf-8"))
    assert len(images) == len(info["records"])  # 6 samples < default gallery size
    for im in images:
        assert im.width == 320
        band = im.convert("RGB").crop((0, 0, 320, draw.BAND_HEIGHT)).getcolors()
        assert band == [(320 * draw.BAND_HEIGHT, report.GALLERY_BAND)]


def test_gallery_round_robin_over_sources(built):
    folder, _, _ = built
    picked = report.pick_gallery(report_paths(folder), 4)
    sources = [r["source"] for r, _ in picked]
    assert len(picked) == 4 and len(set(sources)) == 4  # four different sources before any repeat


def report_paths(folder):
    from crop.viz.show import shard_paths

    return shard_paths([str(folder)])


def test_report_without_stats_uses_rejects_jsonl(tmp_path):
    tinyshards.make_dataset(tmp_path / "ds", shards=1)
    (tmp_path / "ds" / "stats.json").unlink()
    assert main(["report", str(tmp_path / "ds"), "--out", str(tmp_path / "r.html"), "--n", "2"]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<td>box_outside_image</td><td class=n>1</td>" in page
    assert len(_images(page)) == 2


def _browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _screenshot(browser, html_path, tmp_path, tag) -> Image.Image:
    shot = tmp_path / f"{tag}.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / ('profile-' + tag)}", f"--screenshot={shot}",
           "--window-size=1200,2000", f"file://{html_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return Image.open(shot).convert("RGB")


def _count_near(im: Image.Image, rgb, tol: int = 6) -> int:
    return sum(n for n, c in im.getcolors(maxcolors=1 << 24) if all(abs(a - b) <= tol for a, b in zip(c, rgb)))


def test_report_renders_images_in_headless_chromium(built, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); screenshot check skipped")
    _, out, info = built
    shot = _screenshot(browser, out, tmp_path, "report")
    assert shot.size == (1200, 2000)
    n = len(info["records"])
    import numpy as np

    px = np.asarray(shot).astype(int)
    band = (np.abs(px - np.array(report.GALLERY_BAND)) <= 6).all(-1)  # (H, W)
    rows = np.flatnonzero(band.any(1))
    first = band[rows[0]]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], first.astype(int), [0]])))
    widths = edges[1::2] - edges[::2]  # run lengths of band pixels in the first band row
    col_w = int(np.median(widths))
    # the gallery fills the page: columns at least the thumbnail width, together spanning the body
    assert col_w >= 320 and (edges[-1] - edges[0]) > 0.9 * (1200 - 2 * 24), (col_w, edges)
    expected = n * col_w * draw.BAND_HEIGHT * col_w / 320  # each picture scaled to the column width
    band_px = int(band.sum())
    assert 0.9 * expected <= band_px <= 1.1 * expected, (band_px, expected, col_w)
    # the image content itself was painted too: the blue GQA picture, not only the bands
    assert _count_near(shot, (40, 40, 200)) > 5000
    # control: the same page with undecodable images paints no band at all
    broken = out.parent / "broken.html"
    broken.write_text(out.read_text(encoding="utf-8").replace("base64,iVBOR", "base64,AAAA"), encoding="utf-8")
    assert _count_near(_screenshot(browser, broken, tmp_path, "broken"), report.GALLERY_BAND) == 0


def test_histogram_svg_scales_to_max():
    svg = report.histogram_svg({1: 10, 64: 5}, grid=8)
    heights = {int(a): float(h) for h, a in re.findall(r'height="([0-9.]+)"[^>]*><title>(\d+) blocks', svg)}
    assert heights[1] == pytest.approx(2 * heights[64]) and heights[2] == 0.0
    json.dumps(svg)  # plain text


def test_report_skips_a_truncated_shard_and_lists_it(tmp_path, capsys):
    import tarfile

    tinyshards.make_dataset(tmp_path / "ds", shards=2)
    first = sorted((tmp_path / "ds").glob("tiny-*.tar"))[0]
    with tarfile.open(first) as tf:
        m = tf.getmembers()[1]
    first.write_bytes(first.read_bytes()[: m.offset_data + 1])
    out = report.build_report(str(tmp_path / "ds"), str(tmp_path / "r.html"))
    page = open(out, encoding="utf-8").read()
    assert "Damaged shards" in page and first.name in page
    assert len(_images(page)) > 0  # the other shard still fills the gallery
    assert f"skipped the rest of damaged shard {first.name}" in capsys.readouterr().err
