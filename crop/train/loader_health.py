"""Loader failures made visible to a training run, and the rule that stops a run on damaged data.

The shard stream never stops for one bad sample: a decode error, a missing member or a corrupt
shard is counted (``crop.data.safety.Counters``) and, for training, replaced by a repeat of a
neighbour (``fill_failures``) so every rank keeps the same epoch length. That keeps a run alive,
and it also hides a damaged shard set: the model then trains on duplicates. So every training log
row carries the counters (``loader``: kind -> count, repeats as ``filled``), the final summary
too, and a run stops -- after saving a checkpoint -- once

    failures > max_failure_fraction * max(samples read, MIN_SAMPLES)

(failures: every counted kind except bookkeeping ones and ``filled``, which only repeats them).
``MIN_SAMPLES`` keeps the first unlucky sample of a run from stopping it at a small fraction.
"""

from __future__ import annotations

from typing import Mapping

MIN_SAMPLES = 1000
NOT_FAILURES = frozenset({"filled", "ignored_member", "pickle_member"})


class LoaderFailureError(ValueError):
    """Too many samples failed to load; the message names the kinds, counts and first examples."""


def failures(counts: Mapping[str, int]) -> int:
    return sum(n for kind, n in counts.items() if kind not in NOT_FAILURES)


def check(counts: Mapping[str, int], read: int, max_fraction: float,
          first: Mapping[str, str] | None = None) -> None:
    """Raise :class:`LoaderFailureError` when failures exceed the allowed fraction of ``read``."""
    bad = failures(counts)
    if bad <= max_fraction * max(read, MIN_SAMPLES):
        return
    first = first or {}
    kinds = ", ".join(f"{k} {n}" + (f" (first: {first[k]})" if k in first else "")
                      for k, n in sorted(counts.items(), key=lambda kv: -kv[1]) if k not in NOT_FAILURES)
    raise LoaderFailureError(
        f"{bad} of {read:,} samples read failed to load ({bad / max(read, 1):.2%}), more than "
        f"max_failure_fraction {max_fraction:g} allows: {kinds}; check the shards with `crop validate`, "
        "or raise max_failure_fraction and rerun (the run resumes from the checkpoint just saved)")
