"""The main job on a non-local Beam filesystem: ``memtest://``, an in-memory object store (memfs).

Issue 3 asks that every path go through Beam's ``FileSystems`` so that ``gs://``, ``s3://`` and
``hdfs://`` work. Here the demo corpus is uploaded to ``memtest://`` and built into
``memtest://`` on the in-memory Direct runner, then compared with the same build into a local
folder (the session ``demo_build``):

* shards (``.tar``) are byte-identical as they are;
* every other output object is byte-identical once the corpus path is swapped for its memtest
  URL: the paths legitimately appear in the manifest (resolved recipe inputs, input checksums),
  in ``missing_image`` reject details (in ``rejects.jsonl`` and the shard's ``.stats.json``),
  in ``_build.json`` and the card; ``_build.json``'s fingerprint (a hash over paths and mtimes)
  is the one field compared by shape only;
* no local path leaks into the remote output, no temp object is left, nothing is written to the
  local working folder, and the uploaded inputs are untouched.

Why each check can fail (planted bugs, reasoned and tried): an ``open()`` of a memtest image
path fails, so every image sample becomes a ``missing_image`` reject and the shards differ; an
``open(..., "wb")`` after ``os.makedirs`` writes ``memtest:/...`` under the working folder (empty
folder check) and the object is missing (name-set check); a listing that returns local paths
puts them in the manifest (no-local-path check); ``os.path.abspath`` of an input URL gives
``<cwd>/memtest:/...`` (identity and mangled-URL checks); a temp object copied instead of renamed
is left behind; a resume that rewrites completed shards changes their mtimes. Each of these was
planted in a scratch copy and made the tests fail.
"""

import json
import os
import re

import memfs
import pytest
from pipeline_support import DEMO_RECIPE, REPO, copy_tree_bytes

from pipelines import shards as io_
from pipelines.main import run
from pipelines.recipe import metadata_file_names

CORPUS = os.path.join(REPO, "pipelines", "demo_corpus")
BUCKET = "memtest://crop-test"
REMOTE_CORPUS = BUCKET + "/corpus"
INPUT_FLAGS = ["--visual-cot-dir", REMOTE_CORPUS + "/viscot",
               "--llava-json", REMOTE_CORPUS + "/llava/llava_v1_5_mix665k.json",
               "--image-root", REMOTE_CORPUS + "/images"]
def _build(out, *extra):
    return run(["--recipe", DEMO_RECIPE, "--output", out, "--log-level", "WARNING", *INPUT_FLAGS, *extra])


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """The demo corpus uploaded to memtest:// and built into memtest:// from an empty cwd."""
    memfs.reset()
    assert memfs.put_tree(CORPUS, REMOTE_CORPUS) > 50
    inputs_before = memfs.tree(REMOTE_CORPUS)
    cwd = tmp_path_factory.mktemp("cwd")
    out = BUCKET + "/out"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        manifest = _build(out)
        yield {"out": out, "manifest": manifest, "cwd": cwd, "inputs_before": inputs_before,
               "keys_after": memfs.keys()}
    memfs.reset()


def _localize(data: bytes, local_out: str, remote_out: str) -> bytes:
    """Local output bytes with the local corpus and output paths written as their memtest URLs."""
    return data.replace(CORPUS.encode(), REMOTE_CORPUS.encode()).replace(local_out.encode(), remote_out.encode())


