"""End-to-end builds of the demo corpus: contract, readers, determinism, resume, reconciliation."""

import glob
import json
import os
import re
import tarfile

import pytest

from crop import contract
from pipelines.main import run
from pipeline_support import DEMO_RECIPE, REPO, copy_tree_bytes

from pipelines.sources import REASONS

ALL_REASONS = set(REASONS) - {"internal_error"}  # the demo has one record per reason; internal_error is a bug


def _records(folder):
    out = {}
    for t in sorted(glob.glob(os.path.join(folder, "*.tar"))):
        with tarfile.open(t) as tf:
            names = tf.getnames()
            assert names == sorted(names), f"{t}: members not sorted"
            for m in tf.getmembers():
                assert m.mtime == 0 and m.uname == "crop" and m.gname == "crop"
                if m.name.endswith(".json"):
                    out[m.name[:-5]] = (os.path.basename(t), json.load(tf.extractfile(m)))
    return out


def test_demo_outputs_follow_the_contract(demo_build):
    out, manifest = demo_build
    contract.validate(manifest, "manifest")
    stats = json.load(open(os.path.join(out, "stats.json")))
    contract.validate(stats, "stats")
    for p in glob.glob(os.path.join(out, "*.stats.json")):
        contract.validate(json.load(open(p)), "shard_stats")
    rejects = [json.loads(line) for line in open(os.path.join(out, "rejects.jsonl"))]
    for r in rejects:
        contract.validate(r, "rejects")
    records = _records(out)
    for _, rec in records.values():
        contract.validate(rec)
    assert len(records) == manifest["totals"]["samples"] > 0
    assert {r["reason"] for r in rejects} == ALL_REASONS  # the demo has one of each
    assert not any(re.search("0x[0-9a-fA-F]{6,}", r["detail"]) for r in rejects)  # no memory address
    written = {rec["image"] for _, rec in records.values()}
    assert "cot/gqa/trailer.jpg" in written  # a JPEG with 6000 bytes after its end marker is valid
    t = manifest["totals"]
    for source, n in t["read"].items():  # reconciliation, independently re-checked here
        assert n == t["per_source"].get(source, 0) + t["rejected"].get(source, 0) + stats["capped"].get(source, 0)


def test_demo_shards_mix_sources_and_match_manifest(demo_build):
    out, manifest = demo_build
    records = _records(out)
    for entry in manifest["shards"]:
        recs = [r for shard, r in records.values() if shard == entry["shard"]]
        kinds = {r["kind"] for r in recs}
        assert kinds == {"region", "instruction"}, f"{entry['shard']} holds only {kinds}"
        assert len({r["source"] for r in recs}) >= 5
        assert len(recs) == entry["samples"]
        data = open(os.path.join(out, entry["shard"]), "rb").read()
        import hashlib
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    sizes = [s["samples"] for s in manifest["shards"]]
    assert max(sizes) - min(sizes) <= 4  # dealt round-robin; only rejects at write time unbalance


def test_image_members_are_original_bytes(demo_build):
    out, _ = demo_build
    root = os.path.join(os.path.dirname(DEMO_RECIPE), "..", "pipelines", "demo_corpus", "images")
    with tarfile.open(sorted(glob.glob(os.path.join(out, "*.tar")))[0]) as tf:
        members = {m.name: m for m in tf.getmembers()}
        for name, m in members.items():
            if name.endswith(".json"):
                rec = json.load(tf.extractfile(m))
                if rec["image"]:
                    img = [n for n in members if n.startswith(rec["key"] + ".") and not n.endswith(".json")]
                    assert len(img) == 1
                    assert tf.extractfile(members[img[0]]).read() == open(os.path.join(root, rec["image"]), "rb").read()
                else:
                    assert not any(n.startswith(rec["key"] + ".") and n != name for n in members)


def test_shards_load_with_webdataset(demo_build):
    import webdataset as wds

    out, manifest = demo_build
    urls = [os.path.join(out, s["shard"]) for s in manifest["shards"]]
    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        rec = json.loads(sample["json"])
        contract.validate(rec)
        assert sample["__key__"] == rec["key"]
        n += 1
    assert n == manifest["totals"]["samples"]


