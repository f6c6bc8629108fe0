"""``crop train-plc``: co-fine-tune LLaVA-1.5 with the PLC module (paper Sec. 4.1, Stage 2).

Launch: ``crop train-plc --config configs/plc-llava15-7b.yaml --shards shards/crop-train``
(``--set section.field=value`` overrides any config field) on one device, or ``accelerate launch
--config_file configs/accelerate-{ddp,fsdp,deepspeed-zero2}.yaml -m crop.cli train-plc ...`` on
several (:mod:`crop.train.accel`, the set-up train-localizer uses too). The 7B run holds ~110 GB of
fp32 weights, gradients and AdamW states before activations: one 80 GB GPU is not enough; ZeRO-2 or
FSDP2 over 8 GPUs is (docs/plc.md, "Memory per GPU"). Samples are read, decoded and prepared in
DataLoader workers (:mod:`crop.train.prefetch`, ``data.num_workers``).

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
    num_workers: int = 0  # DataLoader workers decoding + preparing samples (crop.train.prefetch); 0: in process
    prefetch_factor: int = 2  # samples each worker prepares ahead
    pin_memory: bool = True  # page-locked batches when training on CUDA

    def __post_init__(self) -> None:
        if self.instruction_region != "full":
            raise ValueError(f"data.instruction_region={self.instruction_region!r}: only 'full' is supported")
        if self.text_only not in ("feed", "skip"):
            raise ValueError(f"data.text_only={self.text_only!r}: choose feed or skip")
        if self.num_workers < 0 or self.prefetch_factor < 1:
            raise ValueError("data.num_workers must be >= 0 and data.prefetch_factor >= 1")
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
    log_with: str = "none"  # tensorboard | wandb | none (accelerate's trackers; used when installed)
    ddp_find_unused: bool = True  # text-only micro-batches leave PLC unused: DDP must allow it

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.log_with not in ("none", "tensorboard", "wandb"):
            raise ValueError(f"train.log_with={self.log_with!r}: choose tensorboard, wandb or none")


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
    region: tuple | None  # one (x0, y0, x1, y1) in blocks, or a tuple of them (several regions)


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


def sample_region(record: dict) -> tuple | str:
    """The context region of an image sample (8x8 blocks), or a rejection reason.

    A record with several regions (``regions_blocks``, recipe ``multi_box: regions``) gives a tuple
    of regions: PLC's context is then their union and its anchors are split over them, as
    ``crop eval --method plc`` does with several regions (``crop.models.llava_plc.context_masks``).
    """
    from crop.contract import regions_of
    from crop.geometry.regions import Region

    if record["kind"] != "region":
        return FULL_REGION
    if record.get("grid_size", 8) != 8:
        return "grid_size_not_8"
    try:
        regions = regions_of(record)
    except (TypeError, ValueError):
        return "bad_region_blocks"
    if not isinstance(regions, list) or not regions:
        return "bad_region_blocks"
    out = []
    for blocks in regions:
        if not isinstance(blocks, (list, tuple)) or len(blocks) != 4:
            return "bad_region_blocks"
        try:
            out.append(tuple(Region(*blocks).check(8)))
        except (TypeError, ValueError):
            return "bad_region_blocks"
    return out[0] if len(out) == 1 else tuple(out)


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


def example_tensors(ex: Example, image_processor, padded: bool, grid_hw: tuple[int, int],
                    tile_px: int | None = None) -> dict:
    """One example's tensors (run in a DataLoader worker: the image processor's work is here)."""
    import torch

    out = {"input_ids": torch.tensor(ex.input_ids), "labels": torch.tensor(ex.labels)}
    if ex.image is not None:
        region = list(ex.region) if isinstance(ex.region[0], tuple) else ex.region  # several: a list
        pixels, masks = image_inputs([ex.image], [region], image_processor, padded, grid_hw, tile_px)
        out["pixel_values"], out["context_mask"] = pixels[0], masks[0]  # (3, S, S), (R*C,)
    return out


def stack(rows: Sequence[dict], pad_id: int) -> dict:
    """Right-padded batch of :func:`example_tensors` rows; images (and their context masks) only
    for the rows that have one, in row order."""
    import torch

    T = max(int(r["input_ids"].numel()) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        n = int(r["input_ids"].numel())
        ids[i, :n], labels[i, :n], attn[i, :n] = r["input_ids"], r["labels"], 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": attn}
    with_image = [r for r in rows if "pixel_values" in r]
    if with_image:
        batch["pixel_values"] = torch.stack([r["pixel_values"] for r in with_image])  # (B_img, 3, S, S)
        masks = [r["context_mask"] for r in with_image]
        if len({m.dtype for m in masks}) > 1:  # several-region rows are label maps: one region = label 1
            masks = [m.long() for m in masks]
        batch["context_mask"] = torch.stack(masks)  # (B_img, R*C)
    return batch


def collate(examples: Sequence[Example], image_processor, padded: bool, grid_hw: tuple[int, int],
            pad_id: int, tile_px: int | None = None) -> dict:
    """Right-padded batch of examples (what the training step sees)."""
    return stack([example_tensors(e, image_processor, padded, grid_hw, tile_px) for e in examples], pad_id)


@dataclass
class SamplePreparer:
    """Stream sample -> ``{"reject": reason}`` or :func:`example_tensors` (picklable: DataLoader workers)."""

    data: DataSection
    tokenizer: Any
    image_processor: Any
    image_token_id: int
    num_image_tokens: int
    grid_hw: tuple[int, int]
    tile_px: int | None

    def __call__(self, sample: dict) -> dict:
        ex = prepare_sample(sample, self.data, self.tokenizer, self.image_token_id, self.num_image_tokens)
        if isinstance(ex, str):
            return {"reject": ex}
        return example_tensors(ex, self.image_processor, padded_for(self.data.image_aspect), self.grid_hw,
                               self.tile_px)


# --------------------------------------------------------------------------------- the loop


SampleSource = Callable[[int, int], Iterable[dict]]  # (epoch, samples to skip) -> samples


def as_source(samples: Sequence[dict] | SampleSource) -> SampleSource:
    """A sequence is replayed every epoch in the same order; a callable is used as is."""
    if callable(samples):
        return samples
    return lambda epoch, skip: islice(samples, skip, None)


def _is_stream(source: Any) -> bool:
    """A :class:`crop.data.stream.ShardStream` (read through DataLoader workers) rather than a sample source."""
    return hasattr(source, "set_epoch") and hasattr(source, "state_dict")


def epoch_rows(source: Any, preparer: SamplePreparer, epoch: int, skip: int, data: DataSection,
               counts: Any) -> Iterable[tuple[int, dict]]:
    """``(position after the sample, prepared row)`` of one epoch from sample ``skip`` on.

    A shard stream is read through :mod:`crop.train.prefetch` (``data.num_workers`` workers decode
    and prepare); a sequence or callable source is prepared in this process.
    """
    if _is_stream(source):
        from crop.train import prefetch

        for pos, row in prefetch.epoch_items(source, preparer, epoch, skip, num_workers=data.num_workers,
                                             prefetch_factor=data.prefetch_factor, pin_memory=data.pin_memory,
                                             counts=counts):
            yield pos, row["item"]
        return
    for pos, sample in enumerate(as_source(source)(epoch, skip), start=skip + 1):
        yield pos, preparer(sample)


def train(cfg: TrainPLCConfig, model, tokenizer, image_processor, samples: Sequence[dict] | SampleSource | Any,
          samples_per_epoch: int | None = None, overwrite: bool = False) -> dict:
    """Run (or resume) training; returns a summary with the final step, loss, counters and ``stopped``.

    One process, or several under ``accelerate launch`` (DDP / FSDP2 / DeepSpeed ZeRO-2, the set-up
    of :mod:`crop.train.accel` shared with train-localizer); ``samples`` is then a ShardStream of
    this rank (:func:`shard_source`). A micro-batch is the next ``train.batch_size`` samples of the
    stream; the ones rejected by :func:`prepare_sample` are counted and left out (every rank takes the
    same number of micro-steps, so DDP never waits for a rank that ran out).

    The output folder follows :mod:`crop.train.run_folder`: a run of the same config resumes from
    its newest checkpoint (log rows after it dropped), another config is refused unless
    ``overwrite``; SIGINT/SIGTERM finish the current optimizer step, save a checkpoint and return
    with ``stopped`` = the signal number."""
    import torch

    from crop.train import accel, common, prefetch

    acc = accel.make_accelerator(precision=_precision(cfg.model), grad_accum=cfg.train.grad_accum,
                                 log_with=cfg.train.log_with, project_dir=cfg.train.output_dir,
                                 find_unused=cfg.train.ddp_find_unused, cpu=_cpu_flag(cfg.model))
    world = acc.num_processes
    out = Path(cfg.train.output_dir)
    ckpt_root = out / "checkpoints"
    # train.max_steps only caps the run (the schedule is planned from the epochs), so raising it
    # continues the same run: operational here, unlike in the localizer trainer.
    mode = accel.decide_on_main(acc, lambda: run_folder.prepare(
        out, dataclasses.asdict(cfg), overwrite=overwrite, config_name="config.yaml",
        has_checkpoint=lambda p: common.latest_checkpoint(p / "checkpoints") is not None,
        operational=run_folder.OPERATIONAL | {"max_steps", "export_final", "num_workers", "prefetch_factor",
                                              "pin_memory", "log_with"}), run_folder.RunFolderError)
    if mode == "resume" and not cfg.train.resume:
        raise run_folder.RunFolderError(f"{out}: holds a run of this config and train.resume is false; "
                                        "use another output folder, or --overwrite to start again")
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        common.dump_config(cfg, out / "config.yaml")
    if samples_per_epoch is None:
        samples_per_epoch = cfg.data.samples_per_epoch or (len(samples) if hasattr(samples, "__len__") else 0)
    if not samples_per_epoch and not cfg.train.max_steps:
        raise ValueError("unknown epoch size: set data.samples_per_epoch or train.max_steps")
    per_step = cfg.train.batch_size * cfg.train.grad_accum  # samples per rank per optimizer step
    # one endless stream over the epochs (as train-localizer): every optimizer step is a full
    # accumulation window, so accelerate's gradient sync and DeepSpeed's micro-step count agree
    steps_per_epoch = samples_per_epoch / per_step if samples_per_epoch else cfg.train.max_steps
    total = math.ceil(steps_per_epoch * cfg.train.epochs)
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)

    model.freeze_vision_tower()
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = common.build_optimizer(named, cfg.optim.lr, cfg.optim.weight_decay, tuple(cfg.optim.betas))
    planned = math.ceil(steps_per_epoch * cfg.train.epochs)  # the schedule ignores max_steps (a cap)
    sched = common.build_scheduler(opt, planned, int(cfg.optim.warmup_ratio * planned), cfg.optim.schedule)
    if acc.state.deepspeed_plugin is not None:
        accel.check_deepspeed(acc, cfg.train.batch_size, cfg.train.grad_accum, cfg.optim.grad_clip)
    prepared, opt = acc.prepare(model, opt)  # device placement + DDP / FSDP / DeepSpeed wrapping
    device = acc.device
    step, start_epoch, skip, counters = 0, 0, 0, Counter()
    loader_counts = prefetch.LoaderCounts()
    if mode == "resume" and (last := common.latest_checkpoint(ckpt_root)) is not None:
        state = common.load_checkpoint(last, model, opt, sched, accelerator=acc, prepared=prepared)
        step, start_epoch, skip = state["step"], state["data"]["epoch"], state["data"]["consumed"]
        if _is_stream(samples):
            prefetch.check_resume_workers(state["data"].get("num_workers"), cfg.data.num_workers, skip)
        counters.update(state.get("counters", {}))
        loader_counts = prefetch.LoaderCounts(state.get("loader", {}))
        if acc.is_main_process:
            run_folder.trim_log(out / "log.jsonl", step)
        log.info("resumed from %s (step %d, epoch %d, %d samples in)", last, step, start_epoch, skip)
    if acc.log_with:
        acc.init_trackers("crop-plc", config=accel.tracker_config(dataclasses.asdict(cfg)))

    preparer = SamplePreparer(cfg.data, tokenizer, image_processor, model.image_token_id, model.num_image_tokens,
                              model.grid_hw, model.tile_px)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stream_counters = getattr(as_source(samples) if not _is_stream(samples) else samples, "counters", None)
    pixel_dtype = next(model.llava.parameters()).dtype
    progress = common.ProgressLog(total, out / "log.jsonl" if acc.is_main_process else None,
                                  cfg.train.log_every, step, show=acc.is_main_process)
    is_stream = _is_stream(samples)
    read = [state.get("read", 0) if is_stream and step else 0]  # samples read, all ranks (loader health)
    last_loss, epoch, consumed = float("nan"), start_epoch, skip
    fallback: dict | None = None  # a usable row of this rank: stands in (loss x 0) for an all-rejected micro-batch

    def loader_now() -> dict[str, int]:
        mine = loader_counts.counts if is_stream else (dict(stream_counters.counts) if stream_counters else {})
        return accel.summed_counts(mine, acc)

    def save() -> None:
        common.save_checkpoint(ckpt_root, step, model, opt, sched,
                               {"epoch": epoch, "consumed": consumed, "num_workers": cfg.data.num_workers},
                               cfg, {"counters": dict(counters), "loader": loader_counts.counts, "read": read[0]},
                               keep=cfg.train.keep_checkpoints, accelerator=acc, prepared=prepared)

    def rows_from(epoch: int, skip: int):
        """``(epoch, position, row)`` forever from sample ``skip`` of ``epoch``."""
        while True:
            n = 0
            for pos, row in epoch_rows(samples, preparer, epoch, skip, cfg.data, loader_counts):
                n += 1
                yield epoch, pos, row
            if not n and not skip:
                raise ValueError(f"epoch {epoch} of the training data holds no samples")
            epoch, skip = epoch + 1, 0

    stop = [False]
    rows = rows_from(start_epoch, skip)
    signals = run_folder.StopSignals().__enter__()
    try:
        while step < total and not stop[0]:
            losses, n_samples, micro = [], 0, 0
            while micro < cfg.train.grad_accum:
                batch_rows: list[dict] = []
                for _ in range(cfg.train.batch_size):
                    epoch, consumed, row = next(rows)
                    if "reject" in row:
                        counters[row["reject"]] += 1
                    else:
                        batch_rows.append(row)
                scale = 1.0
                if not batch_rows:
                    if fallback is None:
                        if world == 1:
                            continue  # nothing to keep in step with: read the next samples
                        raise RuntimeError(f"rank {acc.process_index}: its first micro-batch holds no usable "
                                           "sample; nothing to stand in for it")
                    batch_rows, scale = [fallback], 0.0  # keeps this rank in step with the others
                fallback = batch_rows[0]
                batch = {k: v.to(device, non_blocking=True) for k, v in stack(batch_rows, pad_id).items()}
                if "pixel_values" in batch:
                    batch["pixel_values"] = batch["pixel_values"].to(pixel_dtype)
                with acc.accumulate(prepared):  # prepare() wrapped forward in autocast
                    loss = prepared(**batch).loss * scale
                    acc.backward(loss)  # divides by grad_accum
                    if acc.sync_gradients and cfg.optim.grad_clip > 0:  # FSDP/DeepSpeed: their own clipping
                        acc.clip_grad_norm_(prepared.parameters(), cfg.optim.grad_clip)
                    opt.step()  # a no-op until the accumulation window is full
                    opt.zero_grad(set_to_none=True)
                if scale:
                    losses.append(float(loss.detach()))
                    n_samples += len(batch_rows)
                micro += 1
            sched.step()
            step += 1
            read[0] += per_step * world
            mine = sum(losses) / len(losses) if losses else float("nan")
            last_loss = acc.reduce(torch.tensor(mine, device=device), "mean").item() if world > 1 else mine
            loader = loader_now()
            row_log = progress.step(step, last_loss, sched.get_last_lr()[0], n_samples * world,
                                    extra={"epoch": epoch, "loader": loader})
            if acc.log_with:
                acc.log(accel.tracker_values(row_log), step=step)
            try:
                loader_health.check(loader, read[0], cfg.data.max_failure_fraction,
                                    loader_counts.first or getattr(stream_counters, "first", None) or None)
            except loader_health.LoaderFailureError:
                save()
                raise
            stop[0] = accel.stop_requested(signals, acc)
            if step % cfg.train.save_every == 0 or step == total or stop[0]:
                save()
    finally:
        signals.__exit__()
        if acc.log_with:
            acc.end_training()
    progress.close()
    latest = common.latest_checkpoint(ckpt_root)
    if step and (latest is None or latest.name != f"step-{step:06d}"):
        save()
    if counters:
        log.info("skipped samples by reason: %s", dict(counters))
    if stop[0] and step < total:
        acc.wait_for_everyone()
        return {"step": step, "loss": last_loss, "counters": dict(counters), "rank": acc.process_index,
                "stopped": int(signals.requested or _signal_number("SIGTERM")),
                "checkpoint": str(common.latest_checkpoint(ckpt_root))}
    if cfg.train.export_final:
        export_final(model, tokenizer, image_processor, out / "final", accelerator=acc, prepared=prepared)
    summary = {"step": step, "loss": last_loss, "counters": dict(counters), "stopped": None,
               "rank": acc.process_index, "loader": loader_now()}
    acc.wait_for_everyone()  # every rank leaves train() together (the caller may tear the group down)
    return summary


def _cpu_flag(m: ModelSection) -> bool | None:
    """accelerate's ``cpu``: forced by ``model.device: cpu``, else accelerate's choice (CUDA when present)."""
    return True if m.device == "cpu" else None


def _signal_number(name: str) -> int:
    import signal

    return int(getattr(signal, name))


def _precision(m: ModelSection) -> str:
    """``model.autocast`` as the accelerate precision: bf16 autocast on a CUDA device, else fp32."""
    import torch

    if m.autocast == "none" or m.device == "cpu":
        return "fp32"
    if m.autocast != "bfloat16":
        raise ValueError(f"model.autocast={m.autocast!r}: choose bfloat16 or none")
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def export_final(model, tokenizer, image_processor, final: Path, accelerator: Any = None, prepared: Any = None) -> None:
    """``final/llava``: what ``crop eval`` loads with ``model.path`` (weights, and a full
    ``LlavaProcessor``: tokenizer, the image processor trained with, ``processor_config.json``);
    ``final/plc.safetensors``: ``model.plc_weights``.

    The processor config carries the vision patch size and feature-selection strategy; without it
    ``AutoProcessor`` loads a ``LlavaProcessor`` whose ``patch_size`` is None and cannot encode an
    image prompt. Under several processes every rank calls this (gathering FSDP shards is a
    collective) and the main process writes the full weights.
    """
    from transformers import LlavaProcessor

    from crop.train import accel

    if accelerator is not None:
        weights = accel.full_weights(accelerator, prepared, model)
        if not accelerator.is_main_process:
            return
    else:
        weights = model.state_dict()
    llava_sd = {k[len("llava."):]: v for k, v in weights.items() if k.startswith("llava.")}
    plc_sd = {k[len("plc."):]: v for k, v in weights.items() if k.startswith("plc.")}
    cfg = model.llava.config
    final.mkdir(parents=True, exist_ok=True)
    model.save_plc(final / "plc.safetensors", state=plc_sd)
    model.llava.save_pretrained(final / "llava", state_dict=llava_sd)
    # num_additional_image_tokens=1: CLIP's CLS token, dropped again by the "default" strategy
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=cfg.vision_config.patch_size,
                               vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                               num_additional_image_tokens=1)
    processor.save_pretrained(final / "llava")


# --------------------------------------------------------------------------------- building + CLI


def build_model(cfg: TrainPLCConfig, device: Any = None):
    """(LlavaPLC, tokenizer, image processor) from the model section; ``tiny`` downloads nothing.

    ``device``: where this process trains (``accelerator.device`` under ``accelerate launch``, so
    eight ranks do not all load the weights onto GPU 0 first); default from ``model.device``."""
    import torch

    from crop.models.llava_plc import LlavaPLC, byte_tokenizer, tiny_image_processor, tiny_llava
    from crop.models.plc import PLC

    m = cfg.model
    if device is None:
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


def shard_source(shards: Sequence[str], cfg: DataSection, rank: int | None = None,
                 world_size: int | None = None) -> tuple[Any, int]:
    """``(ShardStream of this rank, samples per epoch of this rank)``: images decoded in the stream
    (in DataLoader workers when ``data.num_workers`` > 0); rank and world default to
    ``torch.distributed`` (set up by ``accelerate launch``), else one process."""
    from crop.data.stream import ShardStream, StreamConfig

    stream = ShardStream(list(shards), StreamConfig(seed=cfg.seed, shuffle=cfg.shuffle, batch_size=1,
                                                    shuffle_buffer=cfg.shuffle_buffer, decode=True, uneven="pad",
                                                    rank=rank, world_size=world_size))
    return stream, len(stream)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from crop.train.run_args import add_run_arguments

    add_run_arguments(parser, "YAML file (configs/plc-*.yaml)", "train.max_steps=10")
    parser.add_argument("--shards", nargs="*", default=None, help="overrides data.shards")


def run(args: argparse.Namespace) -> int:
    from crop.train import accel
    from crop.train.run_args import config_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = config_from_args(TrainPLCConfig, args)
    if args.shards:
        cfg.data.shards = list(args.shards)
    if not cfg.data.shards:
        raise SystemExit("train-plc: no shards (set data.shards or pass --shards)")
    try:
        acc_probe = accel.make_accelerator(precision=_precision(cfg.model), grad_accum=cfg.train.grad_accum,
                                           cpu=_cpu_flag(cfg.model))  # starts the process group when launched
        model, tokenizer, processor = build_model(cfg, acc_probe.device)
        source, n = shard_source(cfg.data.shards, cfg.data, acc_probe.process_index, acc_probe.num_processes)
        summary = train(cfg, model, tokenizer, processor, source, cfg.data.samples_per_epoch or n,
                        overwrite=args.overwrite)
    finally:
        accel.leave_process_group()
    if summary["stopped"] is not None:
        if summary["rank"] == 0:
            print(run_folder.stopped_message(summary["stopped"], summary["step"], summary["checkpoint"]),
                  file=sys.stderr)
        return 128 + summary["stopped"]
    if summary["rank"] == 0:
        log.info("done: %s", summary)
    return 0
