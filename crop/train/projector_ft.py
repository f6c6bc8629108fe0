"""``crop train-projector``: VisionZip‡, LLaVA-1.5's projector fine-tuned on VisionZip-pruned tokens.

VisionZip (Yang et al., CVPR 2025, Sec. 3.4 "efficient tuning") notes that the projector was
trained on all 576 tokens and sees a different distribution once only the dominant + contextual
tokens reach it, and fine-tunes the projector alone (vision tower and LLM frozen) on LLaVA-1.5
instruction data with the pruned tokens; the paper's tables mark that variant with ‡. This
trainer does that on any LLaVA-format data:

- per sample: the image through the frozen vision tower, VisionZip's selection (the
  ``visionzip`` method's own functions, ``crop.pruning.methods.visionzip``) at budget R, the
  selected vectors through the **trainable** projector, spliced into the conversation's
  embeddings in place of the ``<image>`` token; next-token loss on the assistant's answers only
  (``crop.models.llava_conversation``: the ``vicuna_v1`` template ``crop eval`` prompts with);
- AdamW + warm-up / cosine schedule, seeding and the log from ``crop.train.common``; the output
  folder rule from ``crop.train.run_folder`` (a folder of another config is refused unless
  ``--overwrite``);
- the export, ``<output_dir>/projector.safetensors`` (the projector's state dict), is what
  ``method: {name: visionzip, options: {projector: PATH}}`` loads.

Data: a LLaVA-format ``.json`` list or ``.jsonl`` of ``{"image": file, "conversations": [{"from":
"human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}`` (records without an
image are skipped). ``python -m crop.train.projector_ft runs/eval-tiny`` writes such a file from
the tiny generated GQA set of ``python -m crop.eval.tiny`` (configs/visionzip-ft-tiny.yaml).

Not here (yet): intermediate checkpoints and resume (one export at the end), multi-GPU. Images are
prepared by the checkpoint's own image processor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
EXPORT_NAME = "projector.safetensors"


@dataclass
class ModelSection:
    path: str = ""               # a LLaVA-1.5 checkpoint folder (save_pretrained / Hub snapshot)
    dtype: str = "float32"       # float32 | bfloat16 | float16
    device: str = "cpu"


@dataclass
class DataSection:
    train_file: str = ""         # LLaVA-format .json / .jsonl
    image_folder: str = ""       # image paths are relative to it
    limit: int | None = None     # use the first N usable records


@dataclass
class VisionZipSection:
    budget: int = 64             # R, [CLS] included (the official count)
    dominant: int | None = None  # default: the official split, round(27 R / 32)
    contextual: int | None = None


@dataclass
class TrainSection:
    output_dir: str = "runs/visionzip-ft"
    steps: int = 100
    batch_size: int = 4
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    seed: int = 0
    log_every: int = 10
    progress: bool = True


@dataclass
class ProjectorFTConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    visionzip: VisionZipSection = field(default_factory=VisionZipSection)
    train: TrainSection = field(default_factory=TrainSection)


# ----------------------------------------------------------------------------- data
def read_records(cfg: DataSection) -> list[dict]:
    """Usable records: an image and at least one (human, gpt) turn."""
    path = Path(cfg.train_file)
    text = path.read_text(encoding="utf-8")
    rows = json.loads(text) if path.suffix == ".json" else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    out = []
    for row in rows:
        turns = conversation_turns(row)
        if row.get("image") and turns:
            out.append({"image": str(Path(cfg.image_folder) / row["image"]), "turns": turns})
        if cfg.limit is not None and len(out) >= cfg.limit:
            break
    if not out:
        raise ValueError(f"{path}: no record with an image and a human/gpt turn")
    return out


def conversation_turns(row: dict) -> list[tuple[str, str]]:
    """LLaVA ``conversations`` -> ``[(user, answer), ...]``; the first user turn carries the image."""
    from crop.models.llava_conversation import IMAGE_PLACEHOLDER, user_message

    conv = row.get("conversations") or []
    turns = []
    for i in range(0, len(conv) - 1, 2):
        if conv[i].get("from") != "human" or conv[i + 1].get("from") != "gpt":
            break
        question = str(conv[i]["value"]).replace(IMAGE_PLACEHOLDER, "").strip()
        turns.append((user_message(question, has_image=(i == 0)), str(conv[i + 1]["value"])))
    return turns


def write_tiny_train(root: str | Path = "runs/eval-tiny") -> str:
    """LLaVA-format training records from the tiny GQA set of ``crop.eval.tiny`` (same images)."""
    bench = Path(root) / "bench"
    answers = json.loads((bench / "testdev_balanced_questions.json").read_text(encoding="utf-8"))
    rows = []
    for line in (bench / "llava_gqa_testdev_balanced.jsonl").read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        rows.append({"id": q["question_id"], "image": q["image"], "conversations": [
            {"from": "human", "value": "<image>\n" + q["text"]},
            {"from": "gpt", "value": answers[q["question_id"]]["answer"]}]})
    out = bench / "visionzip_ft_train.json"
    out.write_text(json.dumps(rows), encoding="utf-8")
    return str(out)


# ----------------------------------------------------------------------------- the model side
def projector_of(model: Any):
    return model.model.multi_modal_projector


def sample_loss_terms(model: Any, processor: Any, record: dict, dominant: int, contextual: int):
    """(sum of token losses, supervised tokens) of one record with VisionZip's tokens."""
    import torch
    from PIL import Image

    from crop.models.llava_conversation import render_vicuna_v1, tokenize_conversation
    from crop.pruning.methods.visionzip import vision_signals, visionzip_tokens

    device = next(model.parameters()).device
    with Image.open(record["image"]) as im:
        pixels = processor.image_processor(images=im.convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden, cls_attn, keys = vision_signals(model, pixels.to(device))
        feats, _ = visionzip_tokens(hidden[0], cls_attn[0], keys[0], dominant, contextual)  # (R, Dv)
    img = projector_of(model)(feats.unsqueeze(0))[0]  # (R, D) with grad: the trained part
    ids, labels = tokenize_conversation(render_vicuna_v1(record["turns"]), processor.tokenizer)
    image_id = model.config.image_token_id
    if ids.count(image_id) != 1:
        raise ValueError(f"{record['image']}: the prompt must hold one <image> token, got {ids.count(image_id)}")
    at = ids.index(image_id)
    ids_t = torch.tensor(ids, device=device)
    text = model.get_input_embeddings()(ids_t)  # (N, D)
    emb = torch.cat([text[:at], img.to(text.dtype), text[at + 1:]]).unsqueeze(0)  # (1, N - 1 + R, D)
    lab = torch.tensor(labels[:at] + [-100] * img.shape[0] + labels[at + 1:], device=device)
    logits = model(inputs_embeds=emb).logits[0, :-1].float()  # (L - 1, V) predicts token t + 1
    target = lab[1:]
    loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
    return loss, int((target != -100).sum())


def batch_loss(model: Any, processor: Any, records: list[dict], dominant: int, contextual: int):
    """Mean next-token loss over the supervised tokens of ``records``."""
    total, count = 0.0, 0
    for rec in records:
        s, n = sample_loss_terms(model, processor, rec, dominant, contextual)
        total, count = total + s, count + n
    return total / max(1, count)


def splits(cfg: VisionZipSection) -> tuple[int, int]:
    from crop.pruning.methods.visionzip import split_budget

    dominant, contextual = split_budget(cfg.budget)
    if cfg.dominant is not None or cfg.contextual is not None:
        dominant = cfg.dominant if cfg.dominant is not None else cfg.budget - int(cfg.contextual)
        contextual = cfg.budget - dominant
    if dominant < 1 or contextual < 0:
        raise ValueError(f"visionzip: dominant {dominant} / contextual {contextual} do not fit budget {cfg.budget}")
    return dominant, contextual


def train(cfg: ProjectorFTConfig, overwrite: bool = False) -> dict:
    """Fine-tune the projector; returns ``{"export": path, "losses": [...]}``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from crop.train import run_folder
    from crop.train.common import ProgressLog, build_optimizer, build_scheduler, dump_config, seed_everything

    out = Path(cfg.train.output_dir)
    run_folder.prepare(out, dataclasses.asdict(cfg), overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / run_folder.CONFIG_NAME)
    (out / "log.jsonl").unlink(missing_ok=True)
    seed_everything(cfg.train.seed)
    model = LlavaForConditionalGeneration.from_pretrained(cfg.model.path, dtype=getattr(torch, cfg.model.dtype))
    model.to(cfg.model.device).eval()  # eval: no dropout; gradients still flow
    processor = AutoProcessor.from_pretrained(cfg.model.path)
    model.requires_grad_(False)
    projector_of(model).requires_grad_(True)
    records = read_records(cfg.data)
    dominant, contextual = splits(cfg.visionzip)
    named = [(f"projector.{n}", p) for n, p in projector_of(model).named_parameters()]
    optimizer = build_optimizer(named, cfg.train.lr, cfg.train.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.train.steps, cfg.train.warmup_steps, cfg.train.schedule)
    progress = ProgressLog(cfg.train.steps, out / "log.jsonl", cfg.train.log_every, show=cfg.train.progress)
    losses, cursor = [], 0
    for step in range(1, cfg.train.steps + 1):
        batch = [records[(cursor + i) % len(records)] for i in range(cfg.train.batch_size)]
        cursor = (cursor + cfg.train.batch_size) % len(records)
        loss = batch_loss(model, processor, batch, dominant, contextual)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        progress.step(step, losses[-1], scheduler.get_last_lr()[0], len(batch),
                      {"visual_tokens": dominant + contextual})
    progress.close()
    state = {k: v.detach().contiguous().cpu() for k, v in projector_of(model).state_dict().items()}
    export = out / EXPORT_NAME
    save_file(state, str(export), metadata={"method": "visionzip", "budget": str(cfg.visionzip.budget),
                                            "dominant": str(dominant), "contextual": str(contextual)})
    (out / "summary.json").write_text(json.dumps({"export": str(export), "steps": cfg.train.steps,
                                                  "first_loss": losses[0], "last_loss": losses[-1],
                                                  "dominant": dominant, "contextual": contextual}, indent=1))
    return {"export": str(export), "losses": losses}


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from crop.train.run_args import add_run_arguments

    add_run_arguments(parser, "YAML file (configs/visionzip-ft-*.yaml)", "train.steps=10")


def run(args: argparse.Namespace) -> int:
    from crop.train.run_args import config_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = config_from_args(ProjectorFTConfig, args)
    got = train(cfg, overwrite=args.overwrite)
    print(f"crop train-projector: loss {got['losses'][0]:.4f} -> {got['losses'][-1]:.4f}; "
          f"projector in {got['export']} (method visionzip, options: {{projector: {got['export']}}})",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crop.train.projector_ft",
                                     description="write LLaVA-format training records from the tiny GQA set")
    parser.add_argument("root", nargs="?", default="runs/eval-tiny", help="folder written by python -m crop.eval.tiny")
    path = write_tiny_train(parser.parse_args(argv).root)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
