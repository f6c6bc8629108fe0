"""``crop score``: score one LLaVA-format answer file with a benchmark's official rules.

    crop score textvqa answers.jsonl --annotation-file TextVQA_0.5.1_val.json
    crop score gqa answers.jsonl --annotation-file testdev_balanced_questions.json --strict
    crop score mme answers.jsonl --mme-root MME_Benchmark_release_version
    crop score pope answers.jsonl --question-file llava_pope_test.jsonl --annotation-dir coco
    crop score scienceqa answers.jsonl --base-dir scienceqa
    crop score vqav2 answers.jsonl --annotation-file v2_mscoco_val2014_annotations.json [--question-file q.jsonl]
    crop score vqav2 answers.jsonl --test-split-file llava_vqav2_mscoco_test2015.jsonl \\
        --question-file llava_vqav2_mscoco_test-dev2015.jsonl \\
        --submission upload.json          # test-dev: the EvalAI server scores the upload

Prints the result JSON (``score`` is the paper's number; ``n_questions``, ``n_answered``,
``missing``, ``duplicates`` and ``complete`` beside it) and writes it with ``--out``. An
incomplete result also gets a one-line note on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crop.eval.scorers import SCORERS, BenchmarkFiles, score_answer_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=sorted(SCORERS), help="which official scoring rules to apply")
    parser.add_argument("answers", help="answer file (JSONL: question_id, prompt, text, ...)")
    helps = {"question-file": "LLaVA question file: POPE's categories; VQAv2: the evaluated questions "
                              "(default: every annotated one) and the --submission coverage",
             "annotation-file": "TextVQA_0.5.1_val.json, GQA testdev_balanced_questions.json or VQAv2 annotations",
             "annotation-dir": "POPE: the folder of coco_pope_{random,popular,adversarial}.json",
             "base-dir": "ScienceQA: the folder holding problems.json and pid_splits.json",
             "mme-root": "MME: MME_Benchmark_release_version (the per-subtask ground-truth files)"}
    for flag in ("question-file", "annotation-file", "annotation-dir", "base-dir", "mme-root"):
        parser.add_argument(f"--{flag}", help=helps.get(flag))
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
        answers = read_jsonl(args.answers)
        rows = vqav2.submission(answers, read_jsonl(args.test_split_file))
        Path(args.submission).write_text(json.dumps(rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {args.submission} (questions without an answer get \"\", "
              "scored 0 by EvalAI; a repeated question_id keeps its last answer)")
        if args.question_file:
            cov = vqav2.answer_coverage(answers, read_jsonl(args.question_file))
            print(json.dumps({"submission_coverage": cov}))
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
    if result.get("complete") is not True:
        print(f"note: {args.benchmark} result is incomplete ({result.get('n_answered')} of "
              f"{result.get('n_questions')} questions answered, {result.get('duplicates')} duplicate answers)",
              file=sys.stderr)
    return 0
