"""Drawing one sample the way the paper's Figures 3-4 show it (Pillow only).

Layout of the returned picture (``width`` px wide)::

    +--------------------------+  <- optional solid band (report thumbnails; lets a
    |##########################|     screenshot test find rendered images)
    +--------------------------+
    |   image, 8x8 grid lines, |
    |   outside region dimmed, |
    |   region + boxes outlined|
    +--------------------------+
    | [source] key             |  <- caption: question, answer, target (or the
    | Q: ...  A: ...  Target:  |     first instruction turns)
    +--------------------------+

A record with several regions (``regions_blocks``, issue 21) has every region left as it is and
outlined; only what lies outside all of them is dimmed.

The region's own pixels are left exactly as they are (a tint over them would change object
colours: a blue object under a yellow wash reads grey); everything *outside* the region is dimmed
by scaling RGB by ``OUTSIDE_KEEP`` (same hue, darker), and the region is outlined.

Drawing order matters for the pixel tests: dim first, then grid lines on top (so they keep
their exact colour), then the region outline and the boxes.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

GRID_RGB = (255, 255, 255)
OUTSIDE_KEEP = 0.45                    # outside the region, RGB is scaled by this (dimmed, hue kept)
REGION_OUTLINE_RGB = (255, 160, 0)
BOX_RGB = (0, 230, 64)
CAPTION_BG = (255, 255, 255)
CAPTION_FG = (20, 20, 20)
PLACEHOLDER_BG = (200, 200, 200)
BAND_HEIGHT = 12
PAD = 6


def _font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def grid_edges(extent: int, grid: int) -> list[int]:
    """Pixel positions of the ``grid + 1`` block boundaries along an axis of ``extent`` pixels."""
    return [round(i * extent / grid) for i in range(grid + 1)]


def region_rect(region: Sequence[int], width: int, height: int, grid: int) -> tuple[int, int, int, int]:
    """Region blocks -> display rectangle ``(x0, y0, x1, y1)``, right/bottom exclusive."""
    xs, ys = grid_edges(width, grid), grid_edges(height, grid)
    x_min, y_min, x_max, y_max = region
    return xs[x_min], ys[y_min], xs[x_max + 1], ys[y_max + 1]


def wrap(text: str, font, max_width: int) -> list[str]:
    """Greedy word wrap by rendered width; keeps explicit newlines."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            trial = f"{line} {word}" if line else word
            if font.getlength(trial) <= max_width or not line:
                line = trial
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def caption_lines(record: Mapping) -> list[str]:
    """Caption text of a record: question/answer/target, or the first instruction turns."""
    head = f"[{record.get('source')}] {record.get('key')}"
    if record.get("kind") == "region":
        convs = record.get("conversations") or []
        target = convs[1]["value"] if len(convs) > 1 else ""
        return [head, f"Q: {record.get('question')}", f"A: {record.get('answer')}", f"Target: {target}"]
    lines = [head]
    for turn in (record.get("conversations") or [])[:2]:
        who = "User" if turn["from"] == "human" else "Assistant"
        value = turn["value"].replace("<image>", "").strip()
        lines.append(f"{who}: {value[:300]}{'...' if len(value) > 300 else ''}")
    return lines


def render_sample(image: Image.Image | None, record: Mapping, *, width: int = 512,
                  band: tuple[int, int, int] | None = None, font_size: int = 14) -> Image.Image:
    """Picture of one sample: image with grid, region and boxes, caption below (RGB)."""
    grid = int(record.get("grid_size") or 8)
    font = _font(font_size)
    if image is not None:
        img_w, img_h = image.size
        disp_h = max(1, round(img_h * width / img_w))
        panel = image.convert("RGB").resize((width, disp_h), Image.Resampling.BILINEAR)
        scale_x, scale_y = width / img_w, disp_h / img_h
    else:
        disp_h = width // 2
        panel = Image.new("RGB", (width, disp_h), PLACEHOLDER_BG)
        ImageDraw.Draw(panel).text((PAD, disp_h // 2 - font_size), "text-only sample (no image)",
                                   fill=CAPTION_FG, font=font)
    region = record.get("region_blocks")
    regions = record.get("regions_blocks") or ([region] if region else [])  # version-1 records: one
    if image is not None and regions:
        # dim outside the regions; paste the untouched regions back on top
        rects = [region_rect(r, width, disp_h, grid) for r in regions]
        insides = [panel.crop(rect) for rect in rects]
        panel = panel.point(lambda v: round(v * OUTSIDE_KEEP))
        for (x0, y0, _, _), inside in zip(rects, insides):
            panel.paste(inside, (x0, y0))
    draw = ImageDraw.Draw(panel)
    if image is not None and (region or record.get("kind") == "region"):
        for x in grid_edges(width, grid)[1:-1]:
            draw.line((x, 0, x, disp_h - 1), fill=GRID_RGB, width=1)
        for y in grid_edges(disp_h, grid)[1:-1]:
            draw.line((0, y, width - 1, y), fill=GRID_RGB, width=1)
    if image is not None:
        for r in regions:
            x0, y0, x1, y1 = region_rect(r, width, disp_h, grid)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=REGION_OUTLINE_RGB, width=2)
    if image is not None:
        for box in record.get("boxes_xyxy_px") or []:
            bx0, by0, bx1, by1 = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
            draw.rectangle((max(0, bx0), max(0, by0), min(width - 1, bx1), min(disp_h - 1, by1)),
                           outline=BOX_RGB, width=2)
    lines = [ln for text in caption_lines(record) for ln in wrap(text, font, width - 2 * PAD)]
    line_h = font_size + 4
    cap_h = PAD * 2 + line_h * len(lines)
    top = BAND_HEIGHT if band else 0
    out = Image.new("RGB", (width, top + disp_h + cap_h), CAPTION_BG)
    if band:
        out.paste(Image.new("RGB", (width, BAND_HEIGHT), band), (0, 0))
    out.paste(panel, (0, top))
    cap = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        cap.text((PAD, top + disp_h + PAD + i * line_h), line, fill=CAPTION_FG, font=font)
    return out
