"""``crop`` command line: one sub-command per module, imported only when it is run.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Adding a command
means adding one line to ``COMMANDS``; ``crop --help`` stays fast because nothing heavy is
imported until a command runs.

Errors. A user's mistake (a missing or existing file, a bad config value, an unknown field) reaches
the user as one line, ``crop NAME: error: <message>``, with exit status 2 (argparse's status for
usage errors); ``--debug`` anywhere on the command line shows the traceback instead. The commands
signal such mistakes with the ordinary exception types listed in ``USER_ERRORS``; anything else is
a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("crop.data.validate_cmd", "validate a built dataset folder against schemas/"),
    "show": ("crop.viz.show", "render shard samples as PNG with the 8x8 grid and region"),
    "report": ("crop.viz.report", "write a static HTML report of a built dataset"),
    "card": ("crop.data.card", "(re)write the dataset card README.md beside the shards"),
    "publish": ("crop.data.publish", "upload shards, card and manifest to a Hub dataset repo"),
    "train-localizer": ("crop.train.localizer", "fine-tune the Qwen2-VL localizer on the shards"),
    "predict-regions": ("crop.models.localizer_cmd", "predict regions with a trained localizer"),
    "eval-localizer": ("crop.eval.localization", "area recall / IoU of a localizer on shards"),
    "train-plc": ("crop.train.plc", "co-fine-tune LLaVA-1.5 with the PLC module"),
    "train-projector": ("crop.train.projector_ft", "fine-tune LLaVA-1.5's projector on VisionZip-pruned tokens"),
    "eval": ("crop.eval.runner", "run a model x method x budget over a benchmark and score it"),
    "score": ("crop.eval.score_cmd", "score an answer file with a benchmark's official rules"),
    "table": ("crop.eval.tables", "assemble a Table-2-style results table from several runs"),
}


# Exception types the commands raise for a user's mistake (message names the file, field or flag).
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, IsADirectoryError,
                                                NotADirectoryError, PermissionError, ValueError, KeyError)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crop-toolkit")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (KeyError's repr quotes are dropped)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    msg = " ".join(str(msg).split()) or type(exc).__name__
    return msg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] == ["--version"]:
        print(f"crop-toolkit {_version()}")
        return 0
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        print("crop: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            traceback.print_exc()
        else:
            name = argv[0] if argv else "crop"
            print(f"crop {name}: error: {_one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return 2


def _dispatch(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crop", description=__doc__.splitlines()[0],
                                     epilog="--version prints the version; --debug shows tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; choose from: {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"crop {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    return int(module.run(cmd_parser.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
