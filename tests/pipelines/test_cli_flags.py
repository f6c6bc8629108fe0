"""beam_runner.py as a new user meets it: misspelt flags and runners fail with a suggestion, a
wrong image root fails with its reasons, and published files name no path of the build machine."""

from __future__ import annotations

import json
import os

import pytest

from pipelines.main import run
from pipeline_support import REPO


@pytest.mark.parametrize("argv, message", [
    (["--recipie", "recipes/paper-610k.yaml"], "unknown flag --recipie; did you mean --recipe?"),
    (["--ouput", "/tmp/x"], "unknown flag --ouput; did you mean --output?"),
    (["--runner", "Direkt"], "unknown runner 'Direkt'; did you mean Direct?"),
    (["--direct_num_wokers", "2"], "did you mean --direct_num_workers?"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_misspelt_flags_and_runners_fail_before_anything_runs(tmp_path, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run(argv + ["--output", str(out)] if "--ouput" not in argv else argv)
    assert message in str(e.value)
    assert not out.exists()


def test_beam_options_still_pass_through(tmp_path):
    manifest = run(["--runner", "DirectRunner", "--direct_running_mode", "in_memory", "--direct_num_workers", "1",
                    "--output", str(tmp_path / "out")])
    assert manifest["totals"]["samples"] > 0


def test_wrong_image_root_fails_with_the_top_reasons(tmp_path):
    with pytest.raises(SystemExit) as e:
        run(["--output", str(tmp_path / "out"), "--image-root", str(tmp_path)])
    msg = str(e.value)
    assert msg.startswith("error: reject rate above --max-reject-fraction 0.5: ") and "missing_image" in msg
    assert "\n" not in msg
    assert (tmp_path / "out" / "rejects.jsonl").is_file()  # the outputs stay for inspection
    # the limit is a flag too: accepting everything lets the same build pass
    shutil_out = tmp_path / "out2"
    run(["--output", str(shutil_out), "--image-root", str(tmp_path), "--max-reject-fraction", "1"])


def _published_text(folder) -> dict[str, str]:
    from crop.data.publish import plan_upload

    return {u.path_in_repo: open(u.local, "rb").read().decode("utf-8", "replace") for u in plan_upload(str(folder))
            if not u.path_in_repo.endswith(".tar")}


@pytest.mark.parametrize("omit", [False, True])
def test_published_files_hold_no_local_paths(tmp_path, omit):
    out = tmp_path / "out"
    run(["--output", str(out)] + (["--omit-input-roots"] if omit else []))
    texts = _published_text(out)
    machine = [REPO, str(tmp_path), os.path.expanduser("~")]
    for name, text in texts.items():
        leaks = [m for m in machine if m in text]
        if name == "manifest.json" and not omit:
            manifest = json.loads(text)
            # the input roots, once, in recipe.inputs; nowhere else in the manifest
            roots = [v for v in manifest["recipe"]["inputs"].values() if v]
            assert roots and all(r.startswith(REPO) for r in roots)
            rest = json.dumps({k: v for k, v in manifest.items() if k != "recipe"})
            assert not [m for m in machine if m in rest]
            assert all(i["input"] and "/" not in i["path"] for i in manifest["inputs"])
        else:
            assert not leaks, f"{name} names {leaks}"
