"""The command-line flags every YAML-configured trainer shares (torch-free: ``crop <cmd> --help`` stays light)."""

from __future__ import annotations

import argparse


def add_run_arguments(parser: argparse.ArgumentParser, config_help: str, example_override: str) -> None:
    """``--config``, ``--output-dir``, ``--overwrite`` (crop.train.run_folder's rule), ``--set``."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--output-dir", default=None, help="overrides train.output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run of another config in the output folder instead of refusing")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config field, e.g. --set {example_override} (repeatable)")


def config_from_args(cls, args: argparse.Namespace):
    """``cls`` from ``--config`` with ``--set`` overrides and ``--output-dir`` applied."""
    from crop.train.common import load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    return load_config(cls, args.config, overrides)
