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
def decoder_kwargs(model, inputs) -> dict:
    """The keyword arguments the model passes to its decoder stack on ``model(**inputs)``
    (``inputs_embeds`` with the image features merged in, ``position_ids``, ...)."""
    from crop.pruning.plugin import decoder_layers

    stack, _ = decoder_layers(model)
    got: dict = {}
    h = stack.register_forward_pre_hook(lambda m, a, k: got.update(k), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    return got


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


# ----------------------------------------------------------------------------- real processors
# Tiny models sized for the REAL processors (tests/pruning/test_real_processors.py). The vision
# tile is 16 px with 2-px patches, i.e. an 8x8 token grid per view: a one-token tolerance in the
# region tests is then 1/8 of the image side, not 1/4 as with the 8-px models above, while the
# models stay as small (the vision tower runs on 16x16 images).
PROC_TILE = 16
PROC_PATCH = 2
PROC_PINPOINTS = [[16, 32], [32, 16], [32, 32], [16, 48], [48, 16]]  # 1:2, 2:1, 2x2, 1:3, 3:1 tiles
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 8 * 8, 40 * 40  # smart_resize bounds: at most 100 merged tokens
IMAGE_TOKENS = {"llava": "<image>", "llava_next": "<image>", "qwen2_vl": "<|image_pad|>"}


def build_proc_model(family: str, attn: str = "sdpa", seed: int = 0, strategy: str = "default"):
    """Tiny random model whose vision side matches :func:`build_processor` (16-px tiles, 2-px patches)."""
    import transformers as tf

    torch.manual_seed(seed)
    if family in ("llava", "llava_next"):
        vc = tf.CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=PROC_TILE, patch_size=PROC_PATCH, projection_dim=32,
        )
        common = dict(vision_config=vc, text_config=tf.LlamaConfig(**TEXT), image_token_id=IMG,
                      vision_feature_select_strategy=strategy)
        if family == "llava":
            model = tf.LlavaForConditionalGeneration(tf.LlavaConfig(**common))
        else:
            cfg = tf.LlavaNextConfig(**common, image_grid_pinpoints=PROC_PINPOINTS)
            model = tf.LlavaNextForConditionalGeneration(cfg)
        model.set_attn_implementation(attn)
        model.generation_config.pad_token_id = 0
        return model.eval()
    if family == "qwen2_vl":
        return build_model("qwen2_vl", attn, seed)  # already patch 2 / merge 2 / temporal 2
    raise ValueError(family)


def build_tokenizer(image_token: str = "<image>"):
    """In-memory word-level tokenizer: words ``w0``..``w79`` (ids 2..81), specials at 96..99.

    The image token is id 99 (``IMG``) and is an added special token, so the processors'
    expansion ``<image><image>...`` (no spaces) splits into one id per placeholder.
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": 2 + i for i in range(80)}}
    specials = {"<|vision_end|>": 96, "<|vision_start|>": 97, "<|video_pad|>": 98, image_token: IMG}
    vocab.update(specials)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", padding_side="left")


def _qwen_processor_class():
    """``Qwen2VLProcessor`` without its video processor.

    Its constructor type-checks a video processor, and every video processor class needs
    torchvision, which this environment lacks. The subclass only drops that constructor slot
    (``ProcessorMixin`` reads the slots from the ``__init__`` signature); the text expansion and
    image processing are the real class's code.
    """
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return ImageOnlyQwen2VLProcessor


def build_processor(family: str, geometry: str = "center_crop", strategy: str = "default", extra_tokens: int = 1):
    """The real processor class of ``family`` over :func:`build_tokenizer` (PIL image backends).

    LLaVA-1.5 ``geometry``: ``"center_crop"`` (``CLIPImageProcessor``, what the llava-hf checkpoints
    ship), ``"pad_square"`` (``LlavaImageProcessor(do_pad=True)``, the original LLaVA expand-to-square
    with the mean colour), ``"resize"`` (no crop, plain resize to the tile). ``extra_tokens`` is the
    processor's ``num_additional_image_tokens`` (1 for CLIP's CLS, as in the real checkpoints).
    """
    import transformers as tf

    tok = build_tokenizer(IMAGE_TOKENS[family])
    square = {"height": PROC_TILE, "width": PROC_TILE}
    if family == "llava":
        if geometry == "center_crop":
            ip = tf.CLIPImageProcessorPil(size={"shortest_edge": PROC_TILE}, crop_size=square)
        elif geometry == "pad_square":
            ip = tf.LlavaImageProcessorPil(size={"shortest_edge": PROC_TILE}, crop_size=square, do_pad=True)
        elif geometry == "resize":
            ip = tf.LlavaImageProcessorPil(size=square, do_center_crop=False)
        else:
            raise ValueError(geometry)
        return tf.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PROC_PATCH,
                                 vision_feature_select_strategy=strategy, num_additional_image_tokens=extra_tokens)
    if family == "llava_next":
        ip = tf.LlavaNextImageProcessorPil(size={"shortest_edge": PROC_TILE}, crop_size=square,
                                           image_grid_pinpoints=PROC_PINPOINTS)
        return tf.LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=PROC_PATCH,
                                     vision_feature_select_strategy=strategy, num_additional_image_tokens=extra_tokens)
    if family == "qwen2_vl":
        ip = tf.Qwen2VLImageProcessorPil(patch_size=2, merge_size=2, temporal_patch_size=2,
                                         min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
        return _qwen_processor_class()(image_processor=ip, tokenizer=tok)
    raise ValueError(family)


def prompt(family: str, words: str = "w1 w2 w3") -> str:
    """One image placeholder followed by text (Qwen2-VL wraps it in its vision start/end tokens)."""
    img = IMAGE_TOKENS[family]
    if family == "qwen2_vl":
        img = "<|vision_start|>" + img + "<|vision_end|>"
    return f"w5 w6 {img} {words}"
