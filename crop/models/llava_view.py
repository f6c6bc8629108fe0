"""The image LLaVA-1.5 is shown: padded to a square of the processor's mean colour, then processed.

LLaVA-1.5 trains and evaluates with ``image_aspect_ratio=pad``: the image is centred on a square
canvas filled with the image processor's mean colour (``expand2square``) and then given to the CLIP
processor, whose shortest-edge resize + centre crop then keeps everything. The llava-hf
processors alone would centre-crop the raw image instead, cutting off the long side. ``crop
train-plc`` and ``crop eval`` both call :func:`view_image` and :func:`view_geometry`, so PLC
learns on the pixels and context masks it is evaluated with.

``padded=False`` (``image_aspect: processor``) keeps the processor's own geometry
(``center_crop`` when it centre-crops, else ``resize``).
"""

from __future__ import annotations

from typing import Any

PAD_SQUARE = "pad_square"  # the geometry name the region-to-token mapping uses for this view
ASPECTS = ("pad", "processor")


def pad_colour(image_processor: Any) -> tuple[int, int, int]:
    """The canvas colour: the processor's ``image_mean`` in 0..255 (LLaVA's ``expand2square`` fill)."""
    mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
    return tuple(int(x * 255) for x in mean)


def expand2square(image: Any, background: tuple[int, int, int]) -> Any:
    """Centre ``image`` on a max(W, H) square of ``background`` (offsets floored, as LLaVA's)."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def view_image(image: Any, image_processor: Any, padded: bool) -> Any:
    """The RGB image handed to the image processor (padded to a square when ``padded``)."""
    return expand2square(image, pad_colour(image_processor)) if padded else image


def view_geometry(image_processor: Any, padded: bool) -> str:
    """The geometry name under which regions of the original image map to visual tokens."""
    if padded:
        return PAD_SQUARE
    return "center_crop" if getattr(image_processor, "do_center_crop", False) else "resize"


def plc_view(image_processor: Any, padded: bool) -> str:
    """The same view under the name :func:`crop.models.llava_plc.context_masks` takes (``pad``
    for the padded square, else the processor's own)."""
    from crop.models.llava_plc import view_of

    return "pad" if padded else view_of(image_processor)


def padded_for(aspect: str) -> bool:
    """``image_aspect`` setting -> whether images are padded (``pad`` or ``processor``)."""
    if aspect not in ASPECTS:
        raise ValueError(f"image_aspect={aspect!r}: choose one of {ASPECTS}")
    return aspect == "pad"
