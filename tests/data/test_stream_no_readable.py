"""A rank's span with no readable sample cannot keep the equal-length promise: one clear error
naming the positions (it used to fail with a NameError inside the error path)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))


def test_all_unreadable_raises_shard_read_error_naming_the_span(tmp_path):
    from localizer_tiny import damaged_shards

    from crop.data.stream import ShardReadError, ShardStream

    shards = damaged_shards(tmp_path / "shards", n=4, bad=4)
    stream = ShardStream([shards], decode=True, fill_failures=True, batch_size=1)
    with pytest.warns(Warning), pytest.raises(ShardReadError, match=r"rank 0: positions \[0, 4\) hold no readable"):
        list(stream)
