"""A synthetic localization set: coloured shapes at known places, questions that name one of them.

Used to prove that the localizer trainer learns (``benchmarks/localizer_learns.py``, tests) without
downloading anything. Each image shows ``objects`` distinct coloured shapes on a noisy grey
background; the question names one shape by colour and kind, and the target region is the 8x8
block region of that shape's box (``crop.geometry.box_px_to_region``), so the answer depends on
the question and not only on the image.

Samples have the same form as the streaming loader's: ``{"__key__", "json": contract record,
"image": PIL.Image}``. The records come from :func:`crop.contract.region_record` with
``source="synthetic"``, a source the shard schema does not list: these samples are for training
demos, never for published shards.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Iterator

from crop.contract import region_record

from crop.geometry import box_px_to_region

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 215, 30),
    "purple": (150, 40, 190), "orange": (245, 140, 20), "cyan": (30, 210, 220), "black": (10, 10, 10),
}
SHAPES = ("square", "circle", "triangle")
TEMPLATES = (
    "Where is the {colour} {shape}?",
    "What is inside the {colour} {shape}?",
    "Is the {colour} {shape} large or small?",
    "Find the {colour} {shape} in the picture.",
)


@dataclass(frozen=True)
class SyntheticSpec:
    """How the images look. Defaults: 112 px images (8 ViT patches of 14 px per side)."""

    size: int = 112
    objects: int = 2
    min_side: int = 16
    max_side: int = 40
    grid: int = 8
    background: str = "noise"  # "noise": noisy grey; "plain": one flat grey per image

    def __post_init__(self) -> None:
        if self.objects < 1 or self.objects > len(COLOURS):
            raise ValueError(f"objects must be 1..{len(COLOURS)}, got {self.objects}")
        if not 4 <= self.min_side <= self.max_side <= self.size // 2:
            raise ValueError(f"need 4 <= min_side <= max_side <= size/2, got "
                             f"{self.min_side}, {self.max_side}, size {self.size}")
        if self.background not in ("noise", "plain"):
            raise ValueError(f"background must be 'noise' or 'plain', got {self.background!r}")


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 2) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _draw(draw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = box
    if shape == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
    elif shape == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=fill)


def make_sample(rng: random.Random, index: int, spec: SyntheticSpec = SyntheticSpec(),
                split: str = "train") -> dict:
    """One sample; everything drawn from ``rng`` so a seed fixes the whole set."""
    s = spec.size
    img, placed = _draw_shapes(rng, spec, spec.objects)
    colour, shape, box = placed[rng.randrange(len(placed))]
    question = rng.choice(TEMPLATES).format(colour=colour, shape=shape)
    region = box_px_to_region(box, s, s, spec.grid)
    record = region_record(
        source="synthetic", source_id=f"{split}-{index}", source_file=f"synthetic-{split}",
        image=f"synthetic/{split}/{index}.png", image_width=s, image_height=s, question=question,
        answer=colour,
        boxes_xyxy_px=[box], union_box_xyxy_px=box, region_blocks=list(region), grid_size=spec.grid,
    )
    return {"__key__": record["key"], "json": record, "image": img}


def synthetic_samples(n: int, seed: int = 0, spec: SyntheticSpec = SyntheticSpec(),
                      split: str = "train") -> list[dict]:
    """``n`` samples; a different ``split`` name gives different keys (and, with another seed,
    different images) so held-out sets never share keys with training sets."""
    rng = random.Random(f"{split}:{seed}")
    return [make_sample(rng, i, spec, split) for i in range(n)]


def iter_synthetic(seed: int = 0, spec: SyntheticSpec = SyntheticSpec(),
                   split: str = "train") -> Iterator[dict]:
    """Endless stream of fresh samples (for step-budgeted training)."""
    rng = random.Random(f"{split}:{seed}")
    i = 0
    while True:
        yield make_sample(rng, i, spec, split)
        i += 1


def write_shards(samples: list[dict], out_dir: str, name: str = "synthetic",
                 per_shard: int = 1000) -> list[str]:
    """Write samples as WebDataset tars (``<key>.json`` + ``<key>.png``); returns the tar paths."""
    import json
    import os

    import webdataset as wds

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for start in range(0, len(samples), per_shard):
        path = os.path.join(out_dir, f"{name}-{start // per_shard:06d}.tar")
        with wds.TarWriter(path, mtime=0) as sink:
            for s in sorted(samples[start:start + per_shard], key=lambda x: x["__key__"]):
                member = {"__key__": s["__key__"], "json": json.dumps(s["json"]).encode("utf-8")}
                if s["image"] is not None:  # text-only records have a .json member only
                    buf = io.BytesIO()
                    s["image"].save(buf, format="PNG")
                    member["png"] = buf.getvalue()
                sink.write(member)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------
# Several regions per question (issue 21). New functions only: the single-object samples above are
# unchanged. A multi sample shows 1..``max_objects`` shapes; the question names *every* shape, and
# the target lists their block regions as the ``multi_box: regions`` policy makes them
# (:func:`crop.geometry.multi_region.boxes_px_to_regions`): far-apart shapes get one region each,
# touching ones share one.

PAIR_TEMPLATES = (
    "Where are the {a} and the {b}?",
    "Is the {a} larger than the {b}?",
    "Find the {a} and the {b} in the picture.",
)


def _draw_shapes(rng: random.Random, spec: SyntheticSpec, count: int):
    """Background + ``count`` non-overlapping shapes (same look as :func:`make_sample`);
    returns ``(image, [(colour, shape, box_xyxy_px), ...])``."""
    import numpy as np
    from PIL import Image, ImageDraw

    s = spec.size
    base = rng.randint(110, 170)
    img = Image.new("RGB", (s, s), (base, base, base))
    # noise from the seeded rng (PIL's effect_noise is not seedable, which broke reproducibility)
    noise_seed = rng.getrandbits(32)  # drawn for both backgrounds: the rest of the stream stays aligned
    if spec.background == "noise":
        noise = np.random.default_rng(noise_seed).normal(128, 12, (s, s, 1)).clip(0, 255)
        img = Image.blend(img, Image.fromarray(np.repeat(noise, 3, axis=2).astype(np.uint8)), 0.15)
    draw = ImageDraw.Draw(img)
    placed: list[tuple[str, str, tuple[int, int, int, int]]] = []
    for colour in rng.sample(sorted(COLOURS), count):
        for _ in range(100):
            w, h = rng.randint(spec.min_side, spec.max_side), rng.randint(spec.min_side, spec.max_side)
            x1, y1 = rng.randint(0, s - w), rng.randint(0, s - h)
            box = (x1, y1, x1 + w, y1 + h)
            if all(not _overlaps(box, other) for _, _, other in placed):
                break
        shape = rng.choice(SHAPES)
        _draw(draw, shape, box, COLOURS[colour])
        placed.append((colour, shape, box))
    return img, placed


def make_multi_sample(rng: random.Random, index: int, spec: SyntheticSpec = SyntheticSpec(), split: str = "train",
                      max_objects: int = 2, max_regions: int = 4) -> dict:
    """One multi-region sample: 1..``max_objects`` shapes (drawn from ``rng``), a question naming
    all of them (one shape: the single-object templates), ``regions_blocks`` = their regions."""
    from crop.geometry import union_box
    from crop.geometry.multi_region import bounding_region, boxes_px_to_regions

    if not 1 <= max_objects <= 2:
        raise ValueError(f"max_objects must be 1 or 2 (questions name one or two shapes), got {max_objects}")
    s = spec.size
    img, placed = _draw_shapes(rng, spec, rng.randint(1, max_objects))
    names = [f"{colour} {shape}" for colour, shape, _ in placed]
    if len(placed) == 1:
        colour, shape, _ = placed[0]
        question = rng.choice(TEMPLATES).format(colour=colour, shape=shape)
    else:
        question = rng.choice(PAIR_TEMPLATES).format(a=names[0], b=names[1])
    boxes = [box for _, _, box in placed]
    regions = boxes_px_to_regions(boxes, s, s, max_regions, spec.grid)
    record = region_record(
        source="synthetic", source_id=f"multi-{split}-{index}", source_file=f"synthetic-multi-{split}",
        image=f"synthetic/multi-{split}/{index}.png", image_width=s, image_height=s, question=question,
        answer=" and ".join(names), boxes_xyxy_px=boxes, union_box_xyxy_px=union_box(boxes),
        region_blocks=list(bounding_region(regions)), regions_blocks=[list(r) for r in regions],
        grid_size=spec.grid,
    )
    return {"__key__": record["key"], "json": record, "image": img}


def multi_synthetic_samples(n: int, seed: int = 0, spec: SyntheticSpec = SyntheticSpec(), split: str = "train",
                            max_objects: int = 2, max_regions: int = 4) -> list[dict]:
    """``n`` :func:`make_multi_sample` samples, seeded like :func:`synthetic_samples` (own key space:
    ``multi-<split>-<i>``)."""
    rng = random.Random(f"multi:{split}:{seed}")
    return [make_multi_sample(rng, i, spec, split, max_objects, max_regions) for i in range(n)]
