"""Reading built CROP datasets: safe shard iteration, streaming into PyTorch, views, validation.

Modules include (each imported on its own, so ``import crop.data`` stays cheap):

* :mod:`crop.data.safety`       -- member-name rules, JSON/image decoding with a pixel cap, error
  policy and counters; the safe tar reader every other reader goes through. Never unpickles.
* :mod:`crop.data.stream`       -- :class:`~crop.data.stream.ShardStream`, an ``IterableDataset``
  over shards/globs/``manifest.json`` with seeded per-epoch shuffling, exact rank x worker
  splitting, equal per-rank lengths and resumable positions.
* :mod:`crop.data.views`        -- raw, VQA (PLC/LLaVA) and localizer views of a sample and a
  processor-calling ``collate``.
* :mod:`crop.data.validate_cmd` -- ``crop validate``: a built folder against ``schemas/``.
"""
