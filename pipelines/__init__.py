"""Apache Beam pipelines that build CROP's training shards. No torch / transformers imports here.

``pipelines.build.run(argv)`` is the main job (``python beam_runner.py``). The per-record work lives
in plain functions (``pipelines.sources``, ``pipelines.finalize``, ``pipelines.shards``) that the
Beam graph in ``pipelines.build`` wraps thinly.
"""