def test_remote_build_is_byte_identical_to_local(remote, demo_build):
    local_out, local_manifest = demo_build
    local, objects = copy_tree_bytes(local_out), memfs.tree(remote["out"])
    assert sorted(objects) == sorted(local)  # same names: shards, markers, manifest, stats, rejects, card
    assert any(n.endswith(".tar") for n in objects) and "README.md" in objects and "manifest.json" in objects
    for name, data in objects.items():
        if name.endswith(".tar"):
            assert data == local[name], f"{name} differs from the local build"
        elif name == "_build.json":
            a, b = json.loads(data), json.loads(_localize(local[name], local_out, remote["out"]))
            assert re.fullmatch("[0-9a-f]{64}", a.pop("fingerprint")) and b.pop("fingerprint")
            assert a == b
        else:
            assert data == _localize(local[name], local_out, remote["out"]), f"{name} differs from the local build"
    manifest = remote["manifest"]
    assert manifest["shards"] == local_manifest["shards"] and manifest["totals"] == local_manifest["totals"]
    # The input checksums name each file relative to its recipe input (the roots are stated once,
    # in recipe.inputs), and hash the memtest objects' bytes.
    assert manifest["recipe"]["inputs"]["visual_cot_dir"] == REMOTE_CORPUS + "/viscot"
    assert [(i["input"], i["path"]) for i in manifest["inputs"]] == sorted(
        [("llava_json", "llava_v1_5_mix665k.json")]
        + [("visual_cot_dir", metadata_file_names(s)[0]) for s in manifest["recipe"]["sources"]])
    assert manifest["inputs"] == local_manifest["inputs"]  # same files, same bytes, wherever they live
    rejects = [json.loads(line) for line in objects["rejects.jsonl"].decode().splitlines()]
    missing = [r for r in rejects if r["reason"] == "missing_image"]
    # Details name image paths relative to the image root: the same bytes for any root, and no
    # local machine path in a file that may be published.
    assert missing and all("under the image root" in r["detail"] and "://" not in r["detail"] for r in missing)


def test_remote_build_leaves_no_local_file_temp_object_or_local_path(remote):
    assert os.listdir(remote["cwd"]) == []  # e.g. no "memtest:/..." folder made by os.makedirs
    assert remote["keys_after"] == sorted(memfs.keys(REMOTE_CORPUS + "/") + memfs.keys(remote["out"] + "/"))
    assert not [k for k in memfs.keys(remote["out"]) if io_.TMP_MARK in k]
    assert memfs.tree(REMOTE_CORPUS) == remote["inputs_before"]  # inputs untouched
    for name, data in memfs.tree(remote["out"]).items():
        assert CORPUS.encode() not in data and REPO.encode() not in data, f"{name} names a local path"
        assert not re.search(rb"memtest:/(?!/)", data), f"{name} holds a URL mangled by os.path"


def test_remote_rerun_resumes_skipping_completed_shards(remote):
    first = memfs.tree(remote["out"])
    out = BUCKET + "/resume"
    memfs.copy_prefix(remote["out"], out)
    # As a crash leaves it: shard 1 never written, shard 2's tar renamed but its marker not yet
    # written, no final outputs.
    shards = sorted(n for n in first if n.endswith(".tar"))
    assert len(shards) >= 3
    for name in [shards[1], io_.stats_file_name(shards[1]), io_.stats_file_name(shards[2]),
                 "manifest.json", "stats.json", "rejects.jsonl", "README.md"]:
        memfs.delete(f"{out}/{name}")
    done = {n: memfs.mtime(f"{out}/{n}") for n in (shards[0], io_.stats_file_name(shards[0]))}
    _build(out)
    assert memfs.tree(out) == {n: d.replace(remote["out"].encode(), out.encode()) for n, d in first.items()}
    for name, mtime in done.items():  # completed shards are skipped, not rewritten
        assert memfs.mtime(f"{out}/{name}") == mtime
    assert memfs.mtime(f"{out}/{shards[2]}") > max(done.values())  # an unmarked shard is rewritten


def test_remote_stale_temp_object_is_cleaned_on_resume(remote):
    out = BUCKET + "/stale"
    memfs.copy_prefix(remote["out"], out)
    stale = f"{out}/crop-demo-000002.tar{io_.TMP_MARK}deadbeef"
    memfs.put(stale, b"partial upload")
    _build(out)
    assert not memfs.keys(stale)


def test_remote_rerun_of_other_recipe_refuses_without_overwrite(remote):
    out = BUCKET + "/other"
    memfs.copy_prefix(remote["out"], out)
    before = memfs.tree(out)
    try:
        _build(out, "--shard-max-samples", "7")
        outcome = "built"
    except Exception as e:  # noqa: BLE001 - today: ReconciliationError, the old shards were "resumed"
        outcome = e
    assert isinstance(outcome, FileExistsError) and "--overwrite" in str(outcome), \
        f"a build of another recipe was not refused: {outcome!r}"[:400]
    assert memfs.tree(out) == before  # refused before touching anything
    manifest = _build(out, "--shard-max-samples", "7", "--overwrite")
    names = {s["shard"] for s in manifest["shards"]}
    assert len(names) > 4
    expected = names | {io_.stats_file_name(n) for n in names} | {
        "manifest.json", "stats.json", "rejects.jsonl", "README.md", "_build.json"}
    assert set(memfs.tree(out)) == expected  # nothing left of the old build