def test_shards_load_with_hf_datasets_every_field_intact(demo_build):
    import datasets

    out, manifest = demo_build
    files = sorted(glob.glob(os.path.join(out, "*.tar")))
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                               features=contract.shard_features())
    assert len(ds) == manifest["totals"]["samples"]
    originals = {rec["key"]: rec for _, rec in _records(out).values()}
    for row in ds:
        rec = row["json"]
        assert rec == originals[rec["key"]], f"{rec['key']} changed through datasets"
    # Every contract field survives, with the null/non-null split intact; images decode.
    assert set(ds.features["json"].keys()) == set(contract.sample_features().keys())
    row = next(r for r in ds if r["json"]["image"] and r["json"]["image"].endswith(".png"))
    assert row["png"].size == (row["json"]["image_width"], row["json"]["image_height"]) and row["jpg"] is None


def test_two_runs_are_byte_identical(demo_build, tmp_path):
    out, _ = demo_build
    run(["--recipe", DEMO_RECIPE, "--output", str(tmp_path / "again"), "--log-level", "WARNING"])
    first, again = copy_tree_bytes(out), copy_tree_bytes(tmp_path / "again")
    for name in ("rejects.jsonl", "stats.json", "manifest.json"):  # issue 15: rejects embedded addresses
        assert first[name] == again[name], f"{name} differs between two runs"
    assert first == again


def test_multi_processing_matches_in_memory(demo_build, tmp_path):
    out, _ = demo_build
    run(["--recipe", DEMO_RECIPE, "--output", str(tmp_path / "mp"), "--log-level", "WARNING",
         "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"])
    assert copy_tree_bytes(out) == copy_tree_bytes(tmp_path / "mp")


def test_multi_threading_mode_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="multi_threading is not supported"):
        run(["--recipe", DEMO_RECIPE, "--output", str(tmp_path / "x"), "--direct_running_mode", "multi_threading"])


def test_crash_midway_then_resume_gives_identical_output(demo_build, tmp_path, monkeypatch):
    from pipelines import build

    out, _ = demo_build
    target = tmp_path / "crash"
    original = build.WriteShardFn._write

    def crash_on_shard_2(self, shard, cands):
        if shard.endswith("000002.tar"):
            raise RuntimeError("simulated worker death")
        return original(self, shard, cands)

    monkeypatch.setattr(build.WriteShardFn, "_write", crash_on_shard_2)
    with pytest.raises(Exception, match="simulated worker death"):
        run(["--recipe", DEMO_RECIPE, "--output", str(target), "--log-level", "WARNING"])
    # No final-named file is incomplete: every tar has its stats marker and matches its sha256.
    assert not (target / "manifest.json").exists()
    for tar in glob.glob(str(target / "*.tar")):
        stats = json.load(open(tar[:-4] + ".stats.json"))
        import hashlib
        assert hashlib.sha256(open(tar, "rb").read()).hexdigest() == stats["sha256"]
    # A temp file as left by a kill during a write is cleaned up on resume.
    (target / "crop-demo-000002.tar.tmp-deadbeef").write_bytes(b"partial")
    done_before = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(target / "*.stats.json"))}
    monkeypatch.setattr(build.WriteShardFn, "_write", original)
    run(["--recipe", DEMO_RECIPE, "--output", str(target), "--log-level", "WARNING"])
    assert copy_tree_bytes(out) == copy_tree_bytes(target)
    for p, mtime in done_before.items():  # completed shards were skipped, not rewritten
        assert os.stat(p).st_mtime_ns == mtime


def test_failing_background_commit_fails_the_build_and_resumes(demo_build, tmp_path, monkeypatch):
    """Commits (fsync + rename + marker) run on a background thread: a failing one must still
    fail the build, leave nothing under that shard's final name, and be redone on resume."""
    from pipelines import shards

    out, _ = demo_build
    target = tmp_path / "commit"
    original = shards.PendingShard.commit

    def commit_failing_on_shard_1(self):
        if self.path.endswith("000001.tar"):
            raise OSError("simulated disk error during fsync")
        return original(self)

    monkeypatch.setattr(shards.PendingShard, "commit", commit_failing_on_shard_1)
    with pytest.raises(Exception, match="simulated disk error"):
        run(["--recipe", DEMO_RECIPE, "--output", str(target), "--log-level", "WARNING"])
    assert not (target / "crop-demo-000001.tar").exists()
    assert not (target / "crop-demo-000001.stats.json").exists()
    assert glob.glob(str(target / "crop-demo-000001.tar.tmp-*"))  # the uncommitted tar, for resume to clean
    assert not (target / "manifest.json").exists()
    monkeypatch.setattr(shards.PendingShard, "commit", original)
    run(["--recipe", DEMO_RECIPE, "--output", str(target), "--log-level", "WARNING"])
    assert copy_tree_bytes(out) == copy_tree_bytes(target)


