"""Pixel checks of the sample picture, and the ``crop show`` command."""

from __future__ import annotations

import pytest
from PIL import Image

import tinyshards
from crop.cli import main
from crop.contract import region_record

from crop.viz import draw

COLOUR = (30, 90, 160)
W = 320          # rendered width; the 160 x 120 image scales by 2 -> 320 x 240, cells of 40 x 30
REGION = (2, 1, 5, 2)


def _record(region=REGION, boxes=((86.0, 50.0, 106.0, 64.0),)):
    return region_record(
        source="textvqa", source_id="fig3", source_file="t.jsonl", image="x.png", image_width=160,
        image_height=120, question="What words are on the card?", answer="You Are Seriously Awesome",
        boxes_xyxy_px=list(boxes), union_box_xyxy_px=list(boxes[0]), region_blocks=list(region), grid_size=8)


@pytest.fixture(scope="module")
def pic():
    return draw.render_sample(Image.new("RGB", (160, 120), COLOUR), _record(), width=W)


def _cell_centre(bx, by):
    return bx * 40 + 20, by * 30 + 15


DIM = tuple(round(c * draw.OUTSIDE_KEEP) for c in COLOUR)


def test_region_colours_untouched_and_outside_dimmed_with_the_same_hue(pic):
    """Inside the region the image's own colours (a blue stays blue); outside, darker but same hue."""
    import colorsys

    for by in range(8):
        for bx in range(8):
            px = pic.getpixel(_cell_centre(bx, by))
            inside = REGION[0] <= bx <= REGION[2] and REGION[1] <= by <= REGION[3]
            assert px == (COLOUR if inside else DIM), (bx, by, px)
    hue = lambda c: colorsys.rgb_to_hsv(*(v / 255 for v in c))[0]
    assert abs(hue(DIM) - hue(COLOUR)) < 0.01 and sum(DIM) < sum(COLOUR) * 0.6


def test_grid_lines_at_every_block_boundary(pic):
    y_out = _cell_centre(0, 6)[1]   # a row outside the region
    for x in draw.grid_edges(W, 8)[1:-1]:
        assert pic.getpixel((x, y_out)) == draw.GRID_RGB, x
        assert pic.getpixel((x + 3, y_out)) == DIM  # lines are thin
    x_out = _cell_centre(7, 0)[0]
    for y in draw.grid_edges(240, 8)[1:-1]:
        assert pic.getpixel((x_out, y)) == draw.GRID_RGB, y


def test_source_box_outlined(pic):
    # box (86, 50)-(106, 64) px scales to (172, 100)-(212, 128): edges 2 px wide, inside unfilled
    for xy in ((172, 114), (173, 114), (212, 114), (190, 100), (190, 128)):
        assert pic.getpixel(xy) == draw.BOX_RGB, xy
    assert pic.getpixel((190, 114)) == DIM  # inside the box, outside the region


def test_caption_area_below_image_has_text(pic):
    assert pic.width == W and pic.height > 240 + 40
    caption = pic.crop((0, 242, W, pic.height))
    colours = caption.getcolors(maxcolors=1 << 16)
    dark = sum(n for n, c in colours if sum(c) < 200)
    white = sum(n for n, c in colours if c == draw.CAPTION_BG)
    assert dark > 100 and white > dark  # text drawn on a white strip
    lines = draw.caption_lines(_record())
    assert lines[1:] == ["Q: What words are on the card?", "A: You Are Seriously Awesome", "Target: 2 1 5 2."]


def test_band_is_solid_and_shifts_the_image():
    rec = _record()
    pic = draw.render_sample(Image.new("RGB", (160, 120), COLOUR), rec, width=W, band=(255, 0, 255))
    band = pic.crop((0, 0, W, draw.BAND_HEIGHT)).getcolors()
    assert band == [(W * draw.BAND_HEIGHT, (255, 0, 255))]
    assert pic.getpixel((20, draw.BAND_HEIGHT + 15)) == DIM  # block (0, 0), outside the region


def test_text_only_sample_has_placeholder_and_no_grid():
    rec = tinyshards.build_records()
    text_only = next(r for r, ext, _ in rec if ext is None)
    pic = draw.render_sample(None, text_only, width=W)
    assert pic.getpixel((W // 8, 5)) == draw.PLACEHOLDER_BG
    assert "User: Write a haiku about tokens." in draw.caption_lines(text_only)


def test_show_cli_renders_first_n_and_by_key(tmp_path, capsys):
    info = tinyshards.make_dataset(tmp_path / "ds", shards=2)
    assert main(["show", str(tmp_path / "ds"), "--out", str(tmp_path / "a"), "--n", "3"]) == 0
    assert len(list((tmp_path / "a").glob("*.png"))) == 3
    keys = [r["key"] for r in info["records"] if r["kind"] == "region"][:2]
    shard = str(tmp_path / "ds" / "tiny-*.tar")
    assert main(["show", shard, "--out", str(tmp_path / "b"), "--keys", *keys, "--width", "200"]) == 0
    written = sorted(p.stem for p in (tmp_path / "b").glob("*.png"))
    assert written == sorted(keys)
    assert Image.open(tmp_path / "b" / f"{keys[0]}.png").width == 200
    capsys.readouterr()
    assert main(["show", str(tmp_path / "ds"), "--out", str(tmp_path / "c"), "--keys", "nope-1"]) == 2
    assert "nope-1" in capsys.readouterr().err  # errors go to stderr
    assert main(["show", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2


def _truncate_first_shard(folder) -> tuple[str, int]:
    """Cut the first shard in the middle of its second member's data; return (name, samples kept)."""
    import tarfile

    first = sorted(folder.glob("tiny-*.tar"))[0]
    with tarfile.open(first) as tf:
        members = tf.getmembers()
    cut = members[1].offset_data + members[1].size // 2 if members[1].size > 1 else members[2].offset_data + 1
    first.write_bytes(first.read_bytes()[:cut])
    return first.name, len(members)


def test_show_skips_a_truncated_shard_names_it_and_renders_the_rest(tmp_path, capsys):
    info = tinyshards.make_dataset(tmp_path / "ds", shards=2)
    name, _ = _truncate_first_shard(tmp_path / "ds")
    assert main(["show", str(tmp_path / "ds"), "--out", str(tmp_path / "png"), "--n", "1000"]) == 0
    out, err = capsys.readouterr()
    assert f"skipped the rest of damaged shard {name}" in err and "unexpected end of data" in err
    pngs = list((tmp_path / "png").glob("*.png"))
    assert 0 < len(pngs) < len(info["records"])  # the intact shard rendered, the damaged one cut short
    assert len(out.splitlines()) == len(pngs)
