"""ILP layout and region mapping against the REAL transformers processors (offline, tiny).

The processors are the library classes (``LlavaProcessor`` with ``CLIPImageProcessor`` /
``LlavaImageProcessor``, ``LlavaNextProcessor``, ``Qwen2VLProcessor``; PIL backends, since
torchvision is not installed) over an in-memory tokenizer, sized for the tiny models of
``pruning_tiny.build_proc_model`` (16-px tiles, 2-px patches: 8x8 tokens per view).

Region rule checked in ``test_region_mapping_matches_processor_pixels``: an image is painted flat
with one solid rectangle; a token is *painted* when one of its pixels in ``pixel_values`` is more
than half paint, *touched* when one is more than 5% paint (resampling blur). Then, per view,
``painted <= kept <= dilate(touched, 1 token)``: ILP keeps every token that shows the box, and
at most a one-token border beyond the tokens the paint reaches; over all boxes at most 2% of the
kept tokens are untouched (the box covers a sliver of them). Tokens with no image content
(padding) are kept only when the box touches that image border (``extend_through_padding``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from crop.geometry import full_region
from crop.pruning import attach_ilp, llava_geometry_of, region_keep_plan, token_layout
from crop.pruning.region_map import content_mask

from pruning_tiny import (
    IMG,
    PROC_PATCH,
    PROC_PINPOINTS,
    PROC_TILE,
    build_proc_model,
    build_processor,
    decoder_kwargs,
    prompt,
)

torch.set_num_threads(1)
K = 2
BG, PAINT = (40, 40, 40), (250, 40, 40)  # paint fraction = (R - G) / 210; 0 for bg, black, grey pad
SIZES_WH = [(64, 48), (37, 20), (20, 61), (120, 12), (12, 100), (16, 16), (9, 7)]
LLAVA_GEOMETRIES = ("center_crop", "pad_square", "resize")
PROC_CASES = [("llava", g) for g in LLAVA_GEOMETRIES] + [("llava_next", None), ("qwen2_vl", None)]


# ----------------------------------------------------------------------------- painted images
def _box_px(wh, frac):
    """Fractional box -> integer pixel box (x0, y0, x1, y1), end exclusive, at least 1 px."""
    w, h = wh
    x0, y0 = int(frac[0] * w), int(frac[1] * h)
    x1, y1 = max(x0 + 1, round(frac[2] * w)), max(y0 + 1, round(frac[3] * h))
    return x0, y0, min(x1, w), min(y1, h)


def _painted(wh, box_px) -> Image.Image:
    img = Image.new("RGB", wh, BG)
    img.paste(PAINT, box_px)
    return img


def _paint_fraction(pv: np.ndarray, ip) -> np.ndarray:
    """(3, H, W) normalized pixels -> (H, W) fraction of paint (red minus green, in 0..255 units)."""
    mean = np.asarray(ip.image_mean, np.float32)[:, None, None]
    std = np.asarray(ip.image_std, np.float32)[:, None, None]
    rgb = (pv * std + mean) * 255.0  # (3, H, W)
    return (rgb[0] - rgb[1]) / float(PAINT[0] - PAINT[1])


def _per_token(frac: np.ndarray, px: int) -> np.ndarray:
    """(H, W) pixel fractions -> (H/px, W/px) max over each token's pixels."""
    h, w = frac.shape
    return frac.reshape(h // px, px, w // px, px).max(axis=(1, 3))


def _token_paint(family: str, x, ip) -> list[list[np.ndarray]]:
    """Per image, per view (layout order): max paint fraction of each token, from pixel_values."""
    pv = x["pixel_values"].numpy()
    out = []
    if family == "llava":
        for img in pv:  # (3, S, S)
            out.append([_per_token(_paint_fraction(img, ip), PROC_PATCH)])
    elif family == "llava_next":
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

        for img, hw in zip(pv, x["image_sizes"]):  # (P, 3, S, S), (H, W)
            base = _per_token(_paint_fraction(img[0], ip), PROC_PATCH)  # (8, 8)
            th, tw = get_anyres_image_grid_shape(hw.tolist(), PROC_PINPOINTS, PROC_TILE)
            tiles = np.stack([_per_token(_paint_fraction(t, ip), PROC_PATCH) for t in img[1 : 1 + th * tw]])
            n = PROC_TILE // PROC_PATCH
            grid = tiles.reshape(th, tw, n, n).transpose(0, 2, 1, 3).reshape(th * n, tw * n)  # stitched tiles
            hi = unpad_image(torch.from_numpy(grid)[None], hw)[0].numpy()  # the model's own unpadding
            out.append([base, hi])
    else:
        m, p, tp = ip.merge_size, ip.patch_size, ip.temporal_patch_size
        start = 0
        for t, gh, gw in x["image_grid_thw"].tolist():
            rows = pv[start : start + t * gh * gw]  # (gh*gw, C*T*p*p)
            start += t * gh * gw
            # patch rows are ordered (gh/m, gw/m, m, m) and each holds (C, T, p, p)
            a = rows.reshape(gh // m, gw // m, m, m, 3, tp, p, p)[:, :, :, :, :, 0]  # first frame
            img = a.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)  # (C, H, W) pixels
            out.append([_per_token(_paint_fraction(img, ip), p * m)])
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    out[:, 1:] |= grown[:, :-1]
    out[:, :-1] |= grown[:, 1:]
    return out


def _kept_grids(layout, drop):
    return [~np.isin(v.positions, drop) for v in layout.views]


def _run(proc, images, texts):
    return proc(images=images, text=texts, padding=True, return_tensors="pt")


def _boxes(wh, seed):
    """Hand-picked fractional boxes (centre, corner, right strip, thin bar) plus seeded random ones."""
    fixed = [(0.3, 0.3, 0.7, 0.7), (0.0, 0.0, 0.4, 0.5), (0.75, 0.1, 1.0, 0.9), (0.1, 0.45, 0.9, 0.55)]
    rng = np.random.default_rng(seed)
    rand = []
    for _ in range(4):
        fw, fh = rng.uniform(0.15, 0.6, 2)
        fx, fy = rng.uniform(0, 1 - fw), rng.uniform(0, 1 - fh)
        rand.append((fx, fy, fx + fw, fy + fh))
    return [_box_px(wh, f) for f in fixed + rand]


# ----------------------------------------------------------------------------- (b) region mapping
@pytest.mark.parametrize("family,geometry", PROC_CASES)
def test_region_mapping_matches_processor_pixels(family, geometry):
    """Kept tokens for a painted box == the tokens showing the paint, up to one token of blur."""
    proc = build_processor(family, geometry or "center_crop")
    ip = proc.image_processor
    if family == "llava":
        assert llava_geometry_of(proc) == geometry  # read from the processor's own options
    config = build_proc_model(family).config
    n_views = n_painted = n_kept = n_untouched = n_pad_cells = 0
    for i, wh in enumerate(SIZES_WH):
        whole = _run(proc, [_painted(wh, (0, 0) + wh)], [prompt(family)])
        whole_paint = _token_paint(family, whole, ip)[0]
        content = [f > 0.05 for f in whole_paint]  # tokens showing any image
        image = [f > 0.5 for f in whole_paint]  # tokens mostly image
        for box in _boxes(wh, seed=i):
            x = _run(proc, [_painted(wh, box)], [prompt(family)])
            lay = token_layout(config, x)
            norm = (box[0] / wh[0], box[1] / wh[1], box[2] / wh[0], box[3] / wh[1])
            plan = region_keep_plan(lay, [norm], image_sizes_wh=[wh], llava_geometry=geometry or "center_crop")
            kept = _kept_grids(lay[0], plan.drop[0])
            paint = _token_paint(family, x, ip)[0]
            assert [k.shape for k in kept] == [p.shape for p in paint], (wh, box)
            assert plan.padding_kept == (0,), (wh, box)
            for view, k, f, c, im in zip(lay[0].views, kept, paint, content, image):
                painted, touched = f > 0.5, f > 0.05
                ctx = f"{family}/{geometry} image {wh} box {box} view {view.kind}"
                missing = painted & ~k
                assert not missing.any(), f"{ctx}: painted tokens not kept at {np.argwhere(missing).tolist()}"
                pad = ~content_mask(view, wh, geometry or "center_crop")  # cells the mapping calls padding
                # padding cells show no image (up to blur), image cells show some
                assert not (pad & im).any(), f"{ctx}: padding cells that show the image at {np.argwhere(pad & im).tolist()}"
                assert not (~pad & ~c).any(), f"{ctx}: image cells without image at {np.argwhere(~pad & ~c).tolist()}"
                n_pad_cells += int(pad.sum())
                extra = k & ~_dilate(touched)
                assert not (k & ~c).any(), f"{ctx}: padding tokens kept at {np.argwhere(k & ~c).tolist()}"
                assert not extra.any(), f"{ctx}: kept tokens far from the paint at {np.argwhere(extra).tolist()}"
                n_views += 1
                n_painted += bool(painted.any())
                n_kept += int((k & c).sum())
                n_untouched += int((k & c & ~touched).sum())  # only slivers of the box: rare
            if family == "llava_next":  # newline kept iff its row keeps a token
                hi = lay[0].views[1]
                np.testing.assert_array_equal(~np.isin(hi.newline_positions, plan.drop[0]), kept[1].any(1))
    assert n_painted >= 0.9 * n_views  # the checks above were not vacuous
    assert n_untouched <= 0.02 * n_kept, (n_untouched, n_kept)  # and the one-token slack is seldom used
    if geometry == "pad_square":  # (LLaVA-NeXT's unpadding leaves partial rows only at these sizes)
        assert n_pad_cells > 0  # these views do have padding, and the mapping finds it


def test_center_crop_box_partly_and_wholly_outside():
    """A wide image is centre-cropped: a box straddling the crop edge keeps only its visible part."""
    proc = build_processor("llava", "center_crop")
    config = build_proc_model("llava").config
    wh = (64, 32)  # resized to 32x16, crop keeps x in [8, 24) of 32, i.e. original x in [16, 48)
    for box, visible_cols in [((8, 4, 24, 28), (0, 2)), ((0, 0, 12, 32), None), ((40, 8, 64, 20), (6, 8))]:
        x = _run(proc, [_painted(wh, box)], [prompt("llava")])
        lay = token_layout(config, x)
        norm = (box[0] / wh[0], box[1] / wh[1], box[2] / wh[0], box[3] / wh[1])
        plan = region_keep_plan(lay, [norm], image_sizes_wh=[wh], llava_geometry="center_crop")
        kept = _kept_grids(lay[0], plan.drop[0])[0]
        painted = _token_paint("llava", x, proc.image_processor)[0][0] > 0.5
        np.testing.assert_array_equal(kept, painted)
        cols = np.flatnonzero(kept.any(0))
        if visible_cols is None:
            assert not kept.any() and plan.visual_kept == (0,)
        else:
            assert (cols[0], cols[-1] + 1) == visible_cols


def _check_row(family, ip, lay_row, drop, x, image_index, wh, box):
    """painted <= kept <= dilate(touched) (+ padding when the box touches a border) for one image."""
    kept = _kept_grids(lay_row, drop)
    paint = _token_paint(family, x, ip)[image_index]
    for view, k, f in zip(lay_row.views, kept, paint):
        ctx = f"{family} image {wh} box {box} view {view.kind}"
        assert not (f > 0.5)[~k].any(), f"{ctx}: painted tokens not kept"
        assert not (k & ~_dilate(f > 0.05)).any(), f"{ctx}: kept tokens far from the paint"


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl"])
def test_batch_of_two_sizes_regions_and_generation(family):
    """Two images of different sizes in one left-padded batch, one box each: every row keeps its
    own painted tokens, and greedy generation per row equals that row run alone."""
    geometry = "center_crop"
    proc = build_processor(family, geometry)
    model = build_proc_model(family, "sdpa")
    sizes, boxes = [(37, 20), (12, 100)], [(20, 4, 33, 16), (2, 30, 10, 80)]
    images = [_painted(wh, b) for wh, b in zip(sizes, boxes)]
    norms = [(b[0] / wh[0], b[1] / wh[1], b[2] / wh[0], b[3] / wh[1]) for wh, b in zip(sizes, boxes)]
    texts = [prompt(family, "w1 w2 w3 w4 w5 w6"), prompt(family, "w7")]
    x = _run(proc, images, texts)
    if family != "llava":  # different token counts per row: the processor left-pads one row
        assert (x["attention_mask"] == 0).any()
    lay = token_layout(model, x)
    plan = region_keep_plan(lay, norms, image_sizes_wh=sizes, llava_geometry=geometry)
    for r in range(2):
        _check_row(family, proc.image_processor, lay[r], plan.drop[r], x, r, sizes[r], boxes[r])
    kw = dict(max_new_tokens=3, do_sample=False)
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        both = model.generate(**x, **kw)
    for r in range(2):
        xr = _run(proc, images[r : r + 1], texts[r : r + 1])
        pr = region_keep_plan(token_layout(model, xr), norms[r : r + 1], image_sizes_wh=sizes[r : r + 1],
                              llava_geometry=geometry)
        assert pr.visual_kept[0] == plan.visual_kept[r]
        with torch.no_grad(), attach_ilp(model, pr, layer=K):
            one = model.generate(**xr, **kw)
        assert torch.equal(both[r, -3:], one[0, -3:]), (family, r)


def test_llava_geometry_of_rejects_unmodelled_options():
    import transformers as tf

    zoom = tf.CLIPImageProcessorPil(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16})
    with pytest.raises(ValueError, match="centre-crops"):
        llava_geometry_of(zoom)
    with pytest.raises(ValueError, match="do_resize=False"):
        llava_geometry_of(tf.CLIPImageProcessorPil(do_resize=False))


