"""One record never stops the build (issue 15).

* The two build killers of the issue, end to end: a lone surrogate escape (valid JSON) in a
  Visual-CoT question and answer, and a folder at an image path.
* Any exception that still escapes a record's processing (a bug) becomes an ``internal_error``
  reject with the exception's class and message; the build writes everything, reconciles, says
  so in the summary, and exits with status 1 at the end. ``--fail-on-internal-error`` fails at
  the first one instead (CI, debugging).
"""

import json
import os

import pytest

from pipelines import build
from pipelines.main import run


def _corpus(tmp_path, extra_lines=()):
    from PIL import Image

    root = tmp_path / "images"
    (root / "cot" / "gqa" / "folder.jpg").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (10 * i, 0, 0)).save(root / "cot" / "gqa" / f"{i}.jpg")
    rows = [json.dumps({"question": f"q{i}", "answer": "a", "image": f"{i}.jpg", "width": 40, "height": 30,
                        "bboxs": [[1, 1, 20, 20]]}) for i in range(3)]
    (tmp_path / "viscot").mkdir()
    (tmp_path / "viscot" / "gqa_cot_train.jsonl").write_text("\n".join([*rows, *extra_lines]) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: total
inputs: {{visual_cot_dir: {tmp_path / 'viscot'}, image_root: {root}}}
sources: {{gqa: {{}}}}
shards: {{name: t, max_samples: 2}}
""")
    return str(recipe)


def _rejects(out):
    return [json.loads(line) for line in open(os.path.join(out, "rejects.jsonl"))]


def test_the_issues_build_killers_become_rejects(tmp_path):
    """Before: UnicodeEncodeError in make_key (question), in Beam's coder (answer), and
    IsADirectoryError in WriteShards (folder); exit 1, no rejects file."""
    bad = ['{"question": "\\ud83d", "answer": "a", "image": "0.jpg", "width": 40, "height": 30, "bboxs": [[1, 1, 5, 5]]}',
           '{"question": "q9", "answer": "\\ud83d", "image": "0.jpg", "width": 40, "height": 30, "bboxs": [[1, 1, 5, 5]]}',
           '{"question": "q8", "answer": "a", "image": "folder.jpg", "width": 40, "height": 30, "bboxs": [[1, 1, 5, 5]]}']
    out = str(tmp_path / "out")
    manifest = run(["--recipe", _corpus(tmp_path, bad), "--output", out, "--log-level", "WARNING"])
    assert manifest["totals"]["per_source"] == {"gqa": 3} and manifest["totals"]["rejected"] == {"gqa": 3}
    assert [(r["line"], r["reason"]) for r in _rejects(out)] == [
        (4, "invalid_unicode"), (5, "invalid_unicode"), (6, "not_a_regular_file")]


def _plant(monkeypatch, where):
    """Make one record's processing raise a bug-like exception in the parser or the writer."""
    if where == "parse":
        real = build.parse_cot_line

        def parse(source, dirs, file, line, text, **kw):
            if line == 2:
                raise KeyError("planted bug")
            return real(source, dirs, file, line, text, **kw)
        monkeypatch.setattr(build, "parse_cot_line", parse)
    else:
        real = build.finalize

        def fin(cand, *a, **kw):
            if cand["line"] == 2:
                raise ZeroDivisionError("planted bug")
            return real(cand, *a, **kw)
        monkeypatch.setattr(build, "finalize", fin)


@pytest.mark.parametrize("where, stage, exc", [("parse", "parse", "KeyError"), ("write", "write", "ZeroDivisionError")])
def test_an_escaping_exception_is_an_internal_error_reject_and_exit_status_1(tmp_path, monkeypatch, capsys, where,
                                                                          stage, exc):
    _plant(monkeypatch, where)
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit) as e:
        run(["--recipe", _corpus(tmp_path), "--output", out, "--log-level", "CRITICAL"])
    assert "1 record(s) hit an internal error" in str(e.value)  # SystemExit(str): status 1, one clear line
    # Everything was written and reconciles: the record is a reject, the others are samples.
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["totals"]["per_source"] == {"gqa": 2} and manifest["totals"]["rejected"] == {"gqa": 1}
    [r] = _rejects(out)
    assert (r["line"], r["stage"], r["reason"]) == (2, stage, "internal_error")
    assert r["detail"].startswith(exc + ": ") and "planted bug" in r["detail"]
    stats = json.load(open(os.path.join(out, "stats.json")))
    assert stats["rejected_by_reason"] == {"gqa": {"internal_error": 1}}
    assert "INTERNAL ERRORS: 1 record(s)" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["parse", "write"])
def test_fail_on_internal_error_stops_at_the_first(tmp_path, monkeypatch, where):
    _plant(monkeypatch, where)
    out = tmp_path / "out"
    with pytest.raises(Exception, match="planted bug") as e:
        run(["--recipe", _corpus(tmp_path), "--output", str(out), "--log-level", "CRITICAL",
             "--fail-on-internal-error"])
    assert not isinstance(e.value, SystemExit)
    assert not (out / "manifest.json").exists()


def test_summary_line_is_red_on_a_terminal_only():
    from pipelines.summary import internal_error_line

    stats = {"rejected_by_reason": {"gqa": {"internal_error": 2, "missing_image": 1}, "llava": {"internal_error": 1}}}
    assert internal_error_line(stats).startswith("  INTERNAL ERRORS: 3 record(s)")
    assert internal_error_line(stats, color=True).startswith("\033[31m")
    assert internal_error_line({"rejected_by_reason": {"gqa": {"missing_image": 1}}}) is None


def test_an_io_error_reading_an_image_fails_the_build_not_the_record(tmp_path, monkeypatch):
    """A flaky disk or network says nothing about the record: the bundle fails (runners retry
    it) instead of publishing an internal_error reject for a good record."""
    import errno

    from pipelines import images

    def eio(self, rel, path):
        raise OSError(errno.EIO, "simulated I/O error", rel)

    monkeypatch.setattr(images.ImageRoot, "_read_local", eio)
    with pytest.raises(Exception, match="simulated I/O error"):
        run(["--recipe", _corpus(tmp_path), "--output", str(tmp_path / "out"), "--log-level", "CRITICAL"])
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_integer_beyond_64_bits_in_the_llava_json_is_one_reject_not_a_dead_file(tmp_path):
    """ijson's C backend with use_float=True stopped the whole file at such an integer."""
    from pipelines.build import read_input

    items = [{"id": 2 ** 80, "image": "x.jpg", "conversations": []}, {"id": "ok", "score": 0.5, "conversations": []}]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(items))
    got = list(read_input(("llava_json", "llava", str(path))))
    assert [g[3]["id"] for g in got] == [2 ** 80, "ok"]
    assert isinstance(got[1][3]["score"], float)  # Decimal made float
