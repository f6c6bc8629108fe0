"""Pure geometry: pixel boxes, 8x8 block regions, token grids (stdlib + numpy only).

Naming convention used everywhere in the project:

* ``box_xyxy_px``   -- ``(x1, y1, x2, y2)`` in pixels of the original image, x2/y2 exclusive edges.
* ``box_xyxy_norm`` -- the same rectangle divided by (width, height): values in [0, 1].
* ``region_blocks`` -- ``Region(x_min, y_min, x_max, y_max)``: inclusive 0-indexed block
  coordinates on a G x G grid (G = 8 in the paper).
* ``grid_hw``       -- ``(rows, cols)`` of a token grid.
"""

from crop.geometry.boxes import (
    BoxRejected,
    clip_box,
    pad_square_norm_to_px,
    px_to_pad_square_norm,
    union_box,
    validate_box,
)
from crop.geometry.regions import (
    Region,
    area_recall,
    box_norm_to_region,
    box_px_to_region,
    full_region,
    region_area,
    region_iou,
    region_to_box_norm,
    region_to_box_px,
)
from crop.geometry.tokens import region_token_mask
from crop.geometry.rect_search import all_rects, best_rect_within_budget, rect_masses, smallest_rect_with_share  # noqa: E501

__all__ = [
    "BoxRejected",
    "Region",
    "area_recall",
    "box_norm_to_region",
    "box_px_to_region",
    "clip_box",
    "full_region",
    "pad_square_norm_to_px",
    "px_to_pad_square_norm",
    "region_area",
    "region_iou",
    "region_to_box_norm",
    "region_to_box_px",
    "region_token_mask",
    "union_box",
    "validate_box",
]