# ----------------------------------------------------------------------------- (a) layout + parity
def _image_batches(family):
    """Batch 1 per size (extreme aspect ratios included), then a batch of 2 different sizes."""
    one = [[(wh,)] for wh in SIZES_WH]
    return one + [[((37, 20),), ((12, 100),)]]


@pytest.mark.parametrize("family,geometry", PROC_CASES + [("llava", "full")])
def test_layout_finds_processor_tokens_and_full_region_is_identity(family, geometry):
    strategy = "full" if geometry == "full" else "default"
    proc = build_processor(family, "center_crop" if geometry in (None, "full") else geometry, strategy=strategy)
    model = build_proc_model(family, strategy=strategy)
    cases = _image_batches(family) if geometry in (None, "center_crop") else _image_batches(family)[-2:]
    for rows in cases:
        sizes = [r[0] for r in rows]
        images = [Image.new("RGB", wh, (30 + 20 * j, 90, 150)) for j, wh in enumerate(sizes)]
        texts = [prompt(family, "w1 w2" if j else "w3 w4 w5 w6") for j in range(len(sizes))]
        x = _run(proc, images, texts)
        lay = token_layout(model, x)
        ids = x["input_ids"].numpy()
        for b, l in enumerate(lay):
            img_pos = np.flatnonzero(ids[b] == IMG)
            np.testing.assert_array_equal(l.visual_positions, img_pos)
            parts = [v.positions.ravel() for v in l.views] + [l.always_kept]
            parts += [v.newline_positions for v in l.views if v.newline_positions is not None]
            every = np.concatenate(parts)
            assert every.size == img_pos.size and np.array_equal(np.sort(every), img_pos), (family, sizes, b)
        plan = region_keep_plan(lay, [full_region()] * len(sizes), image_sizes_wh=sizes,
                                llava_geometry=geometry if geometry in LLAVA_GEOMETRIES else "center_crop")
        assert plan.visual_kept == plan.visual_total
        with torch.no_grad():
            base = model(**x).logits
            with attach_ilp(model, plan, layer=K):
                out = model(**x).logits
        assert torch.equal(base, out), (family, geometry, sizes)


