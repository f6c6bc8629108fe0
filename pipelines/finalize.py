"""Turn a candidate plus its image bytes into the final sample record (pure functions).

This runs inside the shard writer, the only place that reads image bytes, so that no image ever
travels through a shuffle. Image checks:

* ``header`` (default): Pillow parses the header (format and size) and the file must hold its
  format's end marker (JPEG: the ``FFD9`` that ends the image, found by walking the segments and
  the entropy-coded data, so a long trailer after it is fine and an EXIF thumbnail's own ``FFD9``
  does not count; PNG ``IEND``); other formats are fully decoded. This catches truncated files at
  the cost of reading bytes already in memory, not decoding pixels.

In both modes an image whose header declares more pixels than the training loader's cap
(``crop.data.safety.DEFAULT_MAX_IMAGE_PIXELS``, Pillow's own bomb threshold) is ``image_too_large``
(with the pixel count) before any pixel is decoded: the loader would refuse it anyway.
* ``full``: every image is also fully decoded (slower; catches corrupt pixel data).

Images are stored with their original bytes, never re-encoded; the member extension is the one of
the decoded format (a PNG named ``.jpg`` is stored as ``.png``).
"""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image

from crop.contract import instruction_record, region_record
from crop.data.safety import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_FORMATS

from pipelines.sources import STAGE_IMAGE, Rejected, boxes_to_region

EXT_BY_FORMAT = {fmt: {"JPEG": "jpg"}.get(fmt, fmt.lower()) for fmt in IMAGE_FORMATS}
"""Member extension per format. The formats are the training loader's own list
(``crop.data.safety.IMAGE_FORMATS``): shards hold only what the loader decodes, and plugins such
as EPS or PSD, which call external tools, never see a misnamed input. Other formats are rejects."""


_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")  # Pillow's DecompressionBombError message


def jpeg_end(data: bytes) -> int | None:
    """Offset just past the end-of-image marker (``FFD9``) that ends the JPEG, or None if it has none.

    Walks the marker segments from SOI, skipping each segment by its length (so the ``FFD9`` of an
    EXIF thumbnail inside APP1 is not taken for the end), and after each SOS scans the
    entropy-coded data for the next marker (``FF00`` is a stuffed byte, ``FFD0``-``FFD7`` restart
    markers, repeated ``FF`` fill bytes). Bytes after the EOI (a trailer of any length) are
    ignored; running out of bytes first means the file is truncated.
    """
    n = len(data)
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i < n:
        if data[i] != 0xFF:  # junk between segments (decoders skip it with a warning)
            i = data.find(b"\xff", i)
            if i < 0:
                return None
        while i < n and data[i] == 0xFF:  # fill bytes before a marker
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker == 0xD9:
            return i
        if marker == 0x01 or 0xD0 <= marker <= 0xD7 or marker == 0x00:  # no length field
            continue
        if i + 2 > n:
            return None
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2:
            return None
        i += length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            while True:
                j = data.find(b"\xff", i)
                if j < 0 or j + 1 >= n:
                    return None
                nxt = data[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                    i = j + 2
                elif nxt == 0xFF:
                    i = j + 1
                else:
                    i = j
                    break
    return None


def inspect_image(data: bytes, check: str = "header") -> tuple[int, int, str]:
    """Return ``(width, height, ext)`` or raise :class:`Rejected` (``unreadable_image``,
    ``image_too_large``)."""
    cap = DEFAULT_MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap below
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            fmt = img.format
            w, h = img.size
            if w * h > cap:
                raise Rejected(STAGE_IMAGE, "image_too_large", f"{fmt} header declares {w}x{h} = {w * h} pixels > {cap}")
            if check == "full" or fmt not in ("JPEG", "PNG"):
                img.load()
    except Rejected:
        raise
    except Image.DecompressionBombError as e:  # Pillow refuses > 2x its threshold at open
        m = _BOMB_PIXELS.search(str(e))
        pixels = m.group(1) if m else "too many"
        raise Rejected(STAGE_IMAGE, "image_too_large", f"header declares {pixels} pixels > {cap}") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image
        raise Rejected(STAGE_IMAGE, "unreadable_image", f"{type(e).__name__}: {e}"[:300]) from None
    if fmt not in EXT_BY_FORMAT:
        raise Rejected(STAGE_IMAGE, "unreadable_image", f"unsupported image format {fmt!r}")
    # End markers, in both modes: cheap, and decoders accept a PNG that lost its IEND chunk.
    if fmt == "JPEG" and jpeg_end(data) is None:
        raise Rejected(STAGE_IMAGE, "unreadable_image", "JPEG is truncated (no end-of-image marker)")
    if fmt == "PNG" and b"IEND" not in data[-64:]:
        raise Rejected(STAGE_IMAGE, "unreadable_image", "PNG is truncated (no IEND chunk)")
    return w, h, EXT_BY_FORMAT[fmt]


def finalize(cand: dict, image_rel_path: str | None, data: bytes | None, *, grid: int,
             policy: str, trailing_period: bool, check: str, max_regions: int = 4
             ) -> tuple[dict, str | None, dict | None]:
    """Candidate + image bytes -> ``(record, ext, boxes_info)``; raises :class:`Rejected`.

    ``image_rel_path`` is the path (relative to the image root) where the image was found, or
    ``None`` for text-only records; ``data`` its bytes.
    """
    ext = None
    width, height = cand["width"], cand["height"]
    if cand["image_rel"] is not None:
        w, h, ext = inspect_image(data, check)
        if width is not None and (w, h) != (width, height):
            raise Rejected(STAGE_IMAGE, "image_size_mismatch",
                           f"record says {width}x{height}, image {image_rel_path} is {w}x{h}")
        width, height = w, h

    if cand["kind"] == "instruction":
        rec = instruction_record(source_id=cand["source_id"], source_file=cand["source_file"],
                                 image=image_rel_path, image_width=width, image_height=height,
                                 conversations=cand["conversations"])
        return rec, ext, None

    info = cand["boxes_info"]
    if info is None:  # Visual-CoT LLaVA format: the region needed the image size
        info = boxes_to_region(cand["boxes"], width, height, policy, grid, max_regions)
    rec = region_record(
        source=cand["source"], source_id=cand["source_id"], source_file=cand["source_file"],
        image=image_rel_path, image_width=width, image_height=height, question=cand["question"],
        answer=cand["answer"], trailing_period=trailing_period,
        boxes_xyxy_px=cand["boxes"], union_box_xyxy_px=info["union_box"],
        region_blocks=info["region"], grid_size=grid, regions_blocks=info.get("regions"),
    )
    return rec, ext, info
