"""Portable execution: Beam's own job service (with the worker count set by
``pipelines.job_service``) and an external SDK worker pool of 2 processes on localhost build the
same bytes as the Direct runner; flags that name unreachable services fail in seconds."""

from __future__ import annotations

import os
import socket
import time

import pytest

from pipeline_support import DEMO_RECIPE, copy_tree_bytes, make_mixed_corpus
from pipelines.main import FlagError, check_paths_for_runner, main, make_options, run, workers_on_this_machine


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_portable_runner_with_a_pool_of_two_workers_matches_direct(tmp_path):
    from pipelines.job_service import LocalCluster

    mixed = make_mixed_corpus(tmp_path / "mixed", 3000)
    quiet = ["--log-level", "WARNING"]
    direct = {}
    for name, recipe in (("demo", DEMO_RECIPE), ("mixed", mixed)):
        run(["--recipe", recipe, "--output", str(tmp_path / f"direct-{name}"), *quiet])
        direct[name] = copy_tree_bytes(tmp_path / f"direct-{name}")
    logs = tmp_path / "logs"
    logs.mkdir()
    with LocalCluster(workers=2, log_dir=str(logs)) as cluster:
        assert "EXTERNAL" in cluster.beam_args and "--allow-local-paths" not in cluster.beam_args
        for name, recipe in (("demo", DEMO_RECIPE), ("mixed", mixed)):
            manifest = run(["--recipe", recipe, "--output", str(tmp_path / f"portable-{name}"), *quiet,
                            *cluster.beam_args])
            assert manifest["totals"]["samples"] > 0
            got = copy_tree_bytes(tmp_path / f"portable-{name}")
            for f in ("manifest.json", "stats.json", "rejects.jsonl"):
                assert got[f] == direct[name][f], f"{name}: {f} differs from Direct's"
            assert got == direct[name], f"{name}: shards differ from Direct's"
    pool_log = (logs / "worker_pool.log").read_text()
    assert pool_log.count("Starting worker") == 4  # 2 SDK worker processes per job, 2 jobs
    import json

    mixed_manifest = json.loads(direct["mixed"]["manifest.json"])
    assert len(mixed_manifest["shards"]) >= 8  # enough shards for both workers to write
    reasons = {json.loads(line)["reason"] for line in direct["mixed"]["rejects.jsonl"].splitlines()}
    assert {"duplicate_key", "malformed_json", "empty_bboxs", "missing_image"} <= reasons


def test_unreachable_job_endpoint_fails_in_seconds_with_one_line(tmp_path, capsys):
    port = _unused_port()
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as e:
        main(["--runner", "PortableRunner", "--job_endpoint", f"localhost:{port}", "--output", str(tmp_path / "o")])
    assert e.value.code == 2 and time.monotonic() - t0 < 15
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: nothing answers at --job_endpoint localhost:{port}") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_unreachable_worker_pool_fails_too(tmp_path):
    """The pool of a job service on this machine is probed too; a Flink/Spark "localhost" pool is
    a sidecar of each of their workers, not of this machine, and is left alone."""
    from pipelines.main import check_endpoints

    from concurrent.futures import ThreadPoolExecutor

    import grpc

    job_service = grpc.server(ThreadPoolExecutor(max_workers=1))  # answers; no pool behind it
    port = job_service.add_insecure_port("localhost:0")
    job_service.start()
    try:
        with pytest.raises(FlagError, match="--environment_config localhost:"):
            check_endpoints(make_options(["--runner", "PortableRunner", "--job_endpoint", f"localhost:{port}",
                                          "--environment_type", "EXTERNAL", "--environment_config",
                                          f"localhost:{_unused_port()}"]))
    finally:
        job_service.stop(None)
    check_endpoints(make_options(["--runner", "FlinkRunner", "--flink_master", "flink-jm:8081",
                                  "--environment_type", "EXTERNAL", "--environment_config",
                                  f"localhost:{_unused_port()}"]))  # nothing probed, nothing raised


def test_other_flag_errors_exit_with_status_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--recipie", "x"])
    assert e.value.code == 2 and "did you mean --recipe?" in capsys.readouterr().err


@pytest.mark.parametrize("args, local_ok", [
    (["--runner", "PortableRunner", "--environment_type", "LOOPBACK"], True),
    (["--runner", "PortableRunner", "--job_endpoint", "localhost:8099", "--environment_type", "EXTERNAL",
      "--environment_config", "localhost:50000"], True),
    (["--runner", "PortableRunner", "--job_endpoint", "127.0.0.1:8099", "--environment_type", "EXTERNAL",
      "--environment_config", "127.0.0.1:50000"], True),
    # a pool on another machine, or a remote job service (whose "localhost" is its own machine)
    (["--runner", "PortableRunner", "--job_endpoint", "localhost:8099", "--environment_type", "EXTERNAL",
      "--environment_config", "workers.example:50000"], False),
    (["--runner", "PortableRunner", "--job_endpoint", "flink.example:8099", "--environment_type", "EXTERNAL",
      "--environment_config", "localhost:50000"], False),
    (["--runner", "FlinkRunner", "--environment_type", "DOCKER"], False),
    (["--runner", "FlinkRunner", "--flink_master", "flink-jm:8081", "--environment_type", "EXTERNAL",
      "--environment_config", "localhost:50000"], False),  # a sidecar pool beside each TaskManager
    (["--runner", "FlinkRunner", "--environment_type", "LOOPBACK"], True),
    (["--runner", "PortableRunner", "--job_endpoint", "localhost:8099", "--environment_type", "PROCESS",
      "--environment_config", '{"command": "/opt/apache/beam/boot"}'], False),
])
def test_local_paths_only_when_every_worker_is_on_this_machine(args, local_ok):
    from pipelines.recipe import load_recipe

    opts = make_options(args)
    assert workers_on_this_machine(opts) is local_ok
    recipe = load_recipe(DEMO_RECIPE)
    if local_ok:
        check_paths_for_runner(opts, recipe, "shards/demo")
    else:
        with pytest.raises(FlagError, match="these paths are local"):
            check_paths_for_runner(opts, recipe, "shards/demo")
