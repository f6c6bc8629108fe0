"""The run folder rules every trainer follows: resume or refuse, no duplicated log rows, checkpoint
retention, and a clean stop on SIGINT / SIGTERM.

One rule for ``crop train-localizer`` and ``crop train-plc`` (paper-scale runs are stopped and
resumed many times, by people and by cluster pre-emption):

* **An output folder holding a run of the same config resumes** from its newest checkpoint; a
  folder holding a run of *another* config is refused, naming the fields that differ, unless
  ``--overwrite`` (which empties it first). A non-empty folder that is not a run folder is always
  refused (``--overwrite`` never deletes what a trainer did not write). ``--resume PATH`` picks a
  checkpoint explicitly.
* Fields that do not change what is trained (``OPERATIONAL``: where and how often to log, save and
  show progress) may differ between the two runs.
* **One log row per step**: on resume, rows of steps after the checkpoint (written by the run
  that was stopped, and about to be redone) are dropped from ``log.jsonl`` before training goes on.
* **Retention**: ``keep_checkpoints: N`` keeps the newest N intermediate checkpoints (0 = all).
* **Stop signals**: the first SIGINT / SIGTERM asks the loop to stop after the current optimizer
  step; it saves a checkpoint, prints the exact command that resumes, and exits with status 130
  (SIGINT) or 143 (SIGTERM). A second signal stops at once (Python's default behaviour).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

OPERATIONAL = frozenset({"output_dir", "resume", "progress", "log_every", "save_every", "keep_checkpoints",
                         "log_with", "num_workers", "prefetch_factor", "pin_memory"})
CONFIG_NAME = "train_config.yaml"


class RunFolderError(FileExistsError):
    """The output folder holds something this run must not continue or overwrite."""


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value  # YAML has no tuples
    return out


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any],
                       operational: frozenset[str] = OPERATIONAL) -> list[str]:
    """``field: old -> new`` for every field that differs, operational ones (at any depth, e.g.
    ``train.log_every`` in a sectioned config) left out; nested fields are dotted."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b))
            if k.rsplit(".", 1)[-1] not in operational and a.get(k, "<absent>") != b.get(k, "<absent>")]


def prepare(output_dir: str | os.PathLike, config: Mapping[str, Any], *, overwrite: bool = False,
            has_checkpoint: Callable[[Path], bool] = lambda p: False, config_name: str = CONFIG_NAME,
            operational: frozenset[str] = OPERATIONAL) -> str:
    """Decide what to do with ``output_dir``: ``"fresh"`` or ``"resume"``; raise :class:`RunFolderError`.

    ``config`` is the new run's resolved config as a plain mapping. Only the main process should
    call this with ``overwrite=True`` (it deletes).
    """
    import yaml

    out = Path(output_dir)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "fresh"
    if not out.is_dir():
        raise RunFolderError(f"{out}: exists and is not a folder")
    saved = out / config_name
    if not saved.is_file():
        raise RunFolderError(f"{out}: not empty and holds no {config_name} (not a run folder); "
                             "choose another --output-dir (--overwrite never deletes other files)")
    old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    diff = config_differences(old, dict(config), operational)
    if diff and not overwrite:
        raise RunFolderError(f"{out}: holds a run of another config ({'; '.join(diff[:5])}"
                             f"{'; ...' if len(diff) > 5 else ''}); use another --output-dir, or --overwrite to replace it")
    if diff or overwrite:
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        return "fresh"
    return "resume" if has_checkpoint(out) else "fresh"


def trim_log(path: str | os.PathLike, last_step: int) -> int:
    """Drop ``log.jsonl`` rows with ``step > last_step`` (and torn last lines); return rows dropped."""
    p = Path(path)
    if not p.is_file():
        return 0
    keep, dropped = [], 0
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a line torn by the stop
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > last_step:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        tmp = p.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in keep), encoding="utf-8")
        os.replace(tmp, p)
    return dropped


def prune_checkpoints(folders: list[Path], keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` of ``folders`` (sorted oldest first); 0 keeps all."""
    if keep <= 0 or len(folders) <= keep:
        return []
    doomed = folders[:-keep]
    for d in doomed:
        shutil.rmtree(d, ignore_errors=True)
    return doomed


def stopped_message(signum: int, step: int, checkpoint: str) -> str:
    """What a trainer stopped by a signal prints (rank 0): the step, its checkpoint, the resume command."""
    import signal

    return (f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}\n"
            f"resume with: {resume_command()}")


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that resumes this run: the one that started it (a rerun resumes by rule)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and os.path.basename(argv[0]) in ("crop", "cli.py", "__main__.py"):
        argv = ["crop"] + argv[1:]  # the console script, or python -m crop.cli
    argv = [a for a in argv if a != "--overwrite"]  # rerunning with it would throw the run away
    return " ".join(shlex.quote(a) for a in argv)


class StopSignals:
    """Context manager: the first SIGINT/SIGTERM sets ``requested`` instead of killing the process.

    Installed only in the main thread (signal handlers cannot be set elsewhere; a trainer called
    from a worker thread keeps the default behaviour). The previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:  # second signal: restore the default and re-raise it
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            os.kill(os.getpid(), signum)
            return
        self.requested = signum
        print(f"\n{signal.Signals(signum).name} received: finishing this optimizer step, then saving a "
              "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopSignals":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    @property
    def exit_status(self) -> int:
        return 128 + int(self.requested or signal.SIGINT)
