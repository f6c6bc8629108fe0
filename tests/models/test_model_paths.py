"""A mistyped local model path is named as missing, never sent to the Hub as a repo id."""

from __future__ import annotations

import pytest

from crop.cli import main
from crop.models.paths import check_model_source


@pytest.mark.parametrize("value", ["/missing/dir", "./missing", "../x/y", "runs/x/final", "~/nope/model"])
def test_local_looking_paths_that_do_not_exist_are_refused(value):
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        check_model_source(value)


@pytest.mark.parametrize("value", ["Qwen/Qwen2-VL-2B-Instruct", "gpt2"])
def test_hub_ids_pass_through(value):
    assert check_model_source(value) == value


def test_existing_folder_and_file(tmp_path):
    assert check_model_source(str(tmp_path)) == str(tmp_path)
    (tmp_path / "f.bin").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        check_model_source(str(tmp_path / "f.bin"))


def test_predict_regions_with_a_missing_model_folder_is_one_line(tmp_path, capsys):
    """The new user's case: `crop predict-regions --model /missing/dir` used to end in a Hub repo-id error."""
    import json

    rows = tmp_path / "q.jsonl"
    rows.write_text(json.dumps({"question_id": 1, "image": "a.png", "text": "What?"}) + "\n")
    argv = ["predict-regions", "--model", "/missing/dir", "--input", str(rows), "--output", str(tmp_path / "o.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/missing/dir: no such localizer folder" in err


def test_predict_regions_counts_its_questions_for_the_progress_bar(tmp_path):
    """The bar's total: rows of a question file (no image loaded), region samples of shards."""
    import json

    import importlib.util
    from pathlib import Path

    from crop.models.localizer_cmd import count_inputs

    rows = tmp_path / "q.jsonl"
    rows.write_text("".join(json.dumps({"question_id": i, "image": "missing.png", "text": f"Q{i}?"}) + "\n"
                            for i in range(5)))
    assert count_inputs([str(rows)]) == 5
    spec = importlib.util.spec_from_file_location("tinyshards", Path(__file__).parents[1] / "viz" / "tinyshards.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    info = tiny.make_dataset(tmp_path / "ds", shards=2)
    assert count_inputs([str(tmp_path / "ds")]) == sum(r["kind"] == "region" for r in info["records"]) > 0
