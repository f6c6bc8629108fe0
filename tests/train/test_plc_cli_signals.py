"""train-plc as a user runs it: SIGTERM to the CLI in a subprocess (a cluster's pre-emption) exits
143 with a checkpoint and the exact resume command, and running that command finishes the run with
one log row per step; log_with sends the config and every row to accelerate's tracker."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time

import pytest
from recording_tracker import recording_tracker

from test_plc_train import ROOT, tiny_cfg, tiny_model, write_shards
from test_plc_workers import _samples


def test_sigterm_to_the_cli_checkpoints_and_the_printed_command_resumes(tmp_path):
    write_shards(tmp_path / "shards", _samples())
    out = tmp_path / "run"
    argv = ["train-plc", "--config", str(ROOT / "configs/plc-tiny.yaml"), "--shards", str(tmp_path / "shards"),
            "--output-dir", str(out), "--set", "train.epochs=200", "--set", "train.log_every=1",
            "--set", "train.save_every=1000", "--set", "train.export_final=false"]
    proc = subprocess.Popen([sys.executable, "-m", "crop.cli", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM received" in err and "Traceback" not in err
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    steps = [json.loads(r)["step"] for r in log.read_text().splitlines()]
    assert len(ckpts) == 1 and ckpts[0].name == f"step-{steps[-1]:06d}"
    line = next(x for x in err.splitlines() if x.startswith("resume with: "))
    resume = shlex.split(line[len("resume with: "):])
    assert resume[:2] == ["crop", "train-plc"] and "--output-dir" in resume
    # the printed command, with a cap so the test ends (max_steps is operational: same run)
    rc = subprocess.run([sys.executable, "-m", "crop.cli", *resume[1:], "--set", f"train.max_steps={steps[-1] + 2}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert rc.returncode == 0, rc.stderr[-2000:]
    assert "resumed from" in rc.stderr
    after = [json.loads(r)["step"] for r in log.read_text().splitlines()]
    assert after == list(range(1, steps[-1] + 3))


def test_log_with_sends_config_and_every_row_to_the_tracker(tmp_path, monkeypatch):
    from crop.train import accel
    from crop.train.plc import train

    Recorder = recording_tracker()

    monkeypatch.setattr(accel, "tracker_spec", lambda log_with: [Recorder()])
    cfg = tiny_cfg(tmp_path / "run", epochs=1, batch_size=2, log_with="tensorboard")
    model, tok, proc = tiny_model(cfg)
    samples = _samples()[:6]
    train(cfg, model, tok, proc, samples)
    seen = Recorder.seen
    assert seen["config"]["optim.lr"] == cfg.optim.lr and seen["finished"]
    assert [s for s, _ in seen["rows"]] == [1, 2, 3] and {"loss", "lr", "samples_per_s"} <= set(seen["rows"][0][1])
    monkeypatch.undo()
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    with pytest.warns(UserWarning, match="log_with='tensorboard': the tensorboard package is not installed"):
        out = train(tiny_cfg(tmp_path / "run2", epochs=1, batch_size=2, max_steps=1, log_with="tensorboard"),
                    *tiny_model(cfg), samples)
    assert out["step"] == 1
