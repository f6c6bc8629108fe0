"""LLaVA-1.5 with PLC: 68 compressed visual tokens instead of 576 projector outputs.

How it attaches (no patched class, no forked forward): ``LlavaPLC`` wraps one
``LlavaForConditionalGeneration`` instance. It computes the projector outputs with the model's own
``get_image_features`` (vision tower + feature-layer selection + projector), compresses them with
:class:`~crop.models.plc.PLC`, and hands the result to the unmodified model through its public
``mm_encoder_outputs`` argument (transformers >= 5), which LLaVA scatters into the positions where
``input_ids == image_token_id``. ``generate`` passes the same argument; transformers uses it for the
prefill only and decodes from the KV cache afterwards.

Prompt side: the tokenizer renders ``<image>`` as one image token; :func:`expand_image_tokens`
repeats it ``PLCConfig.num_output_tokens`` (68) times, so placeholders follow the compressed count.

Region side: a region is given in 8x8 blocks of the *original* image; the image processor may
center-crop (llava-hf default: shortest edge -> 336, crop 336) or pad to a square (original LLaVA),
so :func:`context_masks` maps the region into the processed view with ILP's own mapping
(:mod:`crop.pruning.region_map`): one region gives the same token set to PLC and ILP.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from crop.models.plc import PLC, PLCConfig

VIEWS = ("resize", "center_crop", "pad")


# ---------------------------------------------------------------------------------------------
# regions -> token masks in the processed view (pure)


GEOMETRY_OF_VIEW = {"resize": "resize", "center_crop": "center_crop", "pad": "pad_square"}


def region_box_in_view(region: Sequence[int], width: int, height: int, view: str, grid: int = 8,
                       tile_px: int | None = None) -> tuple[float, float, float, float]:
    """Block region on a ``width`` x ``height`` image -> normalized xyxy box in the processed view.

    ``resize``: plain resize, the box is unchanged. ``center_crop``: shortest side -> the tile,
    central square kept; the box may leave [0, 1]. ``pad``: the image centred in a max(W, H)
    square (LLaVA's expand2square, offset floored). The numbers come from
    :func:`crop.pruning.region_map.map_box_to_view` (the processors' integer arithmetic; the
    centre crop's needs ``tile_px``, else the continuous formula); kept for inspection, the
    masks use :func:`context_masks`.
    """
    from crop.pruning.region_map import map_box_to_view, to_box_norm
    from crop.pruning.layout import ViewGrid
    from crop.geometry.regions import Region

    if view not in VIEWS:
        raise ValueError(f"view={view!r} is not one of {VIEWS}")
    geometry = {} if tile_px is None else {"image_size": int(tile_px)}
    grid_view = ViewGrid("llava", 0, np.zeros((1, 1), dtype=np.int64), None, geometry)
    box = to_box_norm(Region(*region), grid)
    return tuple(float(v) for v in map_box_to_view(box, grid_view, (width, height), GEOMETRY_OF_VIEW[view]))


def view_of(image_processor) -> str:
    """Which geometric transform an image processor applies (see :data:`VIEWS`)."""
    if getattr(image_processor, "do_pad", False):
        return "pad"
    if getattr(image_processor, "do_center_crop", False):
        return "center_crop"
    return "resize"


def context_masks(regions: Sequence, sizes: Sequence[tuple[int, int]], view: str,
                  grid_hw: tuple[int, int], tile_px: int | None = None) -> torch.Tensor:
    """Regions with their image sizes (W, H) -> flat context masks ``(B, R*C)`` in ``view``.

    The mask is ILP's exact keep mask of the same region (one mapping for both:
    :func:`crop.pruning.region_map.llava_region_mask`): padding cells are outside the context
    unless the region is the whole image, which makes every token context. ``tile_px`` is the
    vision tower's input side (``LlavaPLC.tile_px``); the centre crop needs it to follow the
    processor's integer arithmetic.

    ``regions[b]`` may be a list of regions (issue 21). Then the result is an int64 label map:
    0 outside every region, k inside region k (1-based, in the order given; a cell two regions
    share keeps the lower label), one-region rows labelled 1; PLC takes the union as context and
    splits its anchors over the regions. With one region per row it is the bool mask, as before.
    """
    from crop.geometry.regions import Region
    from crop.pruning.region_map import llava_region_mask, region_list

    if view not in VIEWS:
        raise ValueError(f"view={view!r} is not one of {VIEWS}")
    geometry = GEOMETRY_OF_VIEW[view]
    lists = [region_list(r) for r in regions]
    if all(rs is None for rs in lists):
        masks = [llava_region_mask(Region(*r), (int(w), int(h)), geometry, grid_hw, tile_px)
                 for r, (w, h) in zip(regions, sizes)]  # each (R, C)
        out = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, *grid_hw), dtype=torch.bool)
        return out.flatten(1)  # (B, R*C)
    labels = np.zeros((len(regions), *grid_hw), dtype=np.int64)  # (B, R, C)
    for b, (r, rs, (w, h)) in enumerate(zip(regions, lists, sizes)):
        for k, one in reversed(list(enumerate([r] if rs is None else rs, start=1))):  # lower label wins
            labels[b][llava_region_mask(Region(*one), (int(w), int(h)), geometry, grid_hw, tile_px)] = k
    return torch.from_numpy(labels).flatten(1)  # (B, R*C)


def expand_image_tokens(ids: Sequence[int], image_token_id: int, count: int) -> list[int]:
    """Replace every single image token in ``ids`` by ``count`` copies (68 for PLC)."""
    out: list[int] = []
    for t in ids:
        out.extend([t] * count if t == image_token_id else [t])
    return out


# ---------------------------------------------------------------------------------------------
# the wrapper


class LlavaPLC(nn.Module):
    """One LLaVA instance plus a PLC module; the LLaVA modules are used, never modified."""

    def __init__(self, llava: nn.Module, plc_config: PLCConfig | None = None, plc: PLC | None = None):
        super().__init__()
        cfg = llava.config
        vc = cfg.vision_config
        side = vc.image_size // vc.patch_size
        self.llava = llava
        self.plc = plc if plc is not None else PLC(plc_config or PLCConfig(
            dim=cfg.text_config.hidden_size, grid_rows=side, grid_cols=side))
        pc = self.plc.config
        if (pc.grid_rows, pc.grid_cols) != (side, side) or pc.dim != cfg.text_config.hidden_size:
            raise ValueError(f"PLC grid {pc.grid_rows}x{pc.grid_cols}, dim {pc.dim} does not match LLaVA "
                             f"({side}x{side} patches, hidden {cfg.text_config.hidden_size})")
        self.plc.to(device=next(llava.parameters()).device)

    @property
    def image_token_id(self) -> int:
        return self.llava.config.image_token_id

    @property
    def num_image_tokens(self) -> int:
        return self.plc.config.num_output_tokens

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.plc.grid_hw

    @property
    def tile_px(self) -> int:
        """Side in pixels of the square the vision tower sees (``vision_config.image_size``)."""
        return int(self.llava.config.vision_config.image_size)

    def freeze_vision_tower(self) -> None:
        """Paper Stage 2: the vision encoder stays frozen; PLC, projector and LLM train."""
        for p in self.llava.model.vision_tower.parameters():
            p.requires_grad_(False)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projector outputs ``(B, R*C, d_h)`` from the model's own vision path."""
        out = self.llava.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        return torch.stack(list(out.pooler_output))  # (B, R*C, d_h)

    def compress(self, pixel_values: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` + context masks ``(B, R*C)`` -> PLC tokens ``(B, 68, d_h)``."""
        feats = self.image_features(pixel_values)
        return self.plc(feats.to(self.plc.q_context.dtype), context_mask).to(feats.dtype)

    def _mm_outputs(self, input_ids, pixel_values, context_mask) -> dict | None:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        n_placeholders = int((input_ids == self.image_token_id).sum())
        n_images = 0 if pixel_values is None else len(pixel_values)
        if n_placeholders != n_images * self.num_image_tokens:
            raise ValueError(f"{n_placeholders} image placeholder tokens but {n_images} image(s) x "
                             f"{self.num_image_tokens} PLC tokens; expand '<image>' with expand_image_tokens")
        if n_images == 0:
            return None
        if context_mask is None or context_mask.shape[0] != n_images:
            raise ValueError(f"context_mask must be given with one row per image ({n_images})")
        compressed = self.compress(pixel_values, context_mask)  # (n_images, 68, d_h)
        return {"image": BaseModelOutputWithPooling(pooler_output=list(compressed))}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        """Rows without an image carry no placeholders; images are matched to placeholders in order."""
        mm = self._mm_outputs(input_ids, pixel_values, context_mask)
        return self.llava(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                          mm_encoder_outputs=mm, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                 **gen_kwargs) -> torch.Tensor:
        mm = self._mm_outputs(input_ids, pixel_values, context_mask)
        return self.llava.generate(input_ids=input_ids, attention_mask=attention_mask,
                                   mm_encoder_outputs=mm, **gen_kwargs)

    # ---- PLC weights on their own (safetensors, config in the metadata)

    def save_plc(self, path: str | Path, state: dict | None = None) -> None:
        """PLC weights + config; ``state`` (a full PLC state dict, e.g. gathered from FSDP shards)
        replaces this module's own tensors."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in (state or self.plc.state_dict()).items()}
        save_file(state, str(path), metadata={"plc_config": json.dumps(asdict(self.plc.config))})

    @staticmethod
    def load_plc(path: str | Path) -> PLC:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            cfg = PLCConfig(**json.loads(f.metadata()["plc_config"]))
        plc = PLC(cfg)
        plc.load_state_dict(load_file(str(path)))
        return plc

    @classmethod
    def from_pretrained(cls, llava_path: str, plc_config: PLCConfig | None = None,
                        plc_weights: str | None = None, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device = "cpu") -> "LlavaPLC":
        """Thin loader: a local/Hub LLaVA-1.5 folder plus optional PLC weights (never downloads here)."""
        from transformers import LlavaForConditionalGeneration

        llava = LlavaForConditionalGeneration.from_pretrained(llava_path, dtype=dtype).to(device)
        plc = cls.load_plc(plc_weights) if plc_weights else None
        return cls(llava, plc_config, plc)


# ---------------------------------------------------------------------------------------------
# tiny random models (tests, benchmarks, configs/plc-tiny.yaml); nothing is downloaded


def byte_tokenizer():
    """A 260-token byte-level tokenizer: 256 bytes + <s>, </s>, <pad>, <image> (ids 256..259)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens=["<image>"])


def tiny_llava(vocab_size: int = 260, image_token_id: int = 259, grid: int = 24, hidden: int = 64,
               layers: int = 2, vision_hidden: int = 32, patch: int = 2, seed: int = 0):
    """Random ``LlavaForConditionalGeneration`` from real config classes (grid x grid patches)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                                       num_hidden_layers=2, num_attention_heads=2,
                                       image_size=grid * patch, patch_size=patch),
        text_config=LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                num_attention_heads=4, num_key_value_heads=4, vocab_size=vocab_size,
                                max_position_embeddings=1024, bos_token_id=256, eos_token_id=257,
                                pad_token_id=258),
        image_token_id=image_token_id, image_seq_length=68)
    return LlavaForConditionalGeneration(cfg).eval()


def tiny_image_processor(side: int = 48):
    """CLIP-style processor (shortest edge -> side, center crop side x side), PIL backend."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
