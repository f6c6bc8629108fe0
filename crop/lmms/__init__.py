"""lmms-eval plug-in: ``lmms-eval --model crop --model_args pretrained=...,method=ilp,...``.

An optional extra (``pip install -e ".[lmms]"``). lmms-eval 0.7 finds external models through
the Python entry-point group ``lmms_eval.models``; this package's entry point is
:func:`manifest` (``crop = "crop.lmms:manifest"`` in pyproject.toml), a callable that returns
lmms-eval's ``ModelManifest`` naming :class:`crop.lmms.model.CropLMM`.

Nothing here imports lmms-eval at import time: ``import crop`` and ``import crop.lmms`` work
without it; lmms-eval calls :func:`manifest` while it builds its model registry, and imports
``crop.lmms.model`` only when ``--model crop`` is asked for. Modules:

* :mod:`crop.lmms.batch`: batched, pruned answers (no lmms-eval import; reuses ``crop eval``'s
  loaders, prompts, region sources and the method registry);
* :mod:`crop.lmms.model`: the lmms-eval model class (ordering and grouping with lmms-eval's
  ``Collator``, model_args, multi-process ranks);
* :mod:`crop.lmms.kept_log`: the per-sample kept-token side file.
"""

from __future__ import annotations

MODEL_ID = "crop"
CLASS_PATH = "crop.lmms.model.CropLMM"


def manifest():
    """lmms-eval's registration payload (called by lmms-eval's registry, so lmms-eval is there)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
