"""crop eval's per-phase figures (paper Sec. 4.4: image encoding, forward, KV cache; the localizer
apart) and ``--ahead-of-time`` (issue 19), on tiny real-config models (random weights).

The references are written by hand here, not read from the code under test:
- KV bytes: a Llama layer caches keys and values of every position it has seen, 2 x hidden x 4
  bytes (fp32) per position; ``generate`` feeds every token but the last one it returns; FastV at
  layer K drops ``in - kept`` prompt positions from layers K.. (so the cache shrinks by exactly that);
- spans: a vision tower made slower by a known sleep must show up in ``encode_s`` (and only there);
- ahead-of-time: with a localizer and a VLM that each take a known time, the VLM waits for the
  first region only; the localizer runs on the worker thread; the answers do not change.
"""

from __future__ import annotations

import argparse
import threading
import time

import pytest

torch = pytest.importorskip("torch")

from crop.eval.runner import EvalConfig, add_arguments, run_eval  # noqa: E402
from crop.eval.scorers.common import read_jsonl  # noqa: E402

LAYERS, HIDDEN, ELEM = 3, 32, 4  # tests/eval/conftest.py's tiny Llama text config, fp32


def _cfg(model_dir, bench, out, family="llava", **method):
    return EvalConfig.from_dict({"model": {"path": str(model_dir), "family": family, "dtype": "float32",
                                           "device": "cpu"},
                                 "method": {"layer": 1, **method}, "output_dir": str(out),
                                 "benchmarks": [dict(bench, max_new_tokens=3)]})


def _rows(out, bench):
    return read_jsonl(out / bench["name"] / "efficiency.jsonl")


def _slow(monkeypatch, cls, seconds: float):
    """Make ``cls.forward`` take at least ``seconds`` longer (a known cost to find in the spans)."""
    forward = cls.forward

    def slow_forward(self, *a, **k):
        time.sleep(seconds)
        return forward(self, *a, **k)

    monkeypatch.setattr(cls, "forward", slow_forward)


def test_phase_fields_and_kv_bytes(tiny_llava_dir, tiny_benchmarks, tmp_path):
    torch.set_num_threads(1)
    bench = tiny_benchmarks["gqa"]
    run_eval(_cfg(tiny_llava_dir, bench, tmp_path / "none", name="none"))
    run_eval(_cfg(tiny_llava_dir, bench, tmp_path / "fastv", name="fastv", budget=5))
    per_pos = 2 * HIDDEN * ELEM  # keys + values of one position in one layer
    for none, fastv in zip(_rows(tmp_path / "none", bench), _rows(tmp_path / "fastv", bench)):
        for row in (none, fastv):
            assert row["encode_s"] > 0 and row["kv_cache_s"] > 0
            assert row["encode_s"] < row["prefill_s"] <= row["total_s"]
            assert row["forward_prefill_s"] == pytest.approx(row["prefill_s"] - row["encode_s"])
            assert row["decode_s"] == pytest.approx(row["total_s"] - row["prefill_s"])
            assert row["forward_calls"] == row["new_tokens"]  # one forward per returned token
            if row["forward_calls"] > 1:
                assert row["decode_s_per_token"] == pytest.approx(row["decode_s"] / (row["forward_calls"] - 1))
            assert row["kv_cache_s"] < row["total_s"]
        # unpruned: every layer holds prompt + new - 1 positions -> the prompt length
        positions, rest = divmod(none["kv_cache_bytes"], LAYERS * per_pos)
        assert rest == 0
        prompt = positions - (none["new_tokens"] - 1)
        assert prompt > none["visual_tokens_in"] == 16
        dropped = fastv["visual_tokens_in"] - fastv["visual_tokens_kept"]
        assert fastv["visual_tokens_kept"] == 5 and dropped == 11
        want = per_pos * (LAYERS * (prompt + fastv["new_tokens"] - 1) - (LAYERS - 1) * dropped)  # K = 1
        assert fastv["kv_cache_bytes"] == want
    import json

    summary = json.loads((tmp_path / "fastv" / "summary.json").read_text())["benchmarks"]["gqa"]["efficiency"]
    rows = _rows(tmp_path / "fastv", bench)
    assert summary["kv_cache_bytes_max"] == max(r["kv_cache_bytes"] for r in rows)
    assert summary["encode_s_mean"] == pytest.approx(sum(r["encode_s"] for r in rows) / len(rows))
    assert summary["ahead_of_time"] is False and "localizer_s_mean" not in summary


def test_encode_span_is_the_vision_tower(tiny_llava_dir, tiny_benchmarks, tmp_path, monkeypatch):
    from transformers.models.clip import modeling_clip

    torch.set_num_threads(1)
    _slow(monkeypatch, modeling_clip.CLIPVisionModel, 0.2)
    bench = tiny_benchmarks["gqa"]
    run_eval(_cfg(tiny_llava_dir, bench, tmp_path / "run", name="none"))
    for row in _rows(tmp_path / "run", bench):
        assert row["encode_s"] >= 0.2
        assert row["prefill_s"] >= row["encode_s"]
        assert row["forward_prefill_s"] < 0.2  # the sleep is not counted as the LLM's forward
        assert row["decode_s"] < 0.2 * (row["forward_calls"] - 1) + 0.2  # nor as decoding (tower runs once)


