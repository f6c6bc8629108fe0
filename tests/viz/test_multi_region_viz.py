"""Pictures of a sample with several regions (issue 21): every region untouched and outlined,
everything outside all of them dimmed; the caption shows the multi-region target."""

from __future__ import annotations

from PIL import Image

from crop.contract import region_record
from crop.viz import draw

COLOUR = (30, 90, 160)
W = 320  # the 160 x 120 image scales by 2 -> 320 x 240, cells of 40 x 30
A, B = (0, 0, 1, 1), (5, 4, 7, 6)
DIM = tuple(round(c * draw.OUTSIDE_KEEP) for c in COLOUR)


def _record():
    return region_record(
        source="gqa", source_id="two", source_file="t.jsonl", image="x.png", image_width=160, image_height=120,
        question="Is the cup left of the plate?", answer="yes",
        boxes_xyxy_px=[[2.0, 2.0, 38.0, 28.0], [102.0, 62.0, 158.0, 102.0]], union_box_xyxy_px=[2.0, 2.0, 158.0, 102.0],
        region_blocks=[0, 0, 7, 6], regions_blocks=[list(A), list(B)], grid_size=8)


def _inside(r, bx, by):
    return r[0] <= bx <= r[2] and r[1] <= by <= r[3]


def test_every_region_is_kept_and_outlined_the_rest_dimmed():
    rec = _record()
    pic = draw.render_sample(Image.new("RGB", (160, 120), COLOUR), rec, width=W)
    for by in range(8):
        for bx in range(8):
            px = pic.getpixel((bx * 40 + 20, by * 30 + 15))
            assert px == (COLOUR if _inside(A, bx, by) or _inside(B, bx, by) else DIM), (bx, by, px)
    # outlines: A's right edge at x = 80 - 1 (2 px wide inward), B's top edge at y = 120 (block 4 * 30)
    assert pic.getpixel((79, 45)) == draw.REGION_OUTLINE_RGB
    assert pic.getpixel((240, 135)) != draw.REGION_OUTLINE_RGB  # inside B: untouched colour or grid
    assert pic.getpixel((230, 120)) == draw.REGION_OUTLINE_RGB
    assert pic.getpixel((150, 45)) == DIM  # between the regions, inside their union rectangle: dimmed
    assert "Target: 0 0 1 1; 5 4 7 6." in draw.caption_lines(rec)


def test_a_version_1_record_draws_its_one_region():
    rec = {k: v for k, v in _record().items() if k != "regions_blocks"}
    rec["schema_version"], rec["region_blocks"] = 1, list(A)
    pic = draw.render_sample(Image.new("RGB", (160, 120), COLOUR), rec, width=W)
    assert pic.getpixel((20, 15)) == COLOUR and pic.getpixel((230, 165)) == DIM
