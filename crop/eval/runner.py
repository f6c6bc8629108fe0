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


def run_benchmark(engine: Any, cfg: EvalConfig, bench: Any, out: Path, ahead_of_time: bool = False) -> dict[str, Any]:
    """Answer one benchmark (resuming), then score it; returns its summary entry.

    ``ahead_of_time``: the localizer runs one question ahead (:meth:`Engine.ahead_regions`)."""
    from tqdm import tqdm

    from crop.eval import efficiency
    from crop.eval.prompts import load_questions

    bdir = out / bench.name
    bdir.mkdir(parents=True, exist_ok=True)
    answers_path, eff_path = bdir / "answers.jsonl", bdir / "efficiency.jsonl"
    items = load_questions(bench.name, bench.question_file)
    if bench.limit is not None:
        items = items[: bench.limit]
    done = done_keys(answers_path)
    todo = [it for it in items if (str(it.question_id), it.prompt) not in done]
    efficiency.reset_peak_memory(engine.device)
    stream: Any = todo
    if ahead_of_time:
        engine.budget_scale(bench)  # an averaged budget's calibration sees every region first, before the worker starts
        stream = engine.ahead_regions(todo, bench)
    with open(answers_path, "a", encoding="utf-8") as fa, open(eff_path, "a", encoding="utf-8") as fe:
        for item in tqdm(stream, desc=f"{cfg.label}/{bench.name}", unit="q", initial=len(items) - len(todo),
                         total=len(items)):
            text, info = engine.answer(item, bench)
            fa.write(json.dumps({"question_id": item.question_id, "prompt": item.prompt, "text": text,
                                 "answer_id": answer_id(cfg.label, item.key), "model_id": cfg.model.name,
                                 "metadata": {"key": item.key, "method": cfg.method.name}}) + "\n")
            fa.flush()
            fe.write(json.dumps({"key": item.key, **info}) + "\n")
            fe.flush()
    eff_rows = read_jsonl(eff_path) if eff_path.exists() else []
    eff = efficiency.summarize(eff_rows, efficiency.peak_memory_bytes(engine.device), str(engine.device))
    eff["answered_this_session"] = len(todo)
    eff["ahead_of_time"] = bool(ahead_of_time)
    (bdir / "efficiency.json").write_text(json.dumps(eff, indent=2), encoding="utf-8")
    entry: dict[str, Any] = {"answers": str(answers_path), "efficiency": eff, "n_questions": len(items)}
    if not cfg.score:
        return entry
    entry.update(score_benchmark(bench, answers_path, bdir))
    return entry


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

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    summary_path = out / SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({"label": cfg.label, "model": cfg.model.name, "family": cfg.model.family,
                    "method": cfg.method.name, "budget": cfg.method.budget, "budget_mode": cfg.method.budget_mode,
                    "layer": cfg.method.layer,
                    "section": cfg.section})
    summary.setdefault("benchmarks", {})
    from crop.eval.engine import Engine

    engine = Engine.load(cfg)
    for bench in cfg.benchmarks:
        summary["benchmarks"][bench.name] = run_benchmark(engine, cfg, bench, out, ahead_of_time)
        summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def run(args: argparse.Namespace) -> int:
    cfg = apply_overrides(load_config(args.config), args)
    if args.no_score:
        cfg = dataclasses.replace(cfg, score=False)
    print(f"crop eval: {cfg.label} ({cfg.model.name}, method {cfg.method.name}) on "
          f"{', '.join(b.name for b in cfg.benchmarks)} -> {cfg.output_dir}", file=sys.stderr)
    summary = run_eval(cfg, ahead_of_time=getattr(args, "ahead_of_time", False))
    for name, entry in summary["benchmarks"].items():
        shown = f"{entry['score']:.2f}" if "score" in entry else entry.get("score_skipped", "not scored")
        if "score" in entry and not entry.get("complete"):
            shown += f" (incomplete: {entry.get('coverage')})"
        print(f"{summary['label']}\t{name}\t{shown}")
    print(f"crop eval: answers, scores and summary.json in {cfg.output_dir}", file=sys.stderr)
    return 0
