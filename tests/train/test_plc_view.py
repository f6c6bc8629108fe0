"""The image view PLC trains and is evaluated on equals transformers' own LLaVA pad-to-square."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crop.models.llava_view import PAD_SQUARE, padded_for, pad_colour, view_geometry, view_image


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(100, 40), (41, 100), (101, 40), (32, 32), (1000, 400)])
def test_padded_view_equals_llava_image_processor_do_pad(size):
    """Reference: ``LlavaImageProcessorPil(do_pad=True)`` pads with ``image_mean`` before the CLIP
    resize and crop (transformers' port of LLaVA's ``expand2square``); our view through the plain
    CLIP processor must give the same pixels (odd margins included)."""
    from transformers import CLIPImageProcessorPil, LlavaImageProcessorPil

    kw = dict(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    image = noise(*size)
    reference = LlavaImageProcessorPil(do_pad=True, **kw)(images=image, return_tensors="pt")["pixel_values"]
    clip = CLIPImageProcessorPil(**kw)
    ours = clip(images=view_image(image, clip, padded=True), return_tensors="pt")["pixel_values"]
    assert np.array_equal(ours.numpy(), reference.numpy())


def test_view_geometry_and_canvas():
    from transformers import CLIPImageProcessorPil

    clip = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    image = noise(1000, 400)
    view = view_image(image, clip, padded=True)
    assert view.size == (1000, 1000)
    assert view.getpixel((0, 0)) == pad_colour(clip) == tuple(int(m * 255) for m in clip.image_mean)
    assert view.crop((0, 300, 1000, 700)).tobytes() == image.tobytes()  # centred, offset (1000-400)//2
    assert view_image(image, clip, padded=False) is image
    assert (view_geometry(clip, True), view_geometry(clip, False)) == (PAD_SQUARE, "center_crop")


@pytest.mark.parametrize("aspect, padded", [("pad", True), ("processor", False)])
def test_aspect_names(aspect, padded):
    assert padded_for(aspect) is padded


def test_unknown_aspect_is_named():
    with pytest.raises(ValueError, match="image_aspect='square'"):
        padded_for("square")