@pytest.fixture(scope="module")
def tiny_localizer_dir(tmp_path_factory):
    from crop.models.localizer import TinySpec, build_tiny_localizer

    path = tmp_path_factory.mktemp("tiny_localizer_phases")
    build_tiny_localizer(TinySpec(seed=3)).save_pretrained(str(path))
    return path


def _scripted(threads: list, seconds: float):
    """A localizer that takes ``seconds`` and answers one fixed region, recording its thread."""
    from crop.geometry import Region
    from crop.models.localizer import Prediction

    def predict_detailed(self, images, questions, batch_size=None):
        threads.append(threading.current_thread().name)
        time.sleep(seconds)
        return [Prediction(Region(2, 2, 5, 5), "2 2 5 5.", "strict") for _ in images]

    return predict_detailed


LOC_S, VLM_S = 0.25, 0.6  # the VLM (slowed vision tower) is slower than the localizer


def test_localizer_timed_apart_and_ahead_of_time(tiny_llava_dir, tiny_localizer_dir, tiny_benchmarks, tmp_path,
                                                 monkeypatch):
    from transformers.models.clip import modeling_clip

    from crop.models.localizer import Localizer

    torch.set_num_threads(1)
    threads: list = []
    monkeypatch.setattr(Localizer, "predict_detailed", _scripted(threads, LOC_S))
    _slow(monkeypatch, modeling_clip.CLIPVisionModel, VLM_S)
    bench = tiny_benchmarks["gqa"]
    method = {"name": "ilp", "localizer": str(tiny_localizer_dir), "budget": 4}
    run_eval(_cfg(tiny_llava_dir, bench, tmp_path / "serial", **method))
    serial_threads, threads[:] = list(threads), []
    summary = run_eval(_cfg(tiny_llava_dir, bench, tmp_path / "ahead", **method), ahead_of_time=True)
    assert serial_threads == ["MainThread"] * 2
    assert len(threads) == 2 and all(t.startswith("crop-localizer") for t in threads)

    serial, ahead = _rows(tmp_path / "serial", bench), _rows(tmp_path / "ahead", bench)
    for a, s in zip(ahead, serial):
        assert a["region"] == s["region"] == [2, 2, 5, 5]
        assert a["visual_tokens_kept"] == s["visual_tokens_kept"]
        assert a["localizer_s"] >= LOC_S and s["localizer_s"] >= LOC_S
        assert s["prefill_s"] < s["localizer_s"] + VLM_S  # the localizer is not inside the VLM's prefill
        assert "localizer_wait_s" not in s
    assert ahead[0]["localizer_wait_s"] >= 0.8 * LOC_S  # the first question waits for its region
    assert ahead[1]["localizer_wait_s"] < 0.5 * LOC_S  # the next region was computed meanwhile
    answers = [read_jsonl(tmp_path / m / "gqa" / "answers.jsonl") for m in ("serial", "ahead")]
    assert [r["text"] for r in answers[0]] == [r["text"] for r in answers[1]]
    eff = summary["benchmarks"]["gqa"]["efficiency"]
    assert eff["ahead_of_time"] is True
    assert eff["localizer_wait_s_mean"] == pytest.approx(sum(r["localizer_wait_s"] for r in ahead) / 2)


def test_ahead_of_time_needs_an_in_process_localizer(tiny_llava_dir, tiny_benchmarks, tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--config", "x.yaml", "--ahead-of-time"]).ahead_of_time is True
    assert parser.parse_args(["--config", "x.yaml"]).ahead_of_time is False
    with pytest.raises(SystemExit, match="in-process localizer"):
        run_eval(_cfg(tiny_llava_dir, tiny_benchmarks["gqa"], tmp_path / "none", name="none"), ahead_of_time=True)


@pytest.mark.parametrize("family, per_pos", [("llava_next", 2 * 32 * 4), ("qwen2_vl", 2 * 2 * 8 * 4)])
def test_other_families_report_encoding_and_cache(family, per_pos, tiny_next_dir, tiny_qwen_dir, tiny_benchmarks,
                                                  tmp_path):
    """LLaVA-NeXT's tower + projector and Qwen2-VL's ``visual`` are found; the cache bytes follow
    the family's own KV width (Qwen2-VL: 2 KV heads of 8 dims; conftest's tiny configs)."""
    torch.set_num_threads(1)
    model_dir = {"llava_next": tiny_next_dir, "qwen2_vl": tiny_qwen_dir}[family]
    bench = tiny_benchmarks["gqa"]
    run_eval(_cfg(model_dir, bench, tmp_path / "run", family, name="none"))
    for row in _rows(tmp_path / "run", bench):
        assert 0 < row["encode_s"] < row["prefill_s"]
        positions, rest = divmod(row["kv_cache_bytes"], LAYERS * per_pos)
        assert rest == 0 and positions > row["visual_tokens_in"] > 0  # prompt + new - 1 positions
