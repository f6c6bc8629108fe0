"""Tiny random LLaVA-1.5 / LLaVA-NeXT / Qwen2-VL models and hand-built inputs (no downloads).

Inputs are built consistently with the config: the number of image tokens per image follows
the same rules the processors use (checked independently by the models, which raise when the
features and placeholders disagree).
"""

from __future__ import annotations

import torch

IMG = 99  # image token id in every tiny config
FAMILIES = ("llava", "llava_next", "qwen2_vl")
TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=100,
    max_position_embeddings=512,
)


def build_model(family: str, attn: str = "sdpa", seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    if family == "llava":
        vc = tf.CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=8, patch_size=2, projection_dim=32,
        )
        cfg = tf.LlavaConfig(vision_config=vc, text_config=tf.LlamaConfig(**TEXT), image_token_id=IMG)
        model = tf.LlavaForConditionalGeneration(cfg)
    elif family == "llava_next":
        vc = tf.CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=8, patch_size=2, projection_dim=32,
        )
        cfg = tf.LlavaNextConfig(
            vision_config=vc, text_config=tf.LlamaConfig(**TEXT), image_token_id=IMG,
            image_grid_pinpoints=[[8, 16], [16, 8], [16, 16]],
        )
        model = tf.LlavaNextForConditionalGeneration(cfg)
    elif family == "qwen2_vl":
        text = dict(TEXT, bos_token_id=1, eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})
        cfg = tf.Qwen2VLConfig(
            vision_config=dict(
                depth=1, embed_dim=32, hidden_size=32, num_heads=4, patch_size=2,
                spatial_merge_size=2, temporal_patch_size=2, in_channels=3, mlp_ratio=2,
            ),
            text_config=text, image_token_id=IMG, video_token_id=98,
            vision_start_token_id=97, vision_end_token_id=96,
        )
        model = tf.Qwen2VLForConditionalGeneration(cfg)
    else:
        raise ValueError(family)
    model.set_attn_implementation(attn)
    model.generation_config.pad_token_id = 0
    return model.eval()


# per family: image description per row (original H, W) used to derive token counts
def build_inputs(family: str, batch: int = 1, seed: int = 1, sizes_hw=None, prefix=3, suffix=4):
    """input_ids (B, N) = prefix text, image placeholders, suffix text; plus pixel inputs."""
    g = torch.Generator().manual_seed(seed)
    if sizes_hw is None:
        sizes_hw = [(10, 19), (19, 10), (12, 12)][:batch] if family == "llava_next" else [(12, 16)] * batch
    out = {}
    if family == "llava":
        counts = [16] * batch  # 4 x 4 grid (image 8 / patch 2), CLS dropped ("default")
        out["pixel_values"] = torch.randn(batch, 3, 8, 8, generator=g)
    elif family == "llava_next":
        from crop.pruning.layout import _next_image_geometry
        from transformers import LlavaNextConfig

        counts, npatch = [], []
        for hw in sizes_hw:
            geo = _next_image_geometry(_NEXT_CFG, hw)
            counts.append(16 + geo["rows"] * (geo["cols"] + 1))
            th, tw = geo["padded_hw"][0] // 4, geo["padded_hw"][1] // 4
            npatch.append(th * tw + 1)
        out["pixel_values"] = torch.randn(batch, max(npatch), 3, 8, 8, generator=g)
        out["image_sizes"] = torch.tensor(sizes_hw)
    else:
        thw = [(1, 2 * max(1, h // 4), 2 * max(1, w // 4)) for h, w in sizes_hw]  # merged grid h/4 x w/4
        counts = [t * h * w // 4 for t, h, w in thw]
        out["image_grid_thw"] = torch.tensor(thw)
        out["pixel_values"] = torch.randn(sum(t * h * w for t, h, w in thw), 3 * 2 * 2 * 2, generator=g)
    if len(set(counts)) != 1:
        raise ValueError("tiny inputs: rows must have equal image-token counts (no padding here)")
    rows = []
    for b in range(batch):
        pre = torch.randint(10, 90, (prefix,), generator=g).tolist()
        suf = torch.randint(10, 90, (suffix,), generator=g).tolist()
        img = [IMG] * counts[b]
        if family == "qwen2_vl":
            img = [97] + img + [96]
        rows.append(pre + img + suf)
    ids = torch.tensor(rows)
    out["input_ids"] = ids
    out["attention_mask"] = torch.ones_like(ids)
    if family == "qwen2_vl":
        out["mm_token_type_ids"] = (ids == IMG).int()
    return out


def _next_cfg():
    import transformers as tf

    vc = tf.CLIPVisionConfig(image_size=8, patch_size=2)
    return tf.LlavaNextConfig(vision_config=vc, text_config=tf.LlamaConfig(**TEXT), image_token_id=IMG,
                              image_grid_pinpoints=[[8, 16], [16, 8], [16, 16]])


_NEXT_CFG = _next_cfg()
