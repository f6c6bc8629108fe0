"""train-localizer reading shards through DataLoader workers (crop.train.prefetch): encoding one
sample at a time in a worker and padding in the trainer equals the batch collate; a run with 2
workers stopped mid-epoch and resumed ends with exactly the weights of the uninterrupted run; the
worker count is recorded and a mid-epoch resume with another count is refused."""

from __future__ import annotations

import json
import os

import pytest
import torch

from crop.train.localizer import config_from_dict, train

from localizer_tiny import TINY, one_thread  # noqa: F401 - fixture


def _shards(tmp_path, n=24):
    from crop.data.synthetic_localization import SyntheticSpec, synthetic_samples, write_shards

    folder = tmp_path / "shards"
    write_shards(synthetic_samples(n, seed=3, spec=SyntheticSpec(size=112)), str(folder), per_shard=10)
    return str(folder)


def _cfg(folder, shards, **kw):
    base = dict(model="tiny", tiny=TINY, shards=[shards], batch_size=4, lr=2e-3, precision="fp32", log_every=1,
                save_every=0, max_length=256, output_dir=str(folder), progress=False, epochs=2.0,
                num_workers=2, shuffle_buffer=8)
    base.update(kw)
    return config_from_dict(base)


def test_one_sample_per_worker_then_stack_equals_the_batch_collate():
    from PIL import Image

    from crop.data.synthetic_localization import SyntheticSpec, synthetic_samples
    from crop.models.localizer import TinySpec, build_tiny_localizer
    from crop.models.localizer_data import LocalizerCollator

    loc = build_tiny_localizer(TinySpec(**TINY))
    collate = LocalizerCollator(loc.encoder)
    samples = synthetic_samples(3, seed=1, spec=SyntheticSpec(size=112))
    samples[1] = {**samples[1], "image": Image.new("RGB", (168, 84), (5, 5, 5))}  # another image size
    ref = collate(samples)
    got = collate.stack([collate.one(s) for s in samples])
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_resume_with_two_workers_equals_the_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    shards = _shards(tmp_path)  # 24 samples / batch 4 = 6 steps per epoch, 12 in all
    straight = train(_cfg(tmp_path / "a", shards), log=lambda s: None)
    assert straight["steps"] == 12
    part = _cfg(tmp_path / "b", shards, save_every=4)
    keys: list = []
    stopped = train(part, log=lambda s: None,
                    on_batch=lambda e, b: keys.extend(s["__key__"] for s in b))
    assert stopped["steps"] == 12 and len(keys) == 48  # every sample's key reaches on_batch (no images)
    ckpt = tmp_path / "b" / "checkpoint-0000008"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["position"], state["num_workers"]) == (8, 1, 8, 2)
    resumed = train(_cfg(tmp_path / "c", shards, resume=str(ckpt)), log=lambda s: None)
    assert resumed["steps"] == 12
    wa = load_file(os.path.join(straight["final_dir"], "model.safetensors"))
    wc = load_file(os.path.join(resumed["final_dir"], "model.safetensors"))
    assert wa.keys() == wc.keys() and all(torch.equal(wa[k], wc[k]) for k in wa)
    with pytest.raises(ValueError, match=r"written with num_workers=2, now 0"):
        train(_cfg(tmp_path / "d", shards, resume=str(ckpt), num_workers=0), log=lambda s: None)
