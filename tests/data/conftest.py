"""Fixtures for the crop.data tests: a tiny built dataset written with webdataset.TarWriter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from shard_factory import write_demo_shards  # noqa: E402

UNEVEN_COUNTS = (5, 3, 4, 2)   # 14 samples in 4 shards: divides by neither 3 ranks nor 4 workers


@pytest.fixture
def demo_folder(tmp_path) -> Path:
    """A built dataset of 4 uneven shards (14 samples) in ``tmp_path / "ds"``."""
    folder = tmp_path / "ds"
    write_demo_shards(folder, n_shards=len(UNEVEN_COUNTS), per_shard=UNEVEN_COUNTS)
    return folder


@pytest.fixture(scope="module")
def shared_folder(tmp_path_factory) -> Path:
    """Read-only copy of the demo dataset shared by a module (tests must not modify it)."""
    folder = tmp_path_factory.mktemp("shared") / "ds"
    write_demo_shards(folder, n_shards=len(UNEVEN_COUNTS), per_shard=UNEVEN_COUNTS)
    return folder
