"""Tiny random LLaVA saved to disk and tiny generated benchmark files for the runner tests."""

import json

import pytest

SUFFIX = "Answer the question using a single word or phrase."


def build_tiny_llava(path):
    """LlavaConfig(tiny CLIP + tiny Llama) + a byte-level tokenizer built here; save_pretrained."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  extra_special_tokens=["<image>"])
    image_token_id = tok.convert_tokens_to_ids("<image>")
    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=16, patch_size=4),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                num_key_value_heads=4, vocab_size=len(tok), max_position_embeddings=1024,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id),
        image_token_id=image_token_id, image_seq_length=16, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(cfg).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=4,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


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
    for i, (w, h) in enumerate([(40, 24), (24, 40), (32, 32), (50, 30)]):
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