def test_remote_card_is_written_through_beam_filesystems(remote):
    out = BUCKET + "/card"
    _build(out)
    assert memfs.read(out + "/README.md") == memfs.read(remote["out"] + "/README.md").replace(
        remote["out"].encode(), out.encode())


# --------------------------------------------------------------------------- helpers, and the fake itself
def test_read_bytes_tells_a_missing_object_from_a_failing_read():
    base = BUCKET + "/unit-read"
    memfs.put(base + "/a.jpg.gz", b"\x1f\x8b not really gzip")
    assert io_.read_bytes(base + "/a.jpg.gz") == b"\x1f\x8b not really gzip"  # raw: never decompressed
    with pytest.raises(FileNotFoundError):  # a reject (missing_image), whatever the client says
        io_.read_bytes(base + "/missing.jpg")
    memfs.FAIL_OPEN[base + "/a.jpg.gz"] = ConnectionResetError("flaky network")
    try:
        with pytest.raises(ConnectionResetError):  # must fail the build, never become a reject
            io_.read_bytes(base + "/a.jpg.gz")
    finally:
        memfs.FAIL_OPEN.clear()


def test_list_files_on_an_object_store_and_a_local_folder(tmp_path):
    base = BUCKET + "/unit-list"
    for k in ("x.tar", "x.tar.tmp-1", "sub/y.tar", "x.tarz"):
        memfs.put(f"{base}/{k}", b"1")
    memfs.put(BUCKET + "/unit-list-sibling/z.tar", b"1")
    assert not io_.exists(base)  # no folder objects: why prepare_output must not check exists()
    assert io_.list_files(base) == [f"{base}/{k}" for k in ("x.tar", "x.tar.tmp-1", "x.tarz")]
    assert io_.list_stale_temp_files(base) == [f"{base}/x.tar.tmp-1"]
    assert io_.list_files(BUCKET + "/nothing-here") == []
    (tmp_path / "sub").mkdir()
    for k in ("x.tar", "x.tar.tmp-1", "sub/y.tar"):
        (tmp_path / k).write_bytes(b"1")
    assert io_.list_files(str(tmp_path)) == [str(tmp_path / "x.tar"), str(tmp_path / "x.tar.tmp-1")]
    assert io_.list_stale_temp_files(str(tmp_path)) == [str(tmp_path / "x.tar.tmp-1")]
    assert io_.list_files(str(tmp_path / "absent")) == []


def test_memfs_behaves_like_an_object_store():
    from apache_beam.io.filesystems import FileSystems

    base = BUCKET + "/unit-fs"
    f = FileSystems.create(base + "/a")
    f.write(b"hello")
    assert not FileSystems.exists(base + "/a")  # an upload is visible only once closed
    f.close()
    assert FileSystems.exists(base + "/a") and not FileSystems.exists(base)
    FileSystems.rename([base + "/a"], [base + "/b"])
    assert memfs.keys(base + "/") == [base + "/b"] and memfs.read(base + "/b") == b"hello"
    assert [m.path for m in FileSystems.match([base + "/*"])[0].metadata_list] == [base + "/b"]
    with FileSystems.open(base + "/b") as r:
        assert r.read() == b"hello"
    FileSystems.delete([base])  # a "folder": every object under the prefix
    assert memfs.keys(base + "/") == []


def _prefetch_threads():
    import threading

    return {t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor-") and t.is_alive()}


def test_a_failing_remote_shard_write_stops_its_image_reader_threads(remote, monkeypatch):
    from pipelines import build

    calls = [0]
    real = build.finalize

    def finalize_failing_on_third(*a, **kw):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("planted finalize failure")
        return real(*a, **kw)

    monkeypatch.setattr(build, "finalize", finalize_failing_on_third)
    before = _prefetch_threads()
    try:
        with pytest.raises(Exception, match="planted finalize failure") as err:
            _build(BUCKET + "/failing", "--fail-on-internal-error")
        # The error (and its traceback's frames) is still alive, as in a runner that reports or retries.
        leaked = _prefetch_threads() - before
        assert not leaked, f"{len(leaked)} image-reader threads still alive after the shard write failed"
    finally:  # finalize any leaked generator now, in this thread, not in a later test's threading call
        import gc

        del err
        gc.collect()
