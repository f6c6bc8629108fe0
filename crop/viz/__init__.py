"""Pictures of built datasets: ``draw`` (one sample with grid, region and boxes), ``show`` (PNG files
from shards) and ``report`` (a static, offline HTML report). Pillow only; imported on demand."""