def test_next_newlines_match_model_on_processor_outputs():
    """On real processor outputs, the model's image_newline embeddings sit at our newline positions."""
    proc = build_processor("llava_next")
    model = build_proc_model("llava_next")
    x = _run(proc, [Image.new("RGB", (37, 20), BG), Image.new("RGB", (12, 100), BG)], [prompt("llava_next")] * 2)
    got = decoder_kwargs(model, x)
    for b, lay in enumerate(token_layout(model, x)):
        is_nl = (got["inputs_embeds"][b] == model.model.image_newline).all(-1).numpy()
        np.testing.assert_array_equal(np.flatnonzero(is_nl), lay.views[1].newline_positions)


def test_processor_model_token_disagreement_is_a_clear_error():
    """num_additional_image_tokens=0 with 'default' gives one token too few per image: clear error."""
    proc = build_processor("llava", extra_tokens=0)
    model = build_proc_model("llava")
    x = _run(proc, [Image.new("RGB", (20, 20), BG)], [prompt("llava")])
    assert int((x["input_ids"] == IMG).sum()) == 63
    with pytest.raises(ValueError, match="not a multiple"):
        token_layout(model, x)


# ----------------------------------------------------------------------------- (c) generation
@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl"])
def test_generate_on_processor_outputs_matches_reference(family):
    """Cached greedy generate with ILP == step-by-step hand-written reference (layers < K full)."""
    from test_ilp import LOGIT_ATOL, _reference_logits

    proc = build_processor(family, "pad_square" if family == "llava" else "center_crop")
    model = build_proc_model(family, "sdpa")
    wh, box = (37, 20), (4, 2, 20, 14)
    x = _run(proc, [_painted(wh, box)], [prompt(family)])
    lay = token_layout(model, x)
    norm = (box[0] / wh[0], box[1] / wh[1], box[2] / wh[0], box[3] / wh[1])
    plan = region_keep_plan(lay, [norm], image_sizes_wh=[wh], llava_geometry="pad_square")
    assert 0 < plan.visual_kept[0] < plan.visual_total[0]
    steps = 4
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        gen = model.generate(**x, max_new_tokens=steps, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    seq = x["input_ids"]
    for t in range(steps):
        xt = dict(x, input_ids=seq, attention_mask=torch.ones_like(seq))
        if "mm_token_type_ids" in x:
            xt["mm_token_type_ids"] = (seq == IMG).int()
        ref = _reference_logits(model, xt, plan, K)[:, -1]  # (1, V)
        torch.testing.assert_close(gen.logits[t], ref, atol=LOGIT_ATOL, rtol=0)
        seq = torch.cat([seq, ref.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(gen.sequences, seq)
