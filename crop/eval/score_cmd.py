"""``crop score``: score one LLaVA-format answer file with a benchmark's official rules.

    crop score textvqa answers.jsonl --annotation-file TextVQA_0.5.1_val.json
    crop score gqa answers.jsonl --annotation-file testdev_balanced_questions.json --strict
    crop score mme answers.jsonl --mme-root MME_Benchmark_release_version
    crop score pope answers.jsonl --question-file llava_pope_test.jsonl --annotation-dir coco
    crop score scienceqa answers.jsonl --base-dir scienceqa
    crop score vqav2 answers.jsonl --annotation-file v2_mscoco_val2014_annotations.json
    crop score vqav2 answers.jsonl --test-split-file llava_vqav2_mscoco_test2015.jsonl \\
        --submission upload.json          # test-dev: the EvalAI server scores the upload

Prints the result JSON (``score`` is the paper's number) and writes it with ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crop.eval.scorers import SCORERS, BenchmarkFiles, score_answer_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=sorted(SCORERS))
    parser.add_argument("answers", help="answer file (JSONL: question_id, prompt, text, ...)")
    for flag in ("question-file", "annotation-file", "annotation-dir", "base-dir", "mme-root"):
        parser.add_argument(f"--{flag}")
    parser.add_argument("--split", default="test", help="ScienceQA split of pid_splits.json")
    parser.add_argument("--strict", action="store_true", help="GQA: fail on missing predictions, as the original")
    parser.add_argument("--pope-metric", choices=("f1", "accuracy"), default="f1", help="POPE headline metric")
    parser.add_argument("--test-split-file", help="VQAv2: full test question file for --submission")
    parser.add_argument("--submission", help="VQAv2: write the EvalAI upload JSON here")
    parser.add_argument("--out", help="write the result JSON here")


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "vqav2" and args.submission:
        from crop.eval.scorers import vqav2
        from crop.eval.scorers.common import read_jsonl

        if not args.test_split_file:
            raise SystemExit("--submission needs --test-split-file (llava_vqav2_mscoco_test2015.jsonl)")
        rows = vqav2.submission(read_jsonl(args.answers), read_jsonl(args.test_split_file))
        Path(args.submission).write_text(json.dumps(rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {args.submission}")
        if not args.annotation_file:
            return 0
    files = BenchmarkFiles(question_file=args.question_file, annotation_file=args.annotation_file,
                           annotation_dir=args.annotation_dir, base_dir=args.base_dir, mme_root=args.mme_root,
                           split=args.split)
    options = {"gqa": {"strict": args.strict}, "pope": {"headline_metric": args.pope_metric}}.get(args.benchmark, {})
    result = score_answer_file(args.benchmark, args.answers, files, **options)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0
