"""One run-folder rule for the trainers (crop.train.run_folder), through crop train-localizer.

A rerun of the same config resumes and never duplicates a log row; another config is refused
unless --overwrite; checkpoints are pruned to keep_checkpoints; SIGINT/SIGTERM stops after the
current optimizer step with a checkpoint and the command that resumes, exit 128 + signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recording_tracker import recording_tracker
import torch

from crop.train import run_folder
from crop.train.localizer import config_from_dict, train
from crop.train.localizer_config import save_config

from localizer_tiny import TINY, damaged_shards, one_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[2]



def _cfg(out, **kw):
    base = dict(model="tiny", tiny=TINY, synthetic=48, synthetic_spec={"size": 112}, batch_size=8,
                lr=2e-3, precision="fp32", log_every=1, save_every=2, max_length=256,
                output_dir=str(out), progress=False, epochs=1.0)
    base.update(kw)
    return config_from_dict(base)


def _log_steps(out) -> list[int]:
    return [json.loads(x)["step"] for x in (Path(out) / "log.jsonl").read_text().splitlines()]


def _final_weights(out):
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "final" / "model.safetensors"))


# ----------------------------------------------------------------------------- the rule itself
def test_prepare_decides_fresh_resume_refuse_and_overwrite(tmp_path):
    out = tmp_path / "run"
    cfg = {"lr": 1.0, "output_dir": str(out), "log_every": 5, "data": {"seed": 0}}
    assert run_folder.prepare(out, cfg) == "fresh"
    out.mkdir()
    assert run_folder.prepare(out, cfg) == "fresh"  # empty
    (out / "notes.txt").write_text("mine")
    with pytest.raises(run_folder.RunFolderError, match="not a run folder"):
        run_folder.prepare(out, cfg, overwrite=True)  # never deletes what a trainer did not write
    (out / "notes.txt").unlink()
    import yaml

    (out / run_folder.CONFIG_NAME).write_text(yaml.safe_dump(cfg))
    assert run_folder.prepare(out, cfg) == "fresh"  # same config, no checkpoint yet
    assert run_folder.prepare(out, cfg, has_checkpoint=lambda p: True) == "resume"
    assert run_folder.prepare(out, dict(cfg, log_every=1, output_dir="elsewhere"),
                              has_checkpoint=lambda p: True) == "resume"  # operational fields may differ
    with pytest.raises(run_folder.RunFolderError, match=r"data.seed: 0 -> 1"):
        run_folder.prepare(out, dict(cfg, data={"seed": 1}))
    assert run_folder.prepare(out, dict(cfg, lr=2.0), overwrite=True) == "fresh"
    assert not any(out.iterdir())


def test_trim_log_drops_rows_after_the_checkpoint_and_torn_lines(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 7)) + '{"step": 7, "lo')
    assert run_folder.trim_log(log, 4) == 3
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 4]


def test_prune_keeps_the_newest(tmp_path):
    dirs = [tmp_path / f"checkpoint-{i:07d}" for i in (2, 4, 6, 8)]
    for d in dirs:
        d.mkdir()
    run_folder.prune_checkpoints(dirs, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000006", "checkpoint-0000008"]


def test_resume_command_is_the_rerun_without_overwrite():
    cmd = run_folder.resume_command(["/venv/bin/crop", "train-localizer", "--config", "a b.yaml", "--overwrite"])
    assert cmd == "crop train-localizer --config 'a b.yaml'"


# ----------------------------------------------------------------------------- the localizer trainer
def test_rerun_resumes_without_duplicate_rows_and_other_config_is_refused(tmp_path):
    out = tmp_path / "run"
    first = train(_cfg(out, max_steps=4), log=lambda s: None)
    assert first["steps"] == 4 and _log_steps(out) == [1, 2, 3, 4]
    again = train(_cfg(out, max_steps=4), log=lambda s: None)  # the same config: nothing left to do
    assert again["steps"] == 4 and _log_steps(out) == [1, 2, 3, 4]
    with pytest.raises(run_folder.RunFolderError, match="lr: 0.002 -> 0.001"):
        train(_cfg(out, max_steps=4, lr=1e-3), log=lambda s: None)
    redo = train(_cfg(out, max_steps=2, lr=1e-3), log=lambda s: None, overwrite=True)
    assert redo["steps"] == 2 and _log_steps(out) == [1, 2]


def test_keep_checkpoints(tmp_path):
    out = tmp_path / "run"
    train(_cfg(out, save_every=1, keep_checkpoints=2), log=lambda s: None)  # 6 steps
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000004", "checkpoint-0000005"]


def test_signal_in_process_stops_with_a_checkpoint_and_the_rerun_is_exact(tmp_path):
    """SIGINT during step 3: the step finishes, checkpoint-0000003 is written, the rerun resumes
    there and ends with the same weights as an uninterrupted run; every log step exactly once."""
    calls = []

    def interrupt(epoch, samples):
        calls.append(1)
        if len(calls) == 3:  # third micro-batch = step 3
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "run"
    stopped = train(_cfg(out), log=lambda s: None, on_batch=interrupt)
    assert stopped["stopped"] == signal.SIGINT and stopped["steps"] == 3 and stopped["final_dir"] is None
    assert (out / "checkpoint-0000003" / "trainer_state.json").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    done = train(_cfg(out), log=lambda s: None)
    assert done["steps"] == 6 and _log_steps(out) == [1, 2, 3, 4, 5, 6]
    straight = train(_cfg(tmp_path / "straight"), log=lambda s: None)
    a, b = _final_weights(out), _final_weights(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_to_a_cli_run_in_a_subprocess(tmp_path):
    """A cluster pre-emption: SIGTERM to `crop train-localizer`; exit 143, a checkpoint, the resume line."""
    cfg = _cfg(tmp_path / "run", synthetic=4000, max_steps=400, save_every=0)
    path = tmp_path / "c.yaml"
    save_config(cfg, str(path))
    proc = subprocess.Popen([sys.executable, "-m", "crop.cli", "train-localizer", "--config", str(path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    steps = _log_steps(tmp_path / "run")
    ckpts = sorted((tmp_path / "run").glob("checkpoint-*"))
    assert len(ckpts) == 1 and int(ckpts[0].name.split("-")[1]) >= steps[-1] >= 2
    assert "SIGTERM received" in err and "resume with: crop train-localizer --config" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- loader failures
def test_loader_failures_are_logged_and_stop_the_run_with_a_checkpoint(tmp_path):
    from crop.train.loader_health import LoaderFailureError

    shards = damaged_shards(tmp_path / "shards")
    cfg = _cfg(tmp_path / "run", synthetic=0, shards=[shards], save_every=0)
    with pytest.warns(Warning):  # the stream warns per bad sample as well
        with pytest.raises(LoaderFailureError, match=r"samples read failed to load .* bad_image \d+ \(first: dmg-000000.tar:"):
            train(cfg, log=lambda s: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows and rows[0]["loader"]["bad_image"] >= 1
    assert list((tmp_path / "run").glob("checkpoint-*")), "a checkpoint is saved before stopping"
    # the same damage under a tolerant threshold: the run finishes and reports the repeats
    from crop.data.safety import ShardWarning

    with pytest.warns(ShardWarning) as seen:
        ok = train(_cfg(tmp_path / "run2", synthetic=0, shards=[shards], save_every=0, max_failure_fraction=0.5),
                   log=lambda s: None)
    assert not [w for w in seen if " at 0x" in str(w.message)]  # loader warnings carry no memory address
    assert ok["loader"]["bad_image"] == 6 and ok["loader"]["filled"] == 6


def test_failure_rule_counts_failures_not_repeats_and_spares_the_first_sample():
    from crop.train.loader_health import MIN_SAMPLES, LoaderFailureError, check

    check({"bad_image": 1, "filled": 1}, read=10, max_fraction=0.001)  # 1 <= 0.001 * 1000
    check({"filled": 500, "ignored_member": 9}, read=10, max_fraction=0.001)  # repeats are not failures
    with pytest.raises(LoaderFailureError, match="2 of 10 samples"):
        check({"bad_image": 2}, read=10, max_fraction=0.001)
    check({"bad_image": 20}, read=20 * MIN_SAMPLES, max_fraction=0.001)
    with pytest.raises(LoaderFailureError):
        check({"bad_image": 21, "corrupt_shard": 1}, read=20 * MIN_SAMPLES, max_fraction=0.001)


def test_log_rows_reach_the_configured_tracker_and_a_missing_one_only_warns(tmp_path, monkeypatch):
    """`log_with` goes through accelerate's tracker API: the config at start, every log row (numbers,
    loader counters as loader/<kind>) at its step, finish at the end. A tracker whose package is
    not installed is a warning, never a failed run."""
    from crop.train import accel

    Recorder = recording_tracker()

    monkeypatch.setattr(accel, "tracker_spec", lambda log_with: [Recorder()])
    train(_cfg(tmp_path / "run", max_steps=3, save_every=0, log_with="tensorboard"), log=lambda s: None)
    seen = Recorder.seen
    assert seen["config"]["lr"] == 2e-3 and seen["finished"]
    assert [s for s, _ in seen["rows"]] == [1, 2, 3] and {"loss", "lr"} <= set(seen["rows"][0][1])
    monkeypatch.undo()
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    with pytest.warns(UserWarning, match="log_with='tensorboard': the tensorboard package is not installed"):
        out = train(_cfg(tmp_path / "run2", max_steps=1, save_every=0, log_with="tensorboard"), log=lambda s: None)
    assert out["steps"] == 1
