"""ShardStream: exact rank x worker splits, equal lengths, seeded shuffling, resumption, sources."""

from __future__ import annotations

import collections
import json
import math
from contextlib import contextmanager
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from crop.data import stream
from crop.data.stream import ShardStream, epoch_length, split_sizes, stream_span

N_DEMO = 14  # conftest.UNEVEN_COUNTS


@contextmanager
def as_worker(worker: int, num_workers: int):
    """Make ShardStream believe it runs in DataLoader worker ``worker`` of ``num_workers``."""
    info = SimpleNamespace(id=worker, num_workers=num_workers)
    with mock.patch.object(stream, "get_worker_info", lambda: info):
        yield


def worker_samples(ds: ShardStream, num_workers: int) -> list[list[dict]]:
    out = []
    for w in range(num_workers):
        with as_worker(w, num_workers):
            out.append(list(ds))
    return out


def simulated_batches(ds: ShardStream, num_workers: int) -> list[list[dict]]:
    """What an in-order DataLoader delivers: each worker's batches, taken round robin."""
    per_worker = []
    for samples in worker_samples(ds, num_workers):
        b = ds.config.batch_size
        batches = [samples[i:i + b] for i in range(0, len(samples), b)]
        if ds.config.drop_last and batches and len(batches[-1]) < b:
            batches.pop()
        per_worker.append(batches)
    out = []
    for j in range(max(len(b) for b in per_worker)):
        out.extend(b[j] for b in per_worker if j < len(b))
    return out


def keys(batches) -> list[str]:
    return [s["__key__"] for b in batches for s in b]


@pytest.mark.parametrize("total", [1, 7, 14, 29])
@pytest.mark.parametrize("world,workers,batch", [(1, 1, 1), (2, 3, 2), (3, 2, 4), (4, 4, 3), (3, 5, 1)])
@pytest.mark.parametrize("uneven", ["pad", "drop"])
def test_plan_covers_each_position_once_with_equal_rank_sizes(total, world, workers, batch, uneven):
    length = epoch_length(total, world, uneven)
    assert length % world == 0 and (length >= total if uneven == "pad" else length <= total)
    assert abs(length - total) < world
    seen = []
    per_rank = []
    for r in range(world):
        spans = [stream_span(total, world, r, workers, w, uneven, batch) for w in range(workers)]
        for (lo, hi), (lo2, _) in zip(spans, spans[1:]):
            assert hi == lo2  # contiguous runs, in worker order
        per_rank.append(sum(hi - lo for lo, hi in spans))
        seen += [p for lo, hi in spans for p in range(lo, hi)]
    assert sorted(seen) == list(range(length))
    assert len(set(per_rank)) == 1


@pytest.mark.parametrize("n,parts,batch", [(14, 3, 2), (5, 4, 2), (9, 2, 4), (3, 5, 1)])
def test_split_sizes_gives_whole_batches_and_one_partial(n, parts, batch):
    sizes = split_sizes(n, parts, batch)
    assert sum(sizes) == n
    assert sum(1 for s in sizes if s % batch) <= 1
    assert sum(math.ceil(s / batch) for s in sizes) == math.ceil(n / batch)


@pytest.mark.parametrize("world,workers,batch", [(1, 1, 1), (2, 3, 2), (3, 2, 2), (3, 4, 1), (4, 2, 3)])
def test_each_sample_once_across_simulated_ranks_and_workers(shared_folder, world, workers, batch):
    all_keys, pads, batch_counts = [], 0, []
    for rank in range(world):
        ds = ShardStream(shared_folder, seed=3, shuffle_buffer=4, batch_size=batch, rank=rank,
                         world_size=world)
        batches = simulated_batches(ds, workers)
        batch_counts.append(len(batches))
        assert len(batches) == ds.num_batches()
        assert sum(len(b) for b in batches) == len(ds)
        for s in (s for b in batches for s in b):
            if s["__pad__"]:
                pads += 1
            else:
                all_keys.append(s["__key__"])
    counts = collections.Counter(all_keys)
    assert len(counts) == N_DEMO and set(counts.values()) == {1}
    assert pads == epoch_length(N_DEMO, world, "pad") - N_DEMO
    assert len(set(batch_counts)) == 1  # every rank steps the same number of times: no DDP hang


