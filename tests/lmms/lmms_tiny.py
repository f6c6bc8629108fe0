"""A tiny local lmms-eval task in TextVQA's format, and helpers to run lmms-eval's CLI on it.

The task folder (registered through lmms-eval's ``--include_path``) holds:

* ``data/validation.parquet``: generated images + questions with the fields of lmms-eval's
  TextVQA dataset that its task code reads (``question_id``, ``question``, ``image_id``,
  ``image``, ``answers`` (ten references), ``ocr_tokens``), written by ``datasets`` (Image feature);
* ``crop_tiny_textvqa.yaml``: ``include:`` of lmms-eval's own installed TextVQA template (so its
  ``doc_to_text``, ``doc_to_visual`` and ``process_results`` score the answers), with only the
  data source, split, metric list (``exact_match``: the scored accuracy, no submission file) and
  a short ``max_new_tokens`` changed.

Nothing is downloaded: the dataset is a local parquet file, loaded by ``datasets``' parquet builder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TASK = "crop_tiny_textvqa"
SUFFIX = "Answer the question using a single word or phrase."
QUESTIONS = ["what colour is the square", "what is written here", "which brand is it",
             "what colour is the square", "what number is shown", "what is the word"]
SIZES = [(96, 64), (64, 96), (80, 80), (120, 72), (72, 120), (100, 60)]


def write_tiny_llava(path: Path, init_std: float = 0.2, seed: int = 0) -> Path:
    """A LLaVA-1.5-shaped random-weight model (real ``transformers`` config classes, byte-level
    tokenizer of :mod:`crop.eval.tiny`) saved with ``save_pretrained``.

    ``init_std`` 0.2 (not the configs' default 0.02): with the default, the tiny model gives
    nearly the same answer to every image, so equal answers across batch sizes would prove
    little; at 0.2 its answers differ per doc and between pruned and unpruned runs.
    """
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from crop.eval.tiny import byte_tokenizer

    tok = byte_tokenizer(["<image>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=4, initializer_range=init_std,
                              initializer_factor=init_std / 0.02)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=len(tok), max_position_embeddings=1024,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       initializer_range=init_std)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                      image_seq_length=64, vision_feature_select_strategy="default")  # 8x8 = 64 visual tokens
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=tok, patch_size=4, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def write_images_and_regions(root: Path) -> list[dict]:
    """One generated image per doc (a square on grey) and its region (8x8 blocks) per doc key."""
    from PIL import Image, ImageDraw

    from crop.geometry import box_px_to_region

    docs = []
    for i, (w, h) in enumerate(SIZES):
        side = min(w, h) // (2 + i % 3)
        x0, y0 = (w - side) * (i % 3) // 2, (h - side) * ((i + 1) % 3) // 2
        im = Image.new("RGB", (w, h), (128, 128, 128))
        ImageDraw.Draw(im).rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=(40 * i, 200 - 30 * i, 90))
        docs.append({"question_id": 1000 + i, "image_id": f"img{i}", "question": QUESTIONS[i], "image": im,
                     "ocr_tokens": [], "region": list(box_px_to_region((x0, y0, x0 + side, y0 + side), w, h, 8))})
    regions = [{"benchmark": TASK, "key": str(d["question_id"]), "region_blocks": d["region"]} for d in docs]
    (root / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in regions), encoding="utf-8")
    return docs


def write_task(folder: Path, docs: list[dict], references: list[list[str]], max_new_tokens: int = 5) -> Path:
    """The task folder for ``--include_path`` (rules in the module docstring)."""
    import lmms_eval
    from datasets import Dataset, Features, Image, Sequence, Value

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    features = Features({"question_id": Value("int64"), "image_id": Value("string"), "question": Value("string"),
                         "image": Image(), "answers": Sequence(Value("string")),
                         "ocr_tokens": Sequence(Value("string"))})
    rows = {name: [d[name] for d in docs] for name in ("question_id", "image_id", "question", "image", "ocr_tokens")}
    rows["answers"] = references
    Dataset.from_dict(rows, features=features).to_parquet(str(folder / "data" / "validation.parquet"))
    template = Path(lmms_eval.__file__).parent / "tasks" / "textvqa" / "_default_template_textvqa_yaml"
    (folder / f"{TASK}.yaml").write_text(
        f"include: {template}\n"
        f"task: {TASK}\n"
        "dataset_path: parquet\n"
        "dataset_kwargs:\n  data_files:\n    validation: data/validation.parquet\n"
        "test_split: validation\n"
        "generation_kwargs:\n  until:\n    - \"ASSISTANT:\"\n"
        f"  max_new_tokens: {max_new_tokens}\n  temperature: 0\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8")
    return folder


def offline_env(home: Path) -> dict:
    """The subprocess environment: no hub access, caches in ``home``, one CPU thread."""
    env = dict(os.environ)
    env.update(HF_HOME=str(home / "hf"), HF_DATASETS_CACHE=str(home / "hf" / "datasets"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    return env


def run_lmms_eval(task_dir: Path, model_args: str, batch_size: int, out: Path, home: Path) -> dict:
    """``lmms-eval --model crop ...`` in a subprocess; returns the results JSON and the samples."""
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "crop", "--model_args", model_args,
           "--tasks", TASK, "--include_path", str(task_dir), "--batch_size", str(batch_size),
           "--output_path", str(out), "--log_samples", "--device", "cpu"]
    proc = subprocess.run(cmd, env=offline_env(home), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"lmms-eval failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    results = sorted(out.rglob("*_results.json"))
    samples = sorted(out.rglob(f"*_samples_{TASK}.jsonl"))
    assert len(results) == 1 and len(samples) == 1, (results, samples, proc.stderr[-3000:])
    sample_rows = [json.loads(line) for line in samples[0].read_text(encoding="utf-8").splitlines() if line]
    return {"results": json.loads(results[0].read_text(encoding="utf-8")), "samples": sample_rows,
            "kept": sorted(out.glob("crop_kept_tokens_*.jsonl")), "log": proc.stderr}
