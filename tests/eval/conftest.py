"""Tiny random LLaVA / LLaVA-NeXT / Qwen2-VL saved to disk and tiny generated benchmark files.

The models come from the real ``transformers`` config classes with random weights; tokenizers are
byte-level (256 byte symbols + the family's special tokens) and built here, so nothing is
downloaded. Each is written with ``save_pretrained`` and loaded back by the runner.
"""

import json

import pytest

from crop.eval.tiny import SUFFIX, byte_tokenizer  # one byte-level tokenizer builder for tests and the demo


def _tiny_clip_llama(tok) -> dict:
    """The tiny vision (16 px CLIP, 4 px patches) and text (3-layer Llama) configs both LLaVA
    families share in these tests."""
    from transformers import CLIPVisionConfig, LlamaConfig

    return {"vision_config": CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, image_size=16, patch_size=4),
            "text_config": LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=4, vocab_size=len(tok),
                                       max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)}


def build_tiny_llava(path):
    """LlavaConfig(tiny CLIP + tiny Llama) + a byte-level tokenizer built here; save_pretrained."""
    import torch
    from transformers import (CLIPImageProcessor, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = byte_tokenizer(["<image>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    image_token_id = tok.convert_tokens_to_ids("<image>")
    torch.manual_seed(0)
    cfg = LlavaConfig(
        **_tiny_clip_llama(tok),
        image_token_id=image_token_id, image_seq_length=16, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(cfg).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=4,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


NEXT_PINPOINTS = [[16, 32], [32, 16], [32, 32]]


def build_tiny_llava_next(path):
    """LlavaNextConfig (16 px CLIP tiles, 4 px patches, pinpoints up to 32x32) + LlavaNextProcessor."""
    import torch
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor)

    tok = byte_tokenizer(["<image>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = LlavaNextConfig(
        **_tiny_clip_llama(tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=NEXT_PINPOINTS,
        vision_feature_select_strategy="default")
    model = LlavaNextForConditionalGeneration(cfg).eval()
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                                 image_grid_pinpoints=NEXT_PINPOINTS)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=4,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


QWEN_PIXELS = (56 * 56, 112 * 112)  # min/max pixels: 4..16 merged tokens per image, varying with size


def build_tiny_qwen2vl(path):
    """Qwen2VLConfig (1-block vision tower, 14 px patches, merge 2) + tokenizer with a Qwen chat
    template + Qwen2VLImageProcessorPil; no processor file (the runner needs none)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from crop.models.localizer import CHAT_TEMPLATE, SPECIAL_TOKENS

    tok = byte_tokenizer(SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    ids = tok.convert_tokens_to_ids
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=QWEN_PIXELS[0], max_pixels=QWEN_PIXELS[1]).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_next_dir(tmp_path_factory):
    return build_tiny_llava_next(tmp_path_factory.mktemp("tiny_llava_next"))


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tiny_benchmarks(tmp_path_factory):
    """Two or four questions per benchmark with official file layouts; returns config entries."""
    from PIL import Image

    root = tmp_path_factory.mktemp("bench")
    img = root / "images"
    img.mkdir()
    for i, (w, h) in enumerate([(160, 96), (48, 80), (128, 128), (200, 120)]):  # Qwen2-VL: 15, 6, 16, 15 tokens
        Image.new("RGB", (w, h), (40 * i, 100, 200 - 40 * i)).save(img / f"im{i}.jpg")
    b = {}
    # GQA
    gq = {"q0": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify", "semantic": "rel"}},
          "q1": {"answer": "red", "isBalanced": True, "types": {"structural": "query", "semantic": "attr"}}}
    (root / "gqa.json").write_text(json.dumps(gq))
    b["gqa"] = {"name": "gqa", "image_folder": str(img), "annotation_file": str(root / "gqa.json"),
                "question_file": _jsonl(root / "gqa.jsonl", [
                    {"question_id": "q0", "image": "im0.jpg", "text": f"Is it left?\n{SUFFIX}"},
                    {"question_id": "q1", "image": "im1.jpg", "text": f"What colour?\n{SUFFIX}"}])}
    # TextVQA (question_id = image id, shared by two questions)
    (root / "textvqa.json").write_text(json.dumps({"data": [
        {"image_id": "im2", "question": "what brand?", "answers": ["acme"] * 10},
        {"image_id": "im2", "question": "what year?", "answers": ["1999"] * 10}]}))
    b["textvqa"] = {"name": "textvqa", "image_folder": str(img), "annotation_file": str(root / "textvqa.json"),
                    "question_file": _jsonl(root / "textvqa.jsonl", [
                        {"question_id": "im2", "image": "im2.jpg",
                         "text": f"What brand?\nReference OCR token: ACME, 1999\n{SUFFIX}"},
                        {"question_id": "im2", "image": "im2.jpg", "text": f"What year?\n{SUFFIX}"}])}
    # POPE
    ann = root / "pope"
    ann.mkdir()
    _jsonl(ann / "coco_pope_random.json", [{"question_id": 1, "image": "im0.jpg", "text": "Is there a cat?", "label": "yes"},
                                           {"question_id": 2, "image": "im1.jpg", "text": "Is there a dog?", "label": "no"}])
    b["pope"] = {"name": "pope", "image_folder": str(img), "annotation_dir": str(ann),
                 "question_file": _jsonl(root / "pope.jsonl", [
                     {"question_id": 1, "image": "im0.jpg", "text": f"Is there a cat?\n{SUFFIX}", "category": "random"},
                     {"question_id": 2, "image": "im1.jpg", "text": f"Is there a dog?\n{SUFFIX}", "category": "random"}])}
    # MME (one subtask, one image, two questions)
    mme = root / "MME" / "existence"
    mme.mkdir(parents=True)
    (mme / "im3.txt").write_text("Is there a cat? Please answer yes or no.\tYes\nIs there a dog? Please answer yes or no.\tNo\n")
    Image.new("RGB", (30, 20)).save(mme / "im3.jpg")
    b["mme"] = {"name": "mme", "image_folder": str(root / "MME"), "mme_root": str(root / "MME"),
                "question_file": _jsonl(root / "mme.jsonl", [
                    {"question_id": "existence/im3.jpg", "image": "existence/im3.jpg", "text": f"Is there a cat?\n{SUFFIX}"},
                    {"question_id": "existence/im3.jpg", "image": "existence/im3.jpg", "text": f"Is there a dog?\n{SUFFIX}"}])}
    # ScienceQA: one image problem, one text-only problem
    sqa = root / "sqa"
    (sqa / "images" / "p1").mkdir(parents=True)
    Image.new("RGB", (20, 30)).save(sqa / "images" / "p1" / "image.png")
    (sqa / "problems.json").write_text(json.dumps({"p1": {"choices": ["a", "b"], "answer": 0, "image": "image.png"},
                                                   "p2": {"choices": ["a", "b"], "answer": 1, "image": None}}))
    (sqa / "pid_splits.json").write_text(json.dumps({"test": ["p1", "p2"]}))
    (sqa / "llava_test_CQM-A.json").write_text(json.dumps([
        {"id": "p1", "image": "p1/image.png", "conversations": [
            {"from": "human", "value": "Context: N/A\nQuestion: Which?\nOptions: (A) a (B) b\n<image>"},
            {"from": "gpt", "value": "A"}]},
        {"id": "p2", "conversations": [{"from": "human", "value": "Context: N/A\nQuestion: Why?\nOptions: (A) a (B) b"},
                                       {"from": "gpt", "value": "B"}]}]))
    b["scienceqa"] = {"name": "scienceqa", "image_folder": str(sqa / "images"), "base_dir": str(sqa),
                      "question_file": str(sqa / "llava_test_CQM-A.json"), "max_new_tokens": 4}
    # VQAv2 (val-style annotations + a test split file for the submission)
    (root / "vqav2_ann.json").write_text(json.dumps({"annotations": [
        {"question_id": 11, "answer_type": "other", "answers": [{"answer": "blue", "answer_id": k} for k in range(10)]}]}))
    qrows = [{"question_id": 11, "image": "im3.jpg", "text": f"What colour?\n{SUFFIX}", "category": "default"}]
    b["vqav2"] = {"name": "vqav2", "image_folder": str(img), "annotation_file": str(root / "vqav2_ann.json"),
                  "question_file": _jsonl(root / "vqav2.jsonl", qrows),
                  "test_split_file": _jsonl(root / "vqav2_test.jsonl", qrows + [{"question_id": 12, "image": "x.jpg", "text": "?"}])}
    return b