def test_drop_policy_trims_to_a_multiple_of_world_size(shared_folder):
    world = 3
    got = []
    for rank in range(world):
        ds = ShardStream(shared_folder, seed=1, uneven="drop", rank=rank, world_size=world)
        assert len(ds) == N_DEMO // world
        got += [s["__key__"] for s in ds]
    assert len(got) == len(set(got)) == (N_DEMO // world) * world


def test_real_dataloader_matches_the_simulated_round_robin(shared_folder):
    ds = ShardStream(shared_folder, seed=5, shuffle_buffer=3, batch_size=2, rank=1, world_size=2)
    loader = ds.loader(num_workers=2)
    real = list(loader)
    assert len(real) == len(loader) == ds.num_batches()
    assert keys(real) == keys(simulated_batches(ds, 2))


def test_shuffle_is_deterministic_per_seed_and_epoch(shared_folder):
    def order(seed, epoch):
        ds = ShardStream(shared_folder, seed=seed, shuffle_buffer=5)
        ds.set_epoch(epoch)
        return [s["__key__"] for s in ds]

    first = order(0, 0)
    assert first == order(0, 0)
    assert sorted(first) == sorted(order(0, 1))
    assert first != order(0, 1) and order(0, 1) != order(0, 2)
    assert first != order(1, 0)
    plain = [s["__key__"] for s in ShardStream(shared_folder, shuffle=False)]
    manifest = json.loads((shared_folder / "manifest.json").read_text())
    assert [s["__shard__"] for s in ShardStream(shared_folder, shuffle=False)] == \
        [e["shard"] for e in manifest["shards"] for _ in range(e["samples"])]
    assert plain != first


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("consumed", [0, 1, 3, 5, 7])
def test_resume_in_process_yields_exactly_the_remaining_samples(shared_folder, consumed, shuffle):
    cfg = dict(seed=2, shuffle_buffer=3, batch_size=2, rank=0, world_size=1, shuffle=shuffle)
    reference = ShardStream(shared_folder, **cfg)
    reference.set_epoch(4)
    full = keys(reference.loader(num_workers=0))
    ds = ShardStream(shared_folder, **cfg)
    ds.set_epoch(4)
    it = iter(ds.loader(num_workers=0))
    for _ in range(consumed):
        next(it)
    # what a checkpoint stores; before any in-process iteration the count must be given
    state = json.loads(json.dumps(ds.state_dict() if consumed else ds.state_dict(batches_seen=0)))
    assert state["epoch"] == 4 and state["batches_seen"] == consumed
    fresh = ShardStream(shared_folder, **cfg)
    fresh.load_state_dict(state)
    fresh.set_epoch(4)  # the trainer re-enters the saved epoch: the position is kept
    assert keys(fresh.loader(num_workers=0)) == full[consumed * 2:]
    fresh.set_epoch(5)  # the next epoch starts from its beginning
    assert len(keys(fresh.loader(num_workers=0))) == N_DEMO


@pytest.mark.parametrize("workers,consumed", [(2, 3), (3, 4)])
def test_resume_with_workers_yields_exactly_the_remaining_batches(shared_folder, workers, consumed):
    cfg = dict(seed=9, shuffle_buffer=3, batch_size=2, rank=1, world_size=2)
    ds = ShardStream(shared_folder, **cfg)
    ds.set_epoch(1)
    full = simulated_batches(ds, workers)
    state = ds.state_dict(batches_seen=consumed, num_workers=workers)
    assert [p["worker"] for p in state["positions"]] == list(range(workers))
    assert all(p["shard"] is None or p["shard"].endswith(".tar") for p in state["positions"])
    fresh = ShardStream(shared_folder, **cfg)
    fresh.load_state_dict(state)
    assert keys(simulated_batches(fresh, workers)) == keys(full[consumed:])
    if workers == 2:  # and through a real DataLoader
        assert keys(fresh.loader(num_workers=workers)) == keys(full[consumed:])


def test_resume_refuses_a_different_plan(shared_folder):
    ds = ShardStream(shared_folder, seed=1, batch_size=2)
    state = ds.state_dict(batches_seen=1)
    for change in ({"seed": 2}, {"batch_size": 4}, {"shuffle_buffer": 7}):
        with pytest.raises(ValueError, match=next(iter(change))):
            ShardStream(shared_folder, **{"seed": 1, "batch_size": 2, **change}).load_state_dict(state)
    with pytest.raises(ValueError, match="batches_seen"):
        ShardStream(shared_folder).state_dict()
    saved = ds.state_dict(batches_seen=1, num_workers=2)
    other = ShardStream(shared_folder, seed=1, batch_size=2)
    other.load_state_dict(saved)
    with pytest.raises(ValueError, match="saved with 2 DataLoader worker"):
        list(other)  # in-process = 1 worker: a different plan


def test_sources_folder_manifest_glob_and_braces_agree(shared_folder):
    by_folder = ShardStream(shared_folder).shards
    assert [s.samples for s in by_folder] == [5, 3, 4, 2]
    assert ShardStream(shared_folder / "manifest.json").shards == by_folder
    assert ShardStream(str(shared_folder / "demo-*.tar")).shards == by_folder
    assert ShardStream(str(shared_folder / "demo-{000000..000003}.tar")).shards == by_folder
    assert len(ShardStream(shared_folder)) == N_DEMO
    with pytest.raises(FileNotFoundError, match="matches nothing"):
        ShardStream(str(shared_folder / "nope-*.tar"))
    with pytest.raises(ValueError, match="listed twice"):
        ShardStream([str(shared_folder / "demo-000000.tar")] * 2)


def test_counts_without_stats_files_by_scanning(tmp_path, shared_folder):
    import shutil

    for p in shared_folder.glob("demo-*.tar"):
        shutil.copy(p, tmp_path / p.name)
    assert [s.samples for s in ShardStream(str(tmp_path / "*.tar")).shards] == [5, 3, 4, 2]


def test_remote_scheme_through_fsspec_memory(shared_folder):
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in shared_folder.iterdir():
        fs.pipe(f"/remote-ds/{p.name}", p.read_bytes())
    try:
        local = sorted(s["__key__"] for s in ShardStream(shared_folder))
        remote = ShardStream("memory://remote-ds/manifest.json")
        assert remote.shards[0].url == "memory://remote-ds/demo-000000.tar"
        assert sorted(s["__key__"] for s in remote) == local
        globbed = ShardStream("memory://remote-ds/demo-*.tar")
        assert [s.samples for s in globbed.shards] == [5, 3, 4, 2]
    finally:
        fs.rm("/remote-ds", recursive=True)


def test_decode_gives_rgb_images_and_bytes_only_gives_none(shared_folder):
    decoded = list(ShardStream(shared_folder, decode=True, shuffle=False))
    with_image = [s for s in decoded if s["image_bytes"] is not None]
    assert with_image and all(s["image"].mode == "RGB" and s["image"].size == (40, 30) for s in with_image)
    assert all(s["image"] is None and s["image_ext"] is None for s in decoded if s["image_bytes"] is None)
    assert all(s["json"]["key"] == s["__key__"] for s in decoded)
    raw = list(ShardStream(shared_folder, shuffle=False))
    assert all(s["image"] is None for s in raw)
    assert [s["image_bytes"] for s in raw] == [s["image_bytes"] for s in decoded]


def test_config_errors_name_the_field(shared_folder):
    for bad, field in (({"uneven": "wrap"}, "uneven"), ({"on_error": "ignore"}, "on_error"),
                       ({"batch_size": 0}, "batch_size"), ({"rank": 2, "world_size": 2}, "rank")):
        with pytest.raises(ValueError, match=field):
            ShardStream(shared_folder, **bad)


def test_torch_distributed_env_is_used_for_rank(shared_folder, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert torch.distributed.is_initialized() is False
    ds = ShardStream(shared_folder)
    assert (ds.rank, ds.world_size, len(ds)) == (1, 2, N_DEMO // 2)


def test_unreadable_shard_without_counts_fails_clearly(tmp_path):
    bad = tmp_path / "x-000000.tar"
    bad.write_bytes(b"not a tar" * 100)
    with pytest.raises(ValueError, match="x-000000.tar: cannot count"):
        ShardStream(str(bad))


def test_imports_stay_light():
    import subprocess
    import sys

    code = ("import sys, crop.data; assert 'torch' not in sys.modules and 'PIL' not in sys.modules; "
            "import crop.data.stream, crop.data.views, crop.data.safety, crop.data.validate_cmd; "
            "assert not any(m.startswith('apache_beam') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name,what", [("no/such/folder", "no such shard folder or file"),
                                       ("no/such/shard-000000.tar", "no such shard")])
def test_missing_local_path_says_it_is_missing(tmp_path, name, what):
    """A typo in a shard path names the missing path, not a failure to count samples."""
    with pytest.raises(FileNotFoundError, match=f"{name}: {what}$"):
        stream.resolve_shards(str(tmp_path / name))