_SLOW_BUILD = """
import sys, time
from pipelines import shards
original = shards._write_tar

def slow_write_tar(f, samples):
    def slowly():
        for s in samples:
            time.sleep(0.02)  # keep each shard's temporary file open long enough to be killed in
            yield s
    return original(f, slowly())

shards._write_tar = slow_write_tar
from pipelines.main import run
run(sys.argv[1:])
"""


def test_sigkill_midway_leaves_no_incomplete_shard_and_resumes(tmp_path):
    """A real ``kill -9`` while a shard is being written: nothing under a final name is
    incomplete, and rerunning the same command finishes with the uninterrupted build's bytes."""
    import hashlib
    import signal
    import subprocess
    import sys
    import time

    from pipeline_support import REPO

    args = ["--recipe", DEMO_RECIPE, "--shard-max-samples", "5", "--log-level", "WARNING"]
    target = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, *args, "--output", str(target)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(glob.glob(str(target / "*.stats.json"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "build ended before it could be killed"
        time.sleep(0.005)
    time.sleep(0.03)  # the next shard's temporary file is being written now
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert glob.glob(str(target / "*.tar.tmp-*")), "the kill did not land during a shard write"
    assert not (target / "manifest.json").exists()
    for tar in glob.glob(str(target / "*.tar")):
        with tarfile.open(tar) as tf:  # complete: every member readable to the end-of-archive blocks
            assert all(tf.extractfile(m).read() is not None for m in tf.getmembers())
        marker = tar[:-4] + ".stats.json"
        if os.path.exists(marker):
            assert hashlib.sha256(open(tar, "rb").read()).hexdigest() == json.load(open(marker))["sha256"]

    run([*args, "--output", str(target)])
    run([*args, "--output", str(tmp_path / "clean")])
    assert copy_tree_bytes(target) == copy_tree_bytes(tmp_path / "clean")


def test_rerun_of_other_recipe_refuses_without_overwrite(demo_build, demo_corpus_copy, tmp_path):
    out = tmp_path / "o"
    run(["--recipe", DEMO_RECIPE, "--output", str(out), "--log-level", "WARNING"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        run(["--recipe", DEMO_RECIPE, "--output", str(out), "--shard-max-samples", "7"])
    manifest = run(["--recipe", DEMO_RECIPE, "--output", str(out), "--shard-max-samples", "7",
                    "--overwrite", "--log-level", "WARNING"])
    assert len(manifest["shards"]) > 4 and len(glob.glob(str(out / "*.tar"))) == len(manifest["shards"])


def test_rerun_after_an_input_changed_refuses(demo_corpus_copy, tmp_path):
    corpus, recipe = demo_corpus_copy
    out = tmp_path / "o"
    run(["--recipe", recipe, "--output", str(out), "--log-level", "WARNING"])
    with open(corpus / "viscot" / "gqa_cot_train.jsonl", "a") as f:
        f.write('{"question": "new", "answer": "a", "image": "gqa_000.jpg", "width": 1, "height": 1, "bboxs": [[0,0,1,1]]}\n')
    with pytest.raises(FileExistsError, match="different recipe or inputs"):
        run(["--recipe", recipe, "--output", str(out), "--log-level", "WARNING"])


def test_lost_elements_fail_reconciliation(tmp_path, monkeypatch):
    """A runner that silently loses elements (as Beam's multi_threading mode was seen to) is caught."""
    from pipelines import build
    from pipelines.summary import ReconciliationError

    original = build.AssignShardFn.process

    def lossy_process(self, item, selection):
        if build.Item.unpack(item).source == "gqa" and build.Item.unpack(item).line == 3:
            return iter(())  # the element vanishes without a reject
        return original(self, item, selection)

    monkeypatch.setattr(build.AssignShardFn, "process", lossy_process)
    with pytest.raises(Exception) as e:
        run(["--recipe", DEMO_RECIPE, "--output", str(tmp_path / "lossy"), "--log-level", "WARNING"])
    assert "do not reconcile" in str(e.value) and "gqa" in str(e.value)
    assert isinstance(e.value, ReconciliationError) or "ReconciliationError" in repr(e.value)


def test_visual_cot_llava_format_input(tmp_path):
    viscot = os.path.join(os.path.dirname(DEMO_RECIPE), "..", "pipelines", "demo_corpus", "viscot_llava",
                          "viscot_363k.json")
    recipe = tmp_path / "r.yaml"
    root = os.path.abspath(os.path.join(os.path.dirname(DEMO_RECIPE), "..", "pipelines", "demo_corpus"))
    recipe.write_text(f"""name: fmt2
inputs: {{visual_cot_llava_json: {os.path.abspath(viscot)}, image_root: {root}/images}}
sources: {{flickr30k: {{}}, gqa: {{}}, vsr: {{}}}}
shards: {{name: f, max_samples: 100}}
""")
    manifest = run(["--recipe", str(recipe), "--output", str(tmp_path / "o"), "--log-level", "WARNING"])
    recs = [r for _, r in _records(tmp_path / "o").values()]
    assert manifest["totals"]["samples"] == 9 and all(r["kind"] == "region" for r in recs)
    from crop.geometry import box_px_to_region
    for r in recs:  # the region comes from the pixel box after '###' and the real image size
        assert r["region_blocks"] == list(box_px_to_region(r["boxes_xyxy_px"][0], r["image_width"], r["image_height"]))
        assert not r["question"].endswith("better.")


def test_progress_counters_and_log_lines(demo_corpus_copy, tmp_path, caplog):
    """Beam counters (live progress on distributed runners) agree with the manifest, and every
    written shard logs 'shard i of N'; a resumed run writes nothing and counts skipped shards."""
    import logging

    import apache_beam as beam

    from pipelines import build
    from pipelines.recipe import load_recipe

    _, recipe_path = demo_corpus_copy
    recipe, out = load_recipe(recipe_path), str(tmp_path / "out")

    def build_once():
        build.prepare_output(out, recipe, overwrite=False)
        p = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner", "DirectRunner"]))
        build.build(p, recipe, out)
        result = p.run()
        result.wait_until_finish()
        return build.progress_counters(result)

    with caplog.at_level(logging.INFO, logger="crop.build"):
        first = build_once()
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    stats = json.load(open(os.path.join(out, "stats.json")))
    n_rejects = len(open(os.path.join(out, "rejects.jsonl")).read().splitlines())
    assert first["samples_written"] == manifest["totals"]["samples"] > 0
    assert first["shards_written"] == len(manifest["shards"])
    assert first["bytes_written"] == sum(s["bytes"] for s in manifest["shards"])
    assert first["records_read"] == sum(stats["read"].values()) == sum(manifest["totals"]["read"].values())
    assert first["rejected"] == n_rejects
    n = len(manifest["shards"])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("wrote ")]
    assert sorted(int(m.split("(shard ")[1].split(" ")[0]) for m in lines) == list(range(1, n + 1))
    assert all(f" of {n})" in m for m in lines)
    read_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("read ")]
    assert sorted(m.split()[1].rstrip(":") for m in read_lines) == sorted(
        os.path.basename(i["path"]) for i in manifest["inputs"])

    again = build_once()
    assert again.get("samples_written", 0) == 0 and again["shards_skipped"] == n


def test_source_without_any_valid_record_reports_its_shortfall(demo_corpus_copy, tmp_path):
    """A recipe source whose file holds no valid record still gets a selection entry: its cap
    shortfall is in stats.json, and strict_caps fails the build naming it."""
    corpus, recipe_path = demo_corpus_copy
    (corpus / "viscot" / "vsr_cot_train.jsonl").write_text('{"question": "no boxes"}\nnot json\n')
    text = open(recipe_path).read().replace("  vsr: {}", "  vsr: {cap: 3}")
    assert "vsr: {cap: 3}" in text
    open(recipe_path, "w").write(text)
    with pytest.raises(SystemExit, match=r"vsr: 2 of 2 records rejected \(100%"):  # every vsr record bad
        run(["--recipe", recipe_path, "--output", str(tmp_path / "o"), "--log-level", "WARNING"])
    stats = json.load(open(tmp_path / "o" / "stats.json"))  # written and complete all the same
    assert stats["shortfall"]["vsr"] == 3 and stats["read"]["vsr"] == 2
    open(recipe_path, "w").write(text.replace("v7w: {cap: 100}", "v7w: {}") + "strict_caps: true\n")
    with pytest.raises(Exception, match="cap for vsr is 3 but only 0 valid records"):
        run(["--recipe", recipe_path, "--output", str(tmp_path / "strict"), "--log-level", "WARNING",
             "--max-reject-fraction", "1"])


def test_overwrite_refuses_a_folder_that_is_not_a_build(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "README.md").write_text("precious")
    with pytest.raises(FileExistsError, match="not a build folder"):
        run(["--recipe", DEMO_RECIPE, "--output", str(folder), "--overwrite", "--log-level", "WARNING"])
    assert sorted(os.listdir(folder)) == ["README.md"] and (folder / "README.md").read_text() == "precious"


def test_distributed_runner_refuses_local_paths(tmp_path):
    """Dataflow (or Flink/Spark with remote workers) cannot see the launcher's disk: refused
    before anything runs, naming every local path; LOOPBACK or --allow-local-paths accept them."""
    from pipelines.main import check_paths_for_runner, make_options
    from pipelines.recipe import load_recipe

    recipe = load_recipe(DEMO_RECIPE, inputs={"image_root": "gs://b/images"})
    with pytest.raises(SystemExit) as e:
        check_paths_for_runner(make_options(["--runner", "FlinkRunner"]), recipe, "shards/demo")
    msg = str(e.value)
    assert "--output=shards/demo" in msg and "recipe.inputs.visual_cot_dir=" in msg
    assert "recipe.inputs.image_root" not in msg  # already remote
    check_paths_for_runner(make_options(["--runner", "FlinkRunner", "--environment_type", "LOOPBACK"]),
                           recipe, "shards/demo")
    check_paths_for_runner(make_options([]), recipe, "shards/demo")  # Direct: local is fine
    remote = load_recipe(DEMO_RECIPE, inputs={k: f"gs://b/{k}" for k in ("visual_cot_dir", "llava_json", "image_root")})
    check_paths_for_runner(make_options(["--runner", "DataflowRunner"]), remote, "gs://b/out")
    with pytest.raises(SystemExit, match="are local"):
        run(["--recipe", DEMO_RECIPE, "--runner", "SparkRunner", "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_direct_runner_never_tries_prism_or_the_network(tmp_path, monkeypatch):
    """Beam 2.77's DirectRunner first tries Prism, which downloads a binary from GitHub; our Direct
    runner goes straight to the FnApiRunner and must build offline without any download attempt."""
    import urllib.request

    from apache_beam.runners.portability import prism_runner

    calls = []

    def forbidden(*a, **k):
        calls.append(a)
        raise AssertionError("network / Prism used")

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    monkeypatch.setattr(prism_runner, "urlopen", forbidden)
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", forbidden)
    manifest = run(["--recipe", DEMO_RECIPE, "--output", str(tmp_path / "o"), "--runner", "Direct",
                    "--log-level", "WARNING"])
    assert manifest["totals"]["samples"] > 0 and calls == []


def test_main_job_on_the_demo_prints_no_warning(tmp_path):
    """README's first command as a new user sees it: the demo's deliberate cap shortfall is
    information, and Beam's import-time "apitools not found" notice (no [gcp] extra) is dropped."""
    import subprocess
    import sys

    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "beam_runner.py", "--runner", "Direct", "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    alarming = [ln for ln in text.splitlines() if ln.startswith(("WARNING", "ERROR", "Traceback")) or "apitools" in ln]
    assert not alarming, alarming
    assert "recipe cap for v7w is 100 but only 6 valid records exist" in text  # still said, as INFO
    assert "caps above what a source has (took all): v7w short by 94" in text
