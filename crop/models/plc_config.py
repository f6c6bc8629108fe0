"""``PLCConfig``: the PLC module's hyper-parameters (paper Sec. 3.4, App. B), without torch.

Kept apart from :mod:`crop.models.plc` so that configs (``crop train-plc --help``, YAML loading)
can be built without importing torch; ``crop.models.plc`` re-exports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class PLCConfig:
    dim: int = 4096  # d_h, the projector output width
    grid_rows: int = 24  # N: LLaVA-1.5 at 336 px / 14 px patches
    grid_cols: int = 24
    region_grid: int = 8  # regions are blocks of an 8x8 grid (Sec. 3.2)
    num_context_queries: int = 64  # N_{Q^k}, a square number (8x8 lattice)
    num_noncontext_queries: int = 4  # N_{Q^nk}, a square number (2x2 lattice)
    anchor_size: int = 8  # X^r is anchor_size x anchor_size tokens (N_r = 64)
    use_anchors: bool = True  # False: Table 6 "w/o X^r" ablation
    qkv_proj: bool = False
    pos_gain_init: float = 1.0
    query_init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.dim % 4:
            raise ValueError(f"PLCConfig.dim={self.dim} must be divisible by 4 (2-D sincos)")
        for name in ("num_context_queries", "num_noncontext_queries"):
            n = getattr(self, name)
            if n < 1 or math.isqrt(n) ** 2 != n:
                raise ValueError(f"PLCConfig.{name}={n} must be a positive square number")
        if not 1 <= self.anchor_size <= min(self.grid_rows, self.grid_cols):
            raise ValueError(f"PLCConfig.anchor_size={self.anchor_size} must fit the "
                             f"{self.grid_rows}x{self.grid_cols} grid")

    @property
    def num_output_tokens(self) -> int:
        n_first = self.anchor_size**2 if self.use_anchors else self.num_context_queries
        return n_first + self.num_noncontext_queries
