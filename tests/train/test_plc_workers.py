"""train-plc reading through DataLoader workers (crop.train.prefetch): the per-sample preparation in
workers equals the batch collate; with workers > 0 a stopped and resumed run ends with exactly the
weights of the uninterrupted run; every sample is read once per epoch whatever the worker count."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from crop.train.plc import SamplePreparer, collate, prepare_sample, shard_source, stack, train
from crop.train.prefetch import LoaderCounts, epoch_items

from test_plc_train import COLORS, instruction_sample, region_sample, tiny_cfg, tiny_model, write_shards


def _samples():
    regions = [(0, 0, 2, 2), (5, 5, 7, 7), (2, 3, 4, 6), (0, 4, 3, 7)]
    out = [region_sample(i, c, region=r) for i, (c, r) in enumerate(zip(list(COLORS) * 2, regions * 2))]
    return out + [instruction_sample(20, True), instruction_sample(21, False)]


def test_per_sample_preparation_equals_the_batch_collate():
    cfg = tiny_cfg(".")
    model, tok, proc = tiny_model(cfg)
    samples = _samples()[:3] + [instruction_sample(30, False), instruction_sample(31, True)]
    prep = SamplePreparer(cfg.data, tok, proc, model.image_token_id, model.num_image_tokens, model.grid_hw,
                          model.tile_px)
    rows = [prep(s) for s in samples]
    exs = [prepare_sample(s, cfg.data, tok, model.image_token_id, model.num_image_tokens) for s in samples]
    ref = collate(exs, proc, True, model.grid_hw, tok.pad_token_id, model.tile_px)
    got = stack(rows, tok.pad_token_id)
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_per_epoch_and_counts_reach_the_main_process(tmp_path, workers):
    write_shards(tmp_path / "shards", _samples())
    cfg = tiny_cfg(tmp_path / "run")
    _, tok, proc = tiny_model(cfg)
    stream, n = shard_source([str(tmp_path / "shards")], cfg.data)
    keys = lambda row: row["sample"]["__key__"]  # noqa: E731
    counts = LoaderCounts()
    got = [keys(row) for _, row in epoch_items(stream, lambda s: {}, 0, 0, num_workers=workers, counts=counts)]
    assert len(got) == n == 10 and len(set(got)) == 10
    again = [keys(row) for _, row in epoch_items(stream, lambda s: {}, 0, 0, num_workers=workers)]
    assert again == got  # the order is a function of (seed, epoch, workers)
    tail = [keys(row) for _, row in epoch_items(stream, lambda s: {}, 0, 4, num_workers=workers)]
    assert tail == got[4:]  # resuming at position 4 continues the same order
    assert counts.counts == {}


def test_resume_with_workers_equals_uninterrupted(tmp_path):
    write_shards(tmp_path / "shards", _samples())
    shards = [str(tmp_path / "shards")]

    def run(folder, max_steps=0):
        cfg = tiny_cfg(tmp_path / folder, epochs=2, batch_size=2, max_steps=max_steps)
        cfg.data = dataclasses.replace(cfg.data, num_workers=2, prefetch_factor=2)
        model, tok, proc = tiny_model(cfg)
        stream, n = shard_source(shards, cfg.data)
        return model, train(cfg, model, tok, proc, stream, n)

    full, summary = run("a")
    assert summary["step"] == 10  # 2 epochs x 10 samples / 2
    _, part = run("b", max_steps=3)  # stops inside epoch 1
    assert part["step"] == 3
    resumed, done = run("b")  # same config but the cap: resumes at step 3 with 2 workers
    assert done["step"] == 10
    a, b = dict(full.named_parameters()), dict(resumed.named_parameters())
    moved = [n for n, p in a.items() if p.requires_grad]
    assert moved and all(torch.equal(a[n], b[n]) for n in a)
    rows = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert len(rows) == 10


def test_workers_count_is_operational_but_the_order_follows_it(tmp_path):
    """Changing data.num_workers resumes the same run folder (an operational field), and the
    stream refuses to resume mid-epoch with another worker count instead of reordering silently."""
    write_shards(tmp_path / "shards", _samples())
    cfg = tiny_cfg(tmp_path / "run", epochs=1, batch_size=2, max_steps=2)
    cfg.data = dataclasses.replace(cfg.data, num_workers=2)
    model, tok, proc = tiny_model(cfg)
    stream, n = shard_source([str(tmp_path / "shards")], cfg.data)
    train(cfg, model, tok, proc, stream, n)
    cfg2 = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=1),
                               train=dataclasses.replace(cfg.train, max_steps=0))
    model2, _, _ = tiny_model(cfg2)
    with pytest.raises(ValueError, match=r"written with data.num_workers=2, now 1"):
        train(cfg2, model2, tok, proc, stream, n)


def test_loader_counts_sum_workers_and_epochs():
    c = LoaderCounts({"bad_image": 1})
    c.update(0, {"bad_image": 2}, {"bad_image": "a.tar:3"})
    c.update(1, {"missing_member": 1}, {})
    c.update(0, {"bad_image": 3}, {"bad_image": "b.tar:1"})  # a later snapshot of worker 0
    assert c.counts == {"bad_image": 4, "missing_member": 1} and c.first == {"bad_image": "a.tar:3"}
    c.end_epoch()
    c.update(0, {"bad_image": 1}, {})
    assert c.counts == Counter({"bad_image": 5, "missing_member": 1})


def test_wire_round_trip_keeps_values_and_sends_big_tensors_by_shared_memory():
    import numpy as np

    from crop.train.prefetch import SHARED_MIN_BYTES, from_wire, to_wire

    item = {"input_ids": torch.arange(7), "mask": torch.ones(3, dtype=torch.bool),
            "pixel_values": torch.rand(SHARED_MIN_BYTES // 4 + 1), "nested": {"x": torch.tensor([1.5])}, "n": 3}
    wire = to_wire(item)
    assert isinstance(wire["input_ids"], np.ndarray) and isinstance(wire["nested"]["x"], np.ndarray)
    assert isinstance(wire["pixel_values"], torch.Tensor)  # big: shared memory, not pickled bytes
    back = from_wire(wire)
    for k in ("input_ids", "mask", "pixel_values"):
        assert back[k].dtype == item[k].dtype and torch.equal(back[k], item[k])
    assert torch.equal(back["nested"]["x"], item["nested"]["x"]) and back["n"] == 3
