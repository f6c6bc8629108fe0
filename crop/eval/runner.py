"""``crop eval``: model x method x budget over benchmarks -> LLaVA answer files, scores, efficiency.

    crop eval --config configs/eval-llava15-7b-ilp64.yaml [--benchmarks gqa pope] [--limit 100]

Run folder (``output_dir``)::

    config.yaml               resolved configuration (a resume with a different one is refused)
    summary.json              label, model, method, budget, scores and efficiency per benchmark
    <benchmark>/answers.jsonl LLaVA-1.5 answer-file rows, appended as they are produced
    <benchmark>/efficiency.jsonl  per-question rows: latency per phase (image encoding, prefill
                              forward, decode, KV cache), KV bytes, localizer time, visual tokens
    <benchmark>/scores.json, efficiency.json (and submission.json for VQAv2)

``--ahead-of-time``: an in-process localizer (``method.localizer``) runs one question ahead of
the VLM on a worker thread (paper Sec. 4.4, :meth:`crop.eval.engine.Engine.ahead_regions`);
answers are the same, the rows add how long the VLM waited for each region.

Resumable: questions whose ``(question_id, prompt)`` is already in ``answers.jsonl`` are skipped.

``--batch-size N`` (``batch_size``): N questions per ``generate`` (:meth:`Engine.answer_batch`),
answers equal to batch 1. Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1) each
rank answers every world-th question into its own part file and rank 0 merges and scores
(:func:`merge_parts`); see docs/eval.md.

Modules: :mod:`crop.eval.config` (typed YAML configuration), :mod:`crop.eval.models` (loading,
prompts and encoding per model family), :mod:`crop.eval.methods` (method adapters over
``crop.pruning`` / ``crop.models``), :mod:`crop.eval.engine` (one question -> answer + timing);
this module holds the resumable loop, scoring and the CLI shell.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from crop.eval.config import (  # noqa: F401  (re-exported: the runner's public names)
    FAMILIES, METHOD_NAMES, REGION_METHODS, BenchmarkConfig, ConfigError, EvalConfig, MethodConfig,
    ModelConfig, apply_overrides, load_config, parse_budget)
from crop.eval.scorers import BenchmarkFiles, score_answer_file
from crop.eval.scorers.common import COVERAGE_FIELDS, read_jsonl

SUMMARY = "summary.json"
__all__ = ["FAMILIES", "METHOD_NAMES", "REGION_METHODS", "BenchmarkConfig", "ConfigError", "EvalConfig",
           "MethodConfig", "ModelConfig", "add_arguments", "apply_overrides", "load_config", "run",
           "run_benchmark", "run_eval", "score_benchmark"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="eval YAML (see configs/eval-*.yaml)")
    parser.add_argument("--benchmarks", nargs="+", help="run only these benchmarks of the config")
    parser.add_argument("--limit", type=int, help="answer at most this many questions per benchmark")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--method", help="override method.name")
    parser.add_argument("--budget", type=parse_budget,
                        help="override method.budget: visual tokens kept (R), or a share such as 0.5 / 33.3%%")
    parser.add_argument("--layer", type=int, help="override method.layer (pruning layer K)")
    parser.add_argument("--budget-mode", choices=("rect", "average"),
                        help="override method.budget_mode: rect (~R per image) or average (mean R over the run)")
    parser.add_argument("--no-score", action="store_true", help="write answers only")
    parser.add_argument("--batch-size", type=int,
                        help="override batch_size: questions answered per generate call (default 1)")
    parser.add_argument("--ahead-of-time", action="store_true",
                        help="run the in-process localizer (method.localizer) one question ahead of the VLM "
                             "on a worker thread; rows add localizer_wait_s (paper Sec. 4.4)")


# ============================================================================ loop and CLI
def answer_id(label: str, key: str) -> str:
    return hashlib.sha1(f"{label}|{key}".encode()).hexdigest()[:22]


def done_keys(path: Path) -> set[tuple[str, str]]:
    """(question_id, prompt) pairs already answered (a torn last line is dropped and rewritten)."""
    if not path.exists():
        return set()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    good = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        good.append((line if line.endswith("\n") else line + "\n", row))
    path.write_text("".join(l for l, _ in good), encoding="utf-8")
    return {(str(r["question_id"]), r.get("prompt", "")) for _, r in good}


def _check_resume(out: Path, cfg: EvalConfig) -> None:
    saved = out / "config.yaml"
    if saved.exists():
        import yaml

        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
        new = cfg.to_dict()
        for part in ("model", "method", "generation"):
            if old.get(part) != new.get(part):
                raise SystemExit(f"{out} holds a run with a different `{part}` configuration "
                                 f"({old.get(part)} != {new.get(part)}); use another output_dir")


def _batches(stream: Any, size: int) -> Any:
    """Consecutive lists of up to ``size`` items of ``stream`` (an iterator is consumed lazily,
    so ``--ahead-of-time``'s localizer keeps running one question ahead)."""
    batch: list[Any] = []
    for item in stream:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_benchmark(engine: Any, cfg: EvalConfig, bench: Any, out: Path, ahead_of_time: bool = False,
                  shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Answer one benchmark (resuming), then score it; returns its summary entry.

    ``ahead_of_time``: the localizer runs one question ahead (:meth:`Engine.ahead_regions`).
    ``cfg.batch_size`` > 1: questions go ``batch_size`` at a time (:meth:`Engine.answer_batch`).
    ``shard = (rank, world)`` with world > 1: this process answers questions ``i % world == rank``
    into ``answers.rank<r>.jsonl`` / ``efficiency.rank<r>.jsonl``; after a barrier rank 0 merges
    them into ``answers.jsonl`` in question order (:func:`merge_parts`) and scores once."""
    from tqdm import tqdm

    from crop.eval import efficiency
    from crop.eval.prompts import load_questions

    rank, world = shard
    bdir = out / bench.name
    bdir.mkdir(parents=True, exist_ok=True)
    answers_path, eff_path = bdir / "answers.jsonl", bdir / "efficiency.jsonl"
    items = load_questions(bench.name, bench.question_file)
    if bench.limit is not None:
        items = items[: bench.limit]
    mine = items if world == 1 else [it for i, it in enumerate(items) if i % world == rank]
    if world > 1:  # this rank's part files; answers.jsonl (merged earlier) is only read here
        done = answered_keys(answers_path)
        answers_path, eff_path = part_paths(bdir, rank)
        done |= done_keys(answers_path)
    else:
        done = done_keys(answers_path)
    todo = [it for it in mine if (str(it.question_id), it.prompt) not in done]
    efficiency.reset_peak_memory(engine.device)
    stream: Any = todo
    if ahead_of_time:
        engine.budget_scale(bench)  # an averaged budget's calibration sees every region first, before the worker starts
        stream = engine.ahead_regions(todo, bench)
    with open(answers_path, "a", encoding="utf-8") as fa, open(eff_path, "a", encoding="utf-8") as fe, \
            tqdm(desc=f"{cfg.label}/{bench.name}" + (f" [rank {rank}/{world}]" if world > 1 else ""), unit="q",
                 initial=len(mine) - len(todo), total=len(mine)) as bar:
        for batch in _batches(stream, cfg.batch_size):
            results = engine.answer_batch(batch, bench) if cfg.batch_size > 1 else [engine.answer(batch[0], bench)]
            for item, (text, info) in zip(batch, results):
                fa.write(json.dumps({"question_id": item.question_id, "prompt": item.prompt, "text": text,
                                     "answer_id": answer_id(cfg.label, item.key), "model_id": cfg.model.name,
                                     "metadata": {"key": item.key, "method": cfg.method.name}}) + "\n")
                fa.flush()
                fe.write(json.dumps({"key": item.key, **info}) + "\n")
                fe.flush()
            bar.update(len(batch))
    answered_here = len(todo)
    if world > 1:
        _barrier()
        if rank != 0:
            return {"answers": str(answers_path), "n_questions": len(items), "answered_this_session": answered_here}
        answers_path, eff_path = bdir / "answers.jsonl", bdir / "efficiency.jsonl"
        answered_here = merge_parts(items, bdir, world)  # every rank's new rows (and any left by a crash)
    eff_rows = read_jsonl(eff_path) if eff_path.exists() else []
    eff = efficiency.summarize(eff_rows, efficiency.peak_memory_bytes(engine.device), str(engine.device))
    eff["answered_this_session"] = answered_here
    eff["ahead_of_time"] = bool(ahead_of_time)
    eff["batch_size"] = cfg.batch_size
    eff["processes"] = world
    (bdir / "efficiency.json").write_text(json.dumps(eff, indent=2), encoding="utf-8")
    entry: dict[str, Any] = {"answers": str(answers_path), "efficiency": eff, "n_questions": len(items)}
    if not cfg.score:
        return entry
    entry.update(score_benchmark(bench, answers_path, bdir))
    return entry


# ============================================================================ processes (accelerate / torchrun)
def shard_of_env() -> tuple[int, int]:
    """(rank, world size) as ``accelerate launch`` and ``torchrun`` export them (``RANK`` /
    ``WORLD_SIZE``); (0, 1) in a plain process."""
    import os

    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def part_paths(bdir: Path, rank: int) -> tuple[Path, Path]:
    return bdir / f"answers.rank{rank}.jsonl", bdir / f"efficiency.rank{rank}.jsonl"


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file up to a torn last line (read only; :func:`done_keys` repairs)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def answered_keys(path: Path) -> set[tuple[str, str]]:
    """(question_id, prompt) pairs in an answer file, without rewriting it (other ranks read it)."""
    return {(str(r["question_id"]), r.get("prompt", "")) for r in _read_rows(path)}


def merge_parts(items: list[Any], bdir: Path, world: int) -> int:
    """Rank 0: append the rank part files' rows to ``answers.jsonl`` / ``efficiency.jsonl`` in
    question order (rows already there are kept, so an interrupted merge or a rerun is resumed),
    then delete the parts. Returns the rows merged."""
    answers_path, eff_path = bdir / "answers.jsonl", bdir / "efficiency.jsonl"
    have = done_keys(answers_path)
    parts = [part_paths(bdir, r) for r in range(world)]
    answers = {(str(r["question_id"]), r.get("prompt", "")): r for a, _ in parts for r in _read_rows(a)}
    effs = {r["key"]: r for _, e in parts for r in _read_rows(e)}
    merged = 0
    with open(answers_path, "a", encoding="utf-8") as fa, open(eff_path, "a", encoding="utf-8") as fe:
        for item in items:
            key = (str(item.question_id), item.prompt)
            if key in have or key not in answers:
                continue
            fa.write(json.dumps(answers[key]) + "\n")
            if item.key in effs:
                fe.write(json.dumps(effs[item.key]) + "\n")
            have.add(key)
            merged += 1
    for a, e in parts:
        a.unlink(missing_ok=True)
        e.unlink(missing_ok=True)
    return merged


def score_benchmark(bench: Any, answers_path: Path, bdir: Path) -> dict[str, Any]:
    """Score one answer file; the summary entry gets ``score``, ``complete`` and ``coverage``.

    ``complete`` is true only when the scorer says so explicitly (every question of the reference
    answered once, see ``crop.eval.scorers.common.coverage``): a result without the field is
    never taken as complete, so a partial run cannot pass for a full one in ``crop table``.
    """
    files = BenchmarkFiles(question_file=bench.question_file, annotation_file=bench.annotation_file,
                           annotation_dir=bench.annotation_dir, base_dir=bench.base_dir,
                           mme_root=bench.mme_root, split=bench.split)
    out: dict[str, Any] = {}
    if bench.name == "vqav2" and bench.test_split_file:
        from crop.eval.scorers import vqav2

        answers = read_jsonl(answers_path)
        rows = vqav2.submission(answers, read_jsonl(bench.test_split_file))
        (bdir / "submission.json").write_text(json.dumps(rows), encoding="utf-8")
        out["submission"] = str(bdir / "submission.json")
        # against the questions asked (test-dev), not the full test split the upload covers
        out["submission_coverage"] = vqav2.answer_coverage(answers, read_jsonl(bench.question_file))
    try:
        result = score_answer_file(bench.name, str(answers_path), files, **bench.score_options)
    except (ValueError, FileNotFoundError) as err:
        if "scoring needs" not in str(err):
            raise
        out["score_skipped"] = str(err)
        return out
    (bdir / "scores.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    out["score"] = result["score"]
    out["complete"] = result.get("complete") is True
    out["coverage"] = {f: result.get(f) for f in COVERAGE_FIELDS if f != "complete"}
    return out


def run_eval(cfg: EvalConfig, ahead_of_time: bool = False) -> dict[str, Any]:
    """Run every benchmark of ``cfg``; writes and returns the run summary.

    ``ahead_of_time`` needs an in-process localizer (``method.localizer``): it changes when the
    localizer runs, not what is answered, so it is a run option, not part of the configuration."""
    if ahead_of_time and (not cfg.method.localizer or cfg.method.regions or cfg.method.name not in REGION_METHODS):
        raise SystemExit("--ahead-of-time needs an in-process localizer (method.localizer); "
                         f"method {cfg.method.name!r} has none (regions from a file need no localizer run)")
    import yaml

    rank, world = shard = shard_of_env()
    own_group = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():  # gloo: only barriers cross processes (CPU or GPU runs alike)
            dist.init_process_group(backend="gloo")
            own_group = True
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg)
    if world > 1:
        _barrier()  # every rank has read the old config.yaml before rank 0 rewrites it
    if rank == 0:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    summary_path = out / SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({"label": cfg.label, "model": cfg.model.name, "family": cfg.model.family,
                    "method": cfg.method.name, "budget": cfg.method.budget, "budget_mode": cfg.method.budget_mode,
                    "layer": cfg.method.layer,
                    "section": cfg.section})
    summary.setdefault("benchmarks", {})
    from crop.eval.engine import Engine

    engine = Engine.load(cfg, rank=rank if world > 1 else None)
    for bench in cfg.benchmarks:
        summary["benchmarks"][bench.name] = run_benchmark(engine, cfg, bench, out, ahead_of_time, shard)
        if rank == 0:
            summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if world > 1:
        _barrier()  # no rank leaves (and no launcher tears the group down) before rank 0 has scored
        if own_group:
            dist.destroy_process_group()
    return summary


def run(args: argparse.Namespace) -> int:
    cfg = apply_overrides(load_config(args.config), args)
    if args.no_score:
        cfg = dataclasses.replace(cfg, score=False)
    if getattr(args, "batch_size", None) is not None:
        cfg = dataclasses.replace(cfg, batch_size=args.batch_size).validated()
    print(f"crop eval: {cfg.label} ({cfg.model.name}, method {cfg.method.name}) on "
          f"{', '.join(b.name for b in cfg.benchmarks)} -> {cfg.output_dir}", file=sys.stderr)
    summary = run_eval(cfg, ahead_of_time=getattr(args, "ahead_of_time", False))
    if shard_of_env()[0] != 0:
        return 0  # rank 0 merged, scored and prints
    for name, entry in summary["benchmarks"].items():
        shown = f"{entry['score']:.2f}" if "score" in entry else entry.get("score_skipped", "not scored")
        if "score" in entry and not entry.get("complete"):
            shown += f" (incomplete: {entry.get('coverage')})"
        print(f"{summary['label']}\t{name}\t{shown}")
    print(f"crop eval: answers, scores and summary.json in {cfg.output_dir}", file=sys.stderr)
    return 0
