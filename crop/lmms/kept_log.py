"""The per-sample kept-token side file of an lmms-eval run (lmms-eval's results have no field for it).

Where it goes (first that applies):

1. ``kept_tokens=PATH`` in ``--model_args``: exactly ``PATH`` (``PATH`` with ``.rank<r>`` before
   the suffix when several processes run);
2. the lmms-eval command line's ``--output_path DIR`` (read from ``sys.argv`` because lmms-eval
   does not hand it to the model): ``DIR/crop_kept_tokens_<YYYYmmdd-HHMMSS>[.rank<r>].jsonl``,
   beside the ``DIR/<model>/<date>_results.json`` folder lmms-eval writes;
3. otherwise ``./crop_kept_tokens_<YYYYmmdd-HHMMSS>[.rank<r>].jsonl``.

One JSON line per answered request: ``task``, ``split``, ``doc_id``, ``key`` (the regions-file key
used), ``method``, ``layer``, ``budget``, ``batch_size`` (rows in its ``generate`` call), and the
method's report: ``visual_tokens_in``, ``visual_tokens_kept``, ``visual_tokens_layer_avg``
(docs/baselines.md's budget conventions), ``region`` when one was used. The file is rewritten
at the start of a run and flushed after every batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence


def output_path_from_argv(argv: Sequence[str] | None = None) -> str | None:
    """The value of lmms-eval's ``--output_path`` flag in ``argv`` (``sys.argv[1:]``), if any."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--output_path", default=None)
    known, _ = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return known.output_path


def kept_log_path(explicit: str | None, rank: int = 0, world_size: int = 1,
                  argv: Sequence[str] | None = None, stamp: str | None = None) -> Path:
    """The side file's path by the rules of the module docstring."""
    suffix = f".rank{rank}" if world_size > 1 else ""
    if explicit:
        path = Path(explicit)
        return path.with_name(f"{path.stem}{suffix}{path.suffix or '.jsonl'}") if suffix else path
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    folder = Path(output_path_from_argv(argv) or ".")
    return folder / f"crop_kept_tokens_{stamp}{suffix}.jsonl"


class KeptLog:
    """Appends rows to the side file (created, or emptied, when the first batch is written)."""

    def __init__(self, path: Path):
        self.path = path
        self._started = False

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a" if self._started else "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, default=_plain) + "\n")
        self._started = True


def _plain(value: Any) -> Any:
    """Tensors / numpy scalars in a report row as plain numbers."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
