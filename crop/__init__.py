"""CROP toolkit: contextual region-oriented visual token pruning.

Importing ``crop`` is cheap on purpose: it pulls in neither torch nor Apache Beam.
Submodules that need them (``crop.pruning``, ``crop.models``, ``crop.data.loader``)
import them when they are imported themselves.
"""

__version__ = "0.1.0"

GRID_SIZE = 8
"""The paper's grid: regions are rectangles of blocks on an 8x8 grid (Sec. 3.2)."""
