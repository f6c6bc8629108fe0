"""LLaVA-1.5 + PLC on a tiny random LLaVA: placeholders, forward parity, generate with KV cache."""

from __future__ import annotations

import pytest
import torch

from crop.models.llava_plc import (
    LlavaPLC,
    byte_tokenizer,
    context_masks,
    expand_image_tokens,
    region_box_in_view,
    tiny_image_processor,
    tiny_llava,
    view_of,
)
from crop.models.plc import region_token_masks

IMG = 259


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return LlavaPLC(tiny_llava()).eval()


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def prompt_ids(tok, text="USER: <image>\nWhat is it? ASSISTANT:"):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([[tok.bos_token_id] + expand_image_tokens(ids, IMG, 68)])


@pytest.mark.parametrize("region, w, h, view, box", [
    ((0, 0, 7, 7), 80, 80, "center_crop", (0, 0, 1, 1)),
    ((0, 0, 7, 7), 160, 80, "resize", (0, 0, 1, 1)),
    ((0, 0, 7, 7), 160, 80, "center_crop", (-0.5, 0, 1.5, 1)),  # crop keeps the middle half in x
    ((4, 0, 7, 3), 160, 80, "center_crop", (0.5, 0, 1.5, 0.5)),
    ((0, 0, 7, 7), 160, 80, "pad", (0, 0.25, 1, 0.75)),  # padded to 160x160, image centred in y
    ((0, 0, 3, 7), 80, 160, "pad", (0.25, 0, 0.5, 1)),
])
def test_region_box_in_view(region, w, h, view, box):
    assert region_box_in_view(region, w, h, view) == pytest.approx(box)


def test_region_box_in_view_rejects_unknown_view():
    with pytest.raises(ValueError, match="view='squash'"):
        region_box_in_view((0, 0, 7, 7), 10, 10, "squash")


def test_context_masks_on_square_images_equal_region_masks():
    regions = [(0, 0, 7, 7), (2, 3, 4, 5), (7, 7, 7, 7)]
    got = context_masks(regions, [(64, 64)] * 3, "center_crop", (24, 24))
    expected = region_token_masks(torch.tensor(regions), (24, 24)).flatten(1)
    assert torch.equal(got, expected)
    # a region entirely outside a center crop leaves no context tokens (PLC then uses its nulls)
    assert not context_masks([(0, 0, 0, 7)], [(400, 100)], "center_crop", (24, 24)).any()


def test_view_of_processor():
    assert view_of(tiny_image_processor()) == "center_crop"


def test_expand_image_tokens():
    assert expand_image_tokens([1, 9, 2], 9, 3) == [1, 9, 9, 9, 2]
    assert expand_image_tokens([1, 2], 9, 3) == [1, 2]


def test_forward_equals_manual_scatter(model, tok):
    """Our mm_encoder_outputs route equals embedding the prompt and scattering PLC tokens by hand."""
    ids = prompt_ids(tok)
    px = torch.randn(1, 3, 48, 48)
    mask = model.plc.masks_from_regions(torch.tensor([[1, 2, 3, 5]]))
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), px, mask)
        emb = model.llava.get_input_embeddings()(ids)  # (1, T, d)
        compressed = model.compress(px, mask)  # (1, 68, d)
        pos = (ids[0] == IMG).nonzero().flatten()
        assert len(pos) == 68 and compressed.shape == (1, 68, 64)
        emb[0, pos] = compressed[0]
        ref = model.llava(inputs_embeds=emb, attention_mask=torch.ones_like(ids))
    torch.testing.assert_close(out.logits, ref.logits)


def test_region_changes_the_answer_distribution(model, tok):
    ids, px = prompt_ids(tok), torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        a = model(ids, pixel_values=px, context_mask=model.plc.masks_from_regions(torch.tensor([[0, 0, 1, 1]])))
        b = model(ids, pixel_values=px, context_mask=model.plc.masks_from_regions(torch.tensor([[5, 5, 7, 7]])))
    assert not torch.allclose(a.logits[0, -1], b.logits[0, -1])


def test_placeholder_count_mismatch_is_reported(model, tok):
    ids = tok("<image> hi", add_special_tokens=False)["input_ids"]  # one placeholder, not 68
    with pytest.raises(ValueError, match="1 image placeholder tokens but 1 image"):
        model(torch.tensor([ids]), pixel_values=torch.randn(1, 3, 48, 48),
              context_mask=torch.ones(1, 576, dtype=torch.bool))


def test_generate_with_kv_cache_matches_uncached_greedy(model, tok):
    ids, px = prompt_ids(tok), torch.randn(1, 3, 48, 48)
    mask = model.plc.masks_from_regions(torch.tensor([[2, 2, 5, 6]]))
    gen = model.generate(ids, torch.ones_like(ids), px, mask, max_new_tokens=6, do_sample=False,
                         use_cache=True, eos_token_id=None, pad_token_id=tok.pad_token_id)
    assert gen.shape == (1, ids.shape[1] + 6)
    assert torch.equal(gen[:, : ids.shape[1]], ids)
    seq = ids
    with torch.no_grad():
        for _ in range(6):  # full recompute every step, no cache
            logits = model(seq, pixel_values=px, context_mask=mask, use_cache=False).logits
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(gen, seq)


def test_mixed_batch_with_text_only_row(model, tok):
    img = prompt_ids(tok)[0]
    txt = torch.tensor([tok.bos_token_id] + tok("USER: hello ASSISTANT:", add_special_tokens=False)["input_ids"])
    T = len(img)
    batch = torch.full((2, T), tok.pad_token_id)
    attn = torch.zeros(2, T, dtype=torch.long)
    batch[0], attn[0] = img, 1
    batch[1, : len(txt)], attn[1, : len(txt)] = txt, 1  # right padding
    px, mask = torch.randn(1, 3, 48, 48), torch.ones(1, 576, dtype=torch.bool)
    with torch.no_grad():
        both = model(batch, attn, px, mask).logits
        solo_img = model(img[None], pixel_values=px, context_mask=mask).logits
        solo_txt = model.llava(input_ids=txt[None]).logits
    torch.testing.assert_close(both[0], solo_img[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(both[1, : len(txt)], solo_txt[0], rtol=1e-4, atol=1e-4)


def test_frozen_vision_tower_gets_no_grad():
    m = LlavaPLC(tiny_llava(layers=1))
    m.freeze_vision_tower()
    ids = prompt_ids(byte_tokenizer())
    out = m(ids, pixel_values=torch.randn(1, 3, 48, 48),
            context_mask=m.plc.masks_from_regions(torch.tensor([[0, 0, 3, 3]])), labels=ids)
    out.loss.backward()
    named = dict(m.named_parameters())
    assert all(p.grad is None for n, p in named.items() if ".vision_tower." in n)
    for part in ("plc.q_context", "llava.model.multi_modal_projector.linear_1.weight",
                 "llava.lm_head.weight"):
        assert named[part].grad is not None and named[part].grad.abs().sum() > 0, part


def test_plc_weights_roundtrip(tmp_path, model):
    path = tmp_path / "plc.safetensors"
    with torch.no_grad():
        model.plc.q_noncontext.add_(1.0)
    model.save_plc(path)
    loaded = LlavaPLC.load_plc(path)
    assert loaded.config == model.plc.config
    for k, v in model.plc.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        model.plc.q_noncontext.sub_(1.0)


def test_grid_mismatch_is_reported():
    from crop.models.plc import PLCConfig

    with pytest.raises(ValueError, match="does not match LLaVA"):
        LlavaPLC(tiny_llava(layers=1), PLCConfig(dim=64, grid_rows=12, grid_cols=12))
