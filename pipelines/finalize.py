"""Turn a candidate plus its image bytes into the final sample record (pure functions).

This runs inside the shard writer, the only place that reads image bytes, so that no image ever
travels through a shuffle. Image checks:

* ``header`` (default): Pillow parses the header (format and size) and the file must end with its
  format's end marker (JPEG ``FFD9``, PNG ``IEND``); other formats are fully decoded. This catches
  truncated files at the cost of reading bytes already in memory, not decoding pixels.
* ``full``: every image is also fully decoded (slower; catches corrupt pixel data).

Images are stored with their original bytes, never re-encoded; the member extension is the one of
the decoded format (a PNG named ``.jpg`` is stored as ``.png``).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from crop.contract import instruction_record, region_record
from crop.data.safety import IMAGE_FORMATS

from pipelines.sources import STAGE_IMAGE, Rejected, boxes_to_region

EXT_BY_FORMAT = {fmt: {"JPEG": "jpg"}.get(fmt, fmt.lower()) for fmt in IMAGE_FORMATS}
"""Member extension per format. The formats are the training loader's own list
(``crop.data.safety.IMAGE_FORMATS``): shards hold only what the loader decodes, and plugins such
as EPS or PSD, which call external tools, never see a misnamed input. Other formats are rejects."""


def inspect_image(data: bytes, check: str = "header") -> tuple[int, int, str]:
    """Return ``(width, height, ext)`` or raise :class:`Rejected` (``unreadable_image``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            fmt = img.format
            w, h = img.size
            if check == "full" or fmt not in ("JPEG", "PNG"):
                img.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image
        raise Rejected(STAGE_IMAGE, "unreadable_image", f"{type(e).__name__}: {e}"[:300]) from None
    if fmt not in EXT_BY_FORMAT:
        raise Rejected(STAGE_IMAGE, "unreadable_image", f"unsupported image format {fmt!r}")
    # End markers, in both modes: cheap, and decoders accept a PNG that lost its IEND chunk.
    if fmt == "JPEG" and b"\xff\xd9" not in data[-4096:]:
        raise Rejected(STAGE_IMAGE, "unreadable_image", "JPEG is truncated (no end-of-image marker)")
    if fmt == "PNG" and b"IEND" not in data[-64:]:
        raise Rejected(STAGE_IMAGE, "unreadable_image", "PNG is truncated (no IEND chunk)")
    return w, h, EXT_BY_FORMAT[fmt]


def finalize(cand: dict, image_rel_path: str | None, data: bytes | None, *, grid: int,
             policy: str, trailing_period: bool, check: str) -> tuple[dict, str | None, dict | None]:
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
        info = boxes_to_region(cand["boxes"], width, height, policy, grid)
    rec = region_record(
        source=cand["source"], source_id=cand["source_id"], source_file=cand["source_file"],
        image=image_rel_path, image_width=width, image_height=height, question=cand["question"],
        answer=cand["answer"], trailing_period=trailing_period,
        boxes_xyxy_px=cand["boxes"], union_box_xyxy_px=info["union_box"],
        region_blocks=info["region"], grid_size=grid,
    )
    return rec, ext, info
