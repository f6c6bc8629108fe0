"""The trainer's data: shards through ShardStream and the synthetic set, split per rank, resumable
at any sample, and a shard-fed run that resumes to the same weights as the uninterrupted one."""

from __future__ import annotations

import json
import os

import pytest
import torch

from crop.train.localizer import config_from_dict, train
from crop.train.localizer_stream import epoch_stream, iter_shard_samples, make_reader

TINY = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64,
        "vision_depth": 1, "vision_dim": 16, "vision_heads": 1}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    from crop.data.synthetic_localization import synthetic_samples, write_shards

    out = tmp_path_factory.mktemp("shards")
    write_shards(synthetic_samples(23, seed=9), str(out), per_shard=7)  # 4 shards: 7, 7, 7, 2
    return str(out)


def _cfg(**kw):
    base = dict(model="tiny", tiny=TINY, batch_size=4, lr=2e-3, precision="fp32", log_every=1,
                save_every=0, max_length=256, progress=False, shuffle_buffer=5)
    base.update(kw)
    return config_from_dict(base)


def _keys(samples):
    return [s["__key__"] for s in samples]


def test_shard_reader_resumes_at_any_sample_and_reshuffles_per_epoch(shard_dir):
    reader, total, source = make_reader(_cfg(shards=[shard_dir]))
    assert total == 23 and "ShardStream" in source
    full = _keys(reader(0, 0))
    assert sorted(full) == sorted(_keys(iter_shard_samples(shard_dir)))  # every sample once
    for pos in (1, 4, 6, 17):
        assert _keys(reader(0, pos)) == full[pos:], pos
    assert _keys(reader(1, 0)) != full  # another epoch, another order
    assert _keys(reader(0, 0)) == full  # and back: the order is a function of (seed, epoch)


@pytest.mark.parametrize("source", ["shards", "synthetic"])
def test_ranks_get_disjoint_equal_parts(shard_dir, source):
    small = {"size": 56, "min_side": 8, "max_side": 16}
    kw = {"shards": [shard_dir]} if source == "shards" else {"synthetic": 23, "synthetic_spec": small}
    parts = [_keys(make_reader(_cfg(**kw), rank, 2)[0](0, 0)) for rank in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == (12 if source == "shards" else 11)  # pad / drop
    if source == "synthetic":
        assert not set(parts[0]) & set(parts[1])
    else:  # the padded position repeats one sample; the rest are disjoint
        assert len(set(parts[0]) | set(parts[1])) == 23


def test_epoch_stream_crosses_epochs_with_positions(shard_dir):
    reader, _, _ = make_reader(_cfg(shards=[shard_dir]))
    it = epoch_stream(reader, 0, 21)
    got = [next(it)[:2] for _ in range(4)]
    assert got == [(0, 22), (0, 23), (1, 1), (1, 2)]


def test_shard_run_resumes_to_identical_weights(shard_dir, tmp_path):
    torch.set_num_threads(1)
    # 23 samples / batch 4: 1.4 epochs = 9 steps; the step-6 checkpoint sits at sample 1 of epoch 1
    kw = dict(shards=[shard_dir], epochs=1.4)
    straight = train(_cfg(output_dir=str(tmp_path / "a"), save_every=6, **kw), log=lambda s: None)
    ckpt = tmp_path / "a" / "checkpoint-0000006"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["position"]) == (6, 1, 1)
    resumed = train(_cfg(output_dir=str(tmp_path / "b"), resume=str(ckpt), **kw), log=lambda s: None)
    assert straight["steps"] == resumed["steps"] == 9
    from safetensors.torch import load_file

    a = load_file(os.path.join(straight["final_dir"], "model.safetensors"))
    b = load_file(os.path.join(resumed["final_dir"], "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
