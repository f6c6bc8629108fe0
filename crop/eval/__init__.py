"""Benchmark evaluation: official-rule scorers, RelAcc, results tables and the ``crop eval`` runner.

Light on import: the scorers, ``relacc`` and ``tables`` need only the standard library;
``runner`` and ``efficiency`` import torch/transformers when they are imported themselves.
"""

BENCHMARKS = ("gqa", "mme", "textvqa", "scienceqa", "vqav2", "pope")
"""Benchmark names used in configs, run folders and tables (paper's column order)."""
