"""``crop train-plc``: co-fine-tune LLaVA-1.5 with the PLC module (paper Sec. 4.1, Stage 2).

Launch: ``crop train-plc --config configs/plc-llava15-7b.yaml --shards shards/crop-train``
(``--set section.field=value`` overrides any config field). Single process; the 7B run needs one
large GPU (fp32 master weights + AdamW states ~112 GB, bf16 autocast, gradient checkpointing);
multi-GPU sharding (FSDP/DeepSpeed) is not implemented.

What trains: PLC + projector + LLM; the vision tower is frozen. Paper defaults: AdamW, lr 1e-5,
2 epochs. Warm-up 3 % + cosine and weight decay 0 follow LLaVA-1.5's own fine-tuning recipe (the
paper does not state them).

Trained as evaluated (``crop eval --method plc``):

- the conversation is LLaVA-1.5's ``vicuna_v1`` with its own system prompt, rendered and tokenized
  by :mod:`crop.models.llava_conversation` (the builder ``crop eval``'s prompts come from): the
  whole conversation is tokenized in one call, and only the answer tokens (and their ``</s>``)
  carry labels; ``<image>`` then expands to the 68 PLC tokens;
- the image is the one ``crop eval`` shows the model (:mod:`crop.models.llava_view`): padded to a
  square of the processor's mean colour (``data.image_aspect: pad``, LLaVA-1.5's
  ``image_aspect_ratio=pad``) before the processor, and the context masks are computed for that
  padded view.

Samples (dicts ``{"json": record, "image": PIL image or None}``) become conversations:

- ``kind == "region"``: question -> short answer (record ``question``/``answer``, with LLaVA's
  short-answer suffix), compressed around the ground-truth ``region_blocks``.
- ``kind == "instruction"``: the LLaVA-1.5 conversation as is; region rule ``instruction_region``:
  ``full`` (default) = the whole image, so all 576 tokens are "context" and the 4 non-context
  queries return PLC's learned null tokens. (Localizer-predicted regions would need a region field
  in the records; not supported.)
- text-only records (``image`` null): ``text_only: feed`` (default, as LLaVA-1.5 trains on them;
  no placeholders, no PLC) or ``skip`` (counted under ``text_only``).
Rejected samples are counted by reason (``counters`` in logs/checkpoints). Resume: the stream is
a function of (seed, epoch); a resumed run skips the raw samples already consumed in the epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from crop.eval.prompts import SHORT_ANSWER_SUFFIX
from crop.models.llava_conversation import IGNORE_INDEX, render_vicuna_v1, tokenize_conversation
from crop.models.llava_view import padded_for
from crop.models.plc_config import PLCConfig
from crop.train import loader_health, run_folder

log = logging.getLogger(__name__)

SHORT_ANSWER = f"\n{SHORT_ANSWER_SUFFIX}"  # LLaVA's short-answer suffix, as its eval questions end
FULL_REGION = (0, 0, 7, 7)


# --------------------------------------------------------------------------------- config


@dataclass
class ModelSection:
    llava: str = "llava-hf/llava-1.5-7b-hf"  # local folder / Hub id, or "tiny" (random, no download)
    dtype: str = "float32"  # parameter dtype (float32 master weights; bfloat16 loses 1e-5 updates)
    autocast: str = "bfloat16"  # CUDA autocast dtype, or "none"
    gradient_checkpointing: bool = False
    device: str = "auto"  # auto: cuda when available
    tiny_hidden: int = 64  # only for llava: tiny
    tiny_layers: int = 2
    seed: int = 0  # PLC (and tiny model) initialisation


@dataclass
class DataSection:
    shards: list[str] = field(default_factory=list)  # folders, manifests, tars or globs
    samples_per_epoch: int = 0  # 0: the stream's length
    shuffle: bool = True
    shuffle_buffer: int = 256
    seed: int = 0
    region_answer_suffix: str = SHORT_ANSWER
    image_aspect: str = "pad"  # pad (LLaVA-1.5, crop eval's default) | processor (its own view)
    instruction_region: str = "full"
    text_only: str = "feed"  # feed | skip
    max_length: int = 2048  # tokens after expanding <image>; longer samples are skipped
    max_failure_fraction: float = 0.001  # loader failures allowed (crop.train.loader_health) before the run stops

    def __post_init__(self) -> None:
        if self.instruction_region != "full":
            raise ValueError(f"data.instruction_region={self.instruction_region!r}: only 'full' is supported")
        if self.text_only not in ("feed", "skip"):
            raise ValueError(f"data.text_only={self.text_only!r}: choose feed or skip")
        if self.image_aspect not in ("pad", "processor"):
            raise ValueError(f"data.image_aspect={self.image_aspect!r}: choose pad or processor "
                             "(crop eval's model.image_aspect must be the same)")


@dataclass
class OptimSection:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.03
    schedule: str = "cosine"
    grad_clip: float = 1.0  # 0: off


@dataclass
class LoopSection:
    output_dir: str = "runs/plc"
    epochs: int = 2
    batch_size: int = 4
    grad_accum: int = 1
    max_steps: int = 0  # 0: no cap
    save_every: int = 500  # optimizer steps
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: bool = True  # a run of the same config in output_dir continues (false: refuse to continue it)
    export_final: bool = True  # final/llava (save_pretrained) + final/plc.safetensors

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)} must be >= 1")


@dataclass
class TrainPLCConfig:
    model: ModelSection = field(default_factory=ModelSection)
    plc: PLCConfig = field(default_factory=PLCConfig)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: LoopSection = field(default_factory=LoopSection)


# --------------------------------------------------------------------------------- samples -> tokens (pure)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    image: Any  # RGB PIL image or None
    region: tuple[int, int, int, int] | None


def conversation_turns(record: dict, has_image: bool, cfg: DataSection) -> list[tuple[str, str]] | str:
    """Record -> ``[(human, gpt), ...]`` or a rejection reason (total: never raises)."""
    if not isinstance(record, dict):
        return "bad_record"
    kind = record.get("kind")
    if kind == "region":
        if not has_image:
            return "region_without_image"
        question, answer = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            return "bad_question_or_answer"
        return [(f"<image>\n{question.strip()}{cfg.region_answer_suffix}", answer)]
    if kind != "instruction":
        return "unknown_kind" if not isinstance(kind, str) else f"unknown_kind_{kind}"
    conv = record.get("conversations") or []
    if not isinstance(conv, list) or len(conv) < 2 or len(conv) % 2 or any(
            not isinstance(c, dict) or c.get("from") != ("human" if i % 2 == 0 else "gpt")
            or not isinstance(c.get("value"), str) for i, c in enumerate(conv)):
        return "bad_conversation"
    turns = [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv), 2)]
    if any("<image>" in g for _, g in turns):
        return "image_tag_in_answer"  # it would be tokenized as image placeholders the model must fill
    n_tags = sum(h.count("<image>") for h, _ in turns)
    if not has_image:
        return "image_missing" if n_tags else turns
    if n_tags > 1:
        return "several_image_tags"
    # LLaVA's preprocess_multimodal puts the tag at the start of its turn, on its own line (the
    # layout crop eval's prompts use); a record without one gets it in the first turn.
    i = next((k for k, (h, _) in enumerate(turns) if "<image>" in h), 0)
    turns[i] = ("<image>\n" + turns[i][0].replace("<image>", "").strip(), turns[i][1])
    return turns


def tokenize_turns(turns: Sequence[tuple[str, str]], tokenizer, image_token_id: int,
                   num_image_tokens: int) -> tuple[list[int], list[int]]:
    """The whole ``vicuna_v1`` conversation in one tokenizer call (crop eval's template and call);
    labels are -100 except on answer tokens and their EOS; each image token becomes
    ``num_image_tokens`` placeholders (labels -100)."""
    eos = tokenizer.eos_token or "</s>"
    conv = render_vicuna_v1([(human, gpt.strip()) for human, gpt in turns], eos_text=eos)
    ids, labels = tokenize_conversation(conv, tokenizer)
    out_ids: list[int] = []
    out_labels: list[int] = []
    for t, lab in zip(ids, labels):
        n = num_image_tokens if t == image_token_id else 1
        out_ids += [t] * n
        out_labels += [IGNORE_INDEX] * n if t == image_token_id else [lab]
    return out_ids, out_labels


def sample_region(record: dict) -> tuple[int, int, int, int] | str:
    """The context region of an image sample (8x8 blocks), or a rejection reason."""
    from crop.geometry.regions import Region

    if record["kind"] != "region":
        return FULL_REGION
    if record.get("grid_size", 8) != 8:
        return "grid_size_not_8"
    blocks = record.get("region_blocks")
    if not isinstance(blocks, (list, tuple)) or len(blocks) != 4:
        return "bad_region_blocks"
    try:
        return tuple(Region(*blocks).check(8))
    except ValueError:
        return "bad_region_blocks"


def prepare_sample(sample: dict, cfg: DataSection, tokenizer, image_token_id: int,
                   num_image_tokens: int) -> Example | str:
    """One stream sample -> :class:`Example`, or the reason it is skipped (total: never raises
    on a record; the counters reconcile: samples read = examples + skipped by reason)."""
    record, image = sample.get("json"), sample.get("image")
    if image is None and cfg.text_only == "skip":
        return "text_only"
    turns = conversation_turns(record, image is not None, cfg)
    if isinstance(turns, str):
        return turns
    region = None
    if image is not None:
        region = sample_region(record)
        if isinstance(region, str):
            return region
    ids, labels = tokenize_turns(turns, tokenizer, image_token_id, num_image_tokens)
    if len(ids) > cfg.max_length:
        return "too_long"
    return Example(ids, labels, image.convert("RGB") if image is not None else None, region)


def image_inputs(images: Sequence[Any], regions: Sequence[Sequence[int]], image_processor, padded: bool,
                 grid_hw: tuple[int, int], tile_px: int | None = None) -> tuple[Any, Any]:
    """Original images + their block regions -> ``(pixel_values (B, 3, S, S), context_mask (B, R*C))``.

    The pixels are :func:`crop.models.llava_view.view_image` of each image through the processor,
    the masks the regions mapped into that same view (computed on the original sizes, with the
    vision tower's side ``tile_px`` as ``crop eval`` passes it).
    """
    from crop.models.llava_plc import context_masks
    from crop.models.llava_view import plc_view, view_image

    pixels = image_processor(images=[view_image(im, image_processor, padded) for im in images],
                             return_tensors="pt")["pixel_values"]  # (B, 3, S, S)
    masks = context_masks(list(regions), [im.size for im in images], plc_view(image_processor, padded), grid_hw,
                          tile_px=tile_px)
    return pixels, masks


def collate(examples: Sequence[Example], image_processor, padded: bool, grid_hw: tuple[int, int],
            pad_id: int, tile_px: int | None = None) -> dict:
    """Right-padded batch; images (and their context masks) only for the rows that have one."""
    import torch

    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    attn = torch.zeros((len(examples), T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n], labels[i, :n], attn[i, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": attn}
    with_image = [e for e in examples if e.image is not None]
    if with_image:
        batch["pixel_values"], batch["context_mask"] = image_inputs(
            [e.image for e in with_image], [e.region for e in with_image], image_processor, padded, grid_hw, tile_px)
    return batch


# --------------------------------------------------------------------------------- the loop


SampleSource = Callable[[int, int], Iterable[dict]]  # (epoch, samples to skip) -> samples


def as_source(samples: Sequence[dict] | SampleSource) -> SampleSource:
    """A sequence is replayed every epoch in the same order; a callable is used as is."""
    if callable(samples):
        return samples
    return lambda epoch, skip: islice(samples, skip, None)


def train(cfg: TrainPLCConfig, model, tokenizer, image_processor, samples: Sequence[dict] | SampleSource,
          samples_per_epoch: int | None = None, overwrite: bool = False) -> dict:
    """Run (or resume) training; returns a summary with the final step, loss, counters and ``stopped``.

    The output folder follows :mod:`crop.train.run_folder`: a run of the same config resumes from
    its newest checkpoint (log rows after it dropped), another config is refused unless
    ``overwrite``; SIGINT/SIGTERM finish the current optimizer step, save a checkpoint and return
    with ``stopped`` = the signal number."""
    import torch

    from crop.train import common

    out = Path(cfg.train.output_dir)
    ckpt_root = out / "checkpoints"
    # train.max_steps only caps the run (the schedule is planned from the epochs), so raising it
    # continues the same run: operational here, unlike in the localizer trainer.
    mode = run_folder.prepare(out, dataclasses.asdict(cfg), overwrite=overwrite, config_name="config.yaml",
                              has_checkpoint=lambda p: common.latest_checkpoint(p / "checkpoints") is not None,
                              operational=run_folder.OPERATIONAL | {"max_steps", "export_final"})
    if mode == "resume" and not cfg.train.resume:
        raise run_folder.RunFolderError(f"{out}: holds a run of this config and train.resume is false; "
                                        "use another output folder, or --overwrite to start again")
    out.mkdir(parents=True, exist_ok=True)
    common.dump_config(cfg, out / "config.yaml")
    source = as_source(samples)
    loader_counters = getattr(source, "counters", None)  # crop.data.safety.Counters of a shard stream
    read_here = [0]  # samples read by this process (the loader's counters start at 0 here too)
    if samples_per_epoch is None:
        samples_per_epoch = cfg.data.samples_per_epoch or (len(samples) if hasattr(samples, "__len__") else 0)
    if not samples_per_epoch and not cfg.train.max_steps:
        raise ValueError("unknown epoch size: set data.samples_per_epoch or train.max_steps")
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    steps_per_epoch = math.ceil(samples_per_epoch / per_step) if samples_per_epoch else cfg.train.max_steps
    total = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)

    device = next(model.parameters()).device
    model.freeze_vision_tower()
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = common.build_optimizer(named, cfg.optim.lr, cfg.optim.weight_decay, tuple(cfg.optim.betas))
    sched = common.build_scheduler(opt, steps_per_epoch * cfg.train.epochs,
                                   int(cfg.optim.warmup_ratio * steps_per_epoch * cfg.train.epochs),
                                   cfg.optim.schedule)
    step, start_epoch, skip, counters = 0, 0, 0, Counter()
    if mode == "resume" and (last := common.latest_checkpoint(ckpt_root)) is not None:
        state = common.load_checkpoint(last, model, opt, sched)
        step, start_epoch, skip = state["step"], state["data"]["epoch"], state["data"]["consumed"]
        counters.update(state.get("counters", {}))
        run_folder.trim_log(out / "log.jsonl", step)
        log.info("resumed from %s (step %d, epoch %d, %d samples in)", last, step, start_epoch, skip)

    padded, grid_hw = padded_for(cfg.data.image_aspect), model.grid_hw
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    use_autocast = device.type == "cuda" and cfg.model.autocast != "none"
    amp_dtype = getattr(torch, cfg.model.autocast) if use_autocast else None
    progress = common.ProgressLog(total, out / "log.jsonl", cfg.train.log_every, step)
    trainable = [p for _, p in named]
    last_loss, epoch, consumed = float("nan"), start_epoch, skip

    def save() -> None:
        common.save_checkpoint(ckpt_root, step, model, opt, sched, {"epoch": epoch, "consumed": consumed},
                               cfg, {"counters": dict(counters)}, keep=cfg.train.keep_checkpoints)

    def optimizer_step(n_samples: int, losses: list[float]) -> None:
        nonlocal step, last_loss
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        last_loss = sum(losses) / len(losses)
        loader = dict(loader_counters.counts) if loader_counters is not None else {}
        progress.step(step, last_loss, sched.get_last_lr()[0], n_samples, extra={"loader": loader})
        read_here[0] += n_samples
        try:
            loader_health.check(loader, read_here[0], cfg.data.max_failure_fraction,
                                getattr(loader_counters, "first", None))
        except loader_health.LoaderFailureError:
            save()
            raise
        if step % cfg.train.save_every == 0 or step == total or signals.requested is not None:
            save()

    done = step >= total
    signals = run_folder.StopSignals().__enter__()
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            if done:
                break
            consumed = skip if epoch == start_epoch else 0
            stream = iter(source(epoch, consumed))
            micro, losses, n_samples = 0, [], 0
            while not done:
                examples: list[Example] = []
                while len(examples) < cfg.train.batch_size:
                    sample = next(stream, None)
                    if sample is None:
                        break
                    consumed += 1
                    ex = prepare_sample(sample, cfg.data, tokenizer, model.image_token_id, model.num_image_tokens)
                    if isinstance(ex, str):
                        counters[ex] += 1
                    else:
                        examples.append(ex)
                if not examples:
                    break
                batch = {k: v.to(device) for k, v in
                         collate(examples, image_processor, padded, grid_hw, pad_id, model.tile_px).items()}
                if "pixel_values" in batch:
                    batch["pixel_values"] = batch["pixel_values"].to(next(model.llava.parameters()).dtype)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_autocast):
                    loss = model(**batch).loss
                (loss / cfg.train.grad_accum).backward()
                losses.append(float(loss.detach()))
                micro, n_samples = micro + 1, n_samples + len(examples)
                if micro == cfg.train.grad_accum:
                    optimizer_step(n_samples, losses)
                    micro, losses, n_samples = 0, [], 0
                    done = step >= total or signals.requested is not None
            if micro and not done:  # flush a partial accumulation at the end of the epoch
                optimizer_step(n_samples, losses)
                done = step >= total or signals.requested is not None
    finally:
        signals.__exit__()
    progress.close()
    if step and (common.latest_checkpoint(ckpt_root) is None
                 or common.latest_checkpoint(ckpt_root).name != f"step-{step:06d}"):
        save()
    if counters:
        log.info("skipped samples by reason: %s", dict(counters))
    if signals.requested is not None and step < total:
        return {"step": step, "loss": last_loss, "counters": dict(counters), "stopped": int(signals.requested),
                "checkpoint": str(common.latest_checkpoint(ckpt_root))}
    if cfg.train.export_final:
        export_final(model, tokenizer, image_processor, out / "final")
    return {"step": step, "loss": last_loss, "counters": dict(counters), "stopped": None,
            "loader": dict(loader_counters.counts) if loader_counters is not None else {}}


def export_final(model, tokenizer, image_processor, final: Path) -> None:
    """``final/llava``: what ``crop eval`` loads with ``model.path`` (weights, and a full
    ``LlavaProcessor``: tokenizer, the image processor trained with, ``processor_config.json``);
    ``final/plc.safetensors``: ``model.plc_weights``.

    The processor config carries the vision patch size and feature-selection strategy; without it
    ``AutoProcessor`` loads a ``LlavaProcessor`` whose ``patch_size`` is None and cannot encode an
    image prompt.
    """
    from transformers import LlavaProcessor

    cfg = model.llava.config
    final.mkdir(parents=True, exist_ok=True)
    model.save_plc(final / "plc.safetensors")
    model.llava.save_pretrained(final / "llava")
    # num_additional_image_tokens=1: CLIP's CLS token, dropped again by the "default" strategy
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=cfg.vision_config.patch_size,
                               vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                               num_additional_image_tokens=1)
    processor.save_pretrained(final / "llava")


# --------------------------------------------------------------------------------- building + CLI


def build_model(cfg: TrainPLCConfig):
    """(LlavaPLC, tokenizer, image processor) from the model section; ``tiny`` downloads nothing."""
    import torch

    from crop.models.llava_plc import LlavaPLC, byte_tokenizer, tiny_image_processor, tiny_llava
    from crop.models.plc import PLC

    m = cfg.model
    device = torch.device("cuda" if m.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if m.device == "auto" else m.device))
    if m.llava == "tiny":
        llava = tiny_llava(hidden=m.tiny_hidden, layers=m.tiny_layers, seed=m.seed)
        tokenizer, processor = byte_tokenizer(), tiny_image_processor(llava.config.vision_config.image_size)
    else:
        from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

        llava = LlavaForConditionalGeneration.from_pretrained(m.llava, dtype=getattr(torch, m.dtype))
        tokenizer = AutoTokenizer.from_pretrained(m.llava)
        processor = AutoImageProcessor.from_pretrained(m.llava)
    llava.to(device=device, dtype=getattr(torch, m.dtype))
    if m.gradient_checkpointing:
        llava.gradient_checkpointing_enable()
    torch.manual_seed(m.seed)
    model = LlavaPLC(llava, plc=PLC(cfg.plc).to(device))
    return model, tokenizer, processor


def shard_source(shards: Sequence[str], cfg: DataSection) -> tuple[SampleSource, int]:
    """Samples from CROP shards through :class:`crop.data.stream.ShardStream` (images decoded)."""
    from crop.data.stream import ShardStream, StreamConfig

    stream = ShardStream(list(shards), StreamConfig(seed=cfg.seed, shuffle=cfg.shuffle,
                                                    shuffle_buffer=cfg.shuffle_buffer, decode=True))

    def source(epoch: int, skip: int) -> Iterable[dict]:
        stream.set_epoch(epoch)
        if skip:
            stream.load_state_dict(stream.state_dict(batches_seen=skip))
        return stream

    source.counters = stream.counters  # loader failures, for the training log (crop.train.loader_health)
    return source, len(stream)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML file (configs/plc-*.yaml)")
    parser.add_argument("--shards", nargs="*", default=None, help="overrides data.shards")
    parser.add_argument("--output-dir", default=None, help="overrides train.output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run of another config in the output folder instead of refusing")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.max_steps=10 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from crop.train.common import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(TrainPLCConfig, args.config, overrides)
    if args.shards:
        cfg.data.shards = list(args.shards)
    if not cfg.data.shards:
        raise SystemExit("train-plc: no shards (set data.shards or pass --shards)")
    model, tokenizer, processor = build_model(cfg)
    source, n = shard_source(cfg.data.shards, cfg.data)
    summary = train(cfg, model, tokenizer, processor, source, cfg.data.samples_per_epoch or n, overwrite=args.overwrite)
    if summary["stopped"] is not None:
        import signal as _signal

        print(f"stopped by {_signal.Signals(summary['stopped']).name} at step {summary['step']}; checkpoint "
              f"{summary['checkpoint']}\nresume with: {run_folder.resume_command()}", file=sys.stderr)
        return 128 + summary["stopped"]
    log.info("done: %s", summary)
    return 0
