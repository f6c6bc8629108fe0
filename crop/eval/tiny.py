"""A tiny, generated evaluation set-up: ``crop eval`` end to end in a minute, with nothing downloaded.

    python -m crop.eval.tiny                          # writes runs/eval-tiny/{model,bench}
    crop eval --config configs/eval-tiny.yaml         # ILP, K=2, R=8, on GQA + POPE (12 questions)
    crop eval --config configs/eval-tiny.yaml --method none --output-dir runs/eval-tiny/none
    crop table runs/eval-tiny/ilp --baseline runs/eval-tiny/none --benchmarks pope

What is written (paths as ``configs/eval-tiny.yaml`` names them, under ``ROOT``):

* ``model/``: a LLaVA-1.5-shaped model built from the real ``transformers`` config classes (a
  2-layer CLIP vision tower at 32 px with 4 px patches -> 8x8 = 64 visual tokens, a 4-layer Llama)
  with **random weights**, a byte-level tokenizer and a ``LlavaProcessor``, via ``save_pretrained``.
  Its answers are noise: this set-up shows the machinery (prompting, regions, pruning, scoring,
  efficiency records, tables), not accuracy.
* ``bench/``: GQA and POPE question files in LLaVA-1.5's published layouts (``llava_gqa_*.jsonl``,
  ``llava_pope_test.jsonl``) with their official-format annotations, generated images, and a
  regions file keyed as ``crop predict-regions`` keys them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

DEFAULT_ROOT = "runs/eval-tiny"
SUFFIX = "Answer the question using a single word or phrase."
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def byte_tokenizer(specials, **tokens):
    """256 byte symbols + ``specials`` as added special tokens; ``tokens`` names bos/eos/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, extra_special_tokens=list(specials), **tokens)


def write_tiny_llava(path: str | os.PathLike, seed: int = 0) -> str:
    """A random-weight LLaVA-1.5-shaped model + processor, saved with ``save_pretrained``."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = byte_tokenizer(["<image>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=4)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=len(tok), max_position_embeddings=1024,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                      image_seq_length=64, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=4,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def _jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_tiny_benchmarks(root: str | os.PathLike, n_images: int = 6, seed: int = 0) -> dict[str, str]:
    """GQA + POPE in LLaVA-1.5's file layouts, on generated images; returns the paths written.

    Each image is a grey canvas with one coloured square; questions ask about its colour (GQA) or
    whether a colour is present (POPE). The regions file puts each question's region on the square
    (8x8 blocks), keyed ``<question_id>`` with the benchmark named, as ``crop predict-regions``
    writes it.
    """
    from PIL import Image, ImageDraw

    from crop.geometry import box_px_to_region

    rng = random.Random(seed)
    root = Path(root)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    gqa_q, gqa_ann, pope_q, pope_ann, regions = [], {}, [], [], []
    for i in range(n_images):
        w, h = rng.choice([(96, 64), (64, 96), (80, 80), (120, 72)])
        colour = rng.choice(sorted(COLOURS))
        side = rng.randint(min(w, h) // 4, min(w, h) // 2)
        x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
        im = Image.new("RGB", (w, h), (128, 128, 128))
        ImageDraw.Draw(im).rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=COLOURS[colour])
        name = f"tiny{i:03d}.png"
        im.save(img_dir / name)
        region = list(box_px_to_region((x0, y0, x0 + side, y0 + side), w, h, 8))
        qid = f"g{i:03d}"
        gqa_q.append({"question_id": qid, "image": name, "text": f"What colour is the square?\n{SUFFIX}"})
        gqa_ann[qid] = {"answer": colour, "isBalanced": True, "types": {"structural": "query", "semantic": "attr"}}
        regions.append({"benchmark": "gqa", "key": qid, "region_blocks": region})
        asked = colour if i % 2 == 0 else rng.choice([c for c in COLOURS if c != colour])
        pope_q.append({"question_id": i + 1, "image": name, "category": "random",
                       "text": f"Is there a {asked} square in the image?\n{SUFFIX}"})
        pope_ann.append({"question_id": i + 1, "image": name, "text": f"Is there a {asked} square in the image?",
                         "label": "yes" if asked == colour else "no"})
        regions.append({"benchmark": "pope", "key": str(i + 1), "region_blocks": region})
    _jsonl(root / "llava_gqa_testdev_balanced.jsonl", gqa_q)
    (root / "testdev_balanced_questions.json").write_text(json.dumps(gqa_ann), encoding="utf-8")
    (root / "pope").mkdir(exist_ok=True)
    _jsonl(root / "pope" / "coco_pope_random.json", pope_ann)
    _jsonl(root / "llava_pope_test.jsonl", pope_q)
    _jsonl(root / "regions.jsonl", regions)
    return {"images": str(img_dir), "regions": str(root / "regions.jsonl")}


def write_tiny_eval(root: str | os.PathLike = DEFAULT_ROOT, seed: int = 0) -> str:
    """Model and benchmarks under ``root`` (``root/model``, ``root/bench``); returns ``root``."""
    root = Path(root)
    write_tiny_llava(root / "model", seed)
    write_tiny_benchmarks(root / "bench", seed=seed)
    return str(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crop.eval.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=DEFAULT_ROOT,
                        help=f"folder to write model/ and bench/ into (default {DEFAULT_ROOT}, "
                             "the one configs/eval-tiny.yaml reads)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and the images")
    args = parser.parse_args(argv)
    root = write_tiny_eval(args.root, args.seed)
    print(f"wrote a tiny random-weight LLaVA and GQA + POPE questions to {root}; now:\n"
          "  crop eval --config configs/eval-tiny.yaml", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
