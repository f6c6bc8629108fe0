"""Models on top of the VLMs: the PLC compression module (``plc``, ``llava_plc``) and the localizer.

Submodules import torch/transformers; import them explicitly (``from crop.models.plc import PLC``).
"""
