"""``crop publish``: the plan, the dry run, and the arguments the Hub calls receive (fakes only there)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from crop.cli import main
from crop.data import publish

_spec = importlib.util.spec_from_file_location("tinyshards", Path(__file__).parents[1] / "viz" / "tinyshards.py")
tinyshards = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tinyshards)

SECRET = "hf_notarealtoken_but_must_never_be_printed_123"
EXPECTED = ["manifest.json", "README.md", "stats.json", "rejects.jsonl",
            "tiny-000000.tar", "tiny-000000.stats.json", "tiny-000001.tar", "tiny-000001.stats.json"]


@pytest.fixture
def folder(tmp_path):
    tinyshards.make_dataset(tmp_path, shards=2, with_card=True)
    (tmp_path / "notes.txt").write_text("private scratch file")  # must never be uploaded
    return tmp_path


@pytest.fixture
def calls(monkeypatch):
    """Replace only the network methods of HfApi; record what they were given."""
    seen = []

    def fake(name):
        def method(self, *args, **kwargs):
            seen.append((name, args, kwargs))
        return method

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, fake(name))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return seen


def test_plan_lists_manifest_files_only(folder):
    plan = publish.plan_upload(str(folder))
    assert [u.path_in_repo for u in plan] == EXPECTED
    for u in plan:
        assert u.size == os.path.getsize(folder / u.path_in_repo) and u.local == str(folder / u.path_in_repo)


def test_dry_run_lists_files_and_sizes_without_network(folder, monkeypatch, capsys):
    def boom(*a, **k):
        raise AssertionError("network call in a dry run")

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, boom)
    assert main(["publish", str(folder), "--repo-id", "org/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "https://huggingface.co/datasets/org/tiny" in out and "dry run" in out
    for name in EXPECTED:
        line = f"{folder / name} -> {name}  ({publish._human(os.path.getsize(folder / name))})"
        assert any(row.strip().replace("  ->", " ->").startswith(str(folder / name)) and row.rstrip().endswith(
            line.split(" -> ")[1]) for row in out.splitlines()), line
    assert "notes.txt" not in out
    assert f"{len(EXPECTED)} files" in out


def test_upload_sends_exact_files_to_dataset_repo(folder, calls, capsys):
    assert main(["publish", str(folder), "--repo-id", "org/tiny", "--private", "--revision", "v1"]) == 0
    names = [c[0] for c in calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    _, args, kw = calls[0]
    assert args == ("org/tiny",) and kw == {"repo_type": "dataset", "private": True, "exist_ok": True}
    _, args, kw = calls[1]
    assert args == ("org/tiny",) and kw["branch"] == "v1" and kw["repo_type"] == "dataset"
    _, args, kw = calls[2]
    assert kw["repo_id"] == "org/tiny" and kw["repo_type"] == "dataset" and kw["revision"] == "v1"
    assert Path(kw["folder_path"]) == folder
    assert sorted(kw["allow_patterns"]) == sorted(EXPECTED)
    out = capsys.readouterr().out
    assert SECRET not in out


def test_upload_main_branch_skips_create_branch(folder, calls):
    assert main(["publish", str(folder), "--repo-id", "org/tiny"]) == 0
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][2]["private"] is False and calls[1][2]["revision"] is None


def test_prefers_upload_large_folder_when_available(folder, calls, monkeypatch):
    def large(self, **kwargs):
        calls.append(("upload_large_folder", (), kwargs))

    monkeypatch.setattr(HfApi, "upload_large_folder", large, raising=False)
    assert main(["publish", str(folder), "--repo-id", "org/tiny", "--private"]) == 0
    assert [c[0] for c in calls] == ["upload_large_folder"]
    kw = calls[0][2]
    assert kw["repo_type"] == "dataset" and kw["private"] is True and Path(kw["folder_path"]) == folder
    assert sorted(kw["allow_patterns"]) == sorted(EXPECTED)


def test_no_token_is_a_clear_error(folder, calls, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "empty_hf_home" / "token"))
    monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(tmp_path / "empty_hf_home" / "stored_tokens"))
    assert main(["publish", str(folder), "--repo-id", "org/tiny"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err and calls == []


@pytest.mark.parametrize("breakage,message", [
    ("no_card", "README.md is missing (write it with `crop card <folder>`)"),
    ("truncated", "tiny-000001.tar: 10 bytes on disk, manifest says"),
    ("missing_shard", "tiny-000000.tar: listed in manifest.json but missing"),
])
def test_broken_folders_are_refused_before_upload(folder, calls, capsys, breakage, message):
    if breakage == "no_card":
        (folder / "README.md").unlink()
    elif breakage == "truncated":
        (folder / "tiny-000001.tar").write_bytes(b"0123456789")
    else:
        (folder / "tiny-000000.tar").unlink()
    assert main(["publish", str(folder), "--repo-id", "org/tiny"]) == 2
    assert message in capsys.readouterr().err and calls == []


def test_bad_repo_id(folder, calls, capsys):
    assert main(["publish", str(folder), "--repo-id", "tiny"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err and calls == []


def test_export_writes_exactly_the_upload_and_needs_no_network(folder, calls, tmp_path, capsys):
    out = tmp_path.parent / (tmp_path.name + "-export")
    assert main(["publish", str(folder), "--export", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPECTED)  # notes.txt stays behind
    for name in EXPECTED:
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    assert calls == [] and "exactly what would be uploaded" in capsys.readouterr().out
    assert main(["publish", str(folder), "--export", str(out)]) == 2  # never into a non-empty folder
    assert "not an empty folder" in capsys.readouterr().err


def _transport_errors():
    """The exception a failed connection raises in each HTTP stack huggingface_hub has used."""
    import importlib

    out = [ConnectionError]
    for module, name in (("requests", "ConnectionError"), ("httpx", "ConnectError"), ("httpx2", "ConnectError")):
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return out


@pytest.mark.parametrize("exc_type", _transport_errors(), ids=lambda t: f"{t.__module__}.{t.__name__}")
def test_network_failure_is_one_line(folder, monkeypatch, capsys, exc_type):
    """No network: the Hub client's transport error (its class depends on the huggingface_hub
    release) becomes one line naming the cause, exit 1, no traceback."""

    def offline(self, *args, **kwargs):
        raise exc_type("[Errno -2] Name or service not known")

    for name in ("create_repo", "upload_folder", "upload_large_folder"):
        monkeypatch.setattr(HfApi, name, offline, raising=False)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert main(["publish", str(folder), "--repo-id", "org/tiny"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "upload to org/tiny failed" in err and "rerun" in err
    assert SECRET not in err


def test_network_errors_cover_the_installed_hub_stack():
    import huggingface_hub.errors

    assert huggingface_hub.errors.HfHubHTTPError in publish.network_errors()
    assert OSError in publish.network_errors()
