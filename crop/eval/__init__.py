"""Benchmark evaluation: official-rule scorers, RelAcc, results tables and the ``crop eval`` runner.

Light on import: the scorers, ``relacc`` and ``tables`` need only the standard library;
``config`` is stdlib + yaml; ``runner``, ``engine``, ``models``, ``methods`` import torch /
transformers inside functions; ``efficiency`` imports torch at module top.
"""

BENCHMARKS = ("gqa", "mme", "textvqa", "scienceqa", "vqav2", "pope")
"""Benchmark names used in configs, run folders and tables (paper's column order)."""
