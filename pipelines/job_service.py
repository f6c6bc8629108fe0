"""Beam's Python job service with a worker count, and a local job service + worker pool pair.

Beam's ``apache_beam.runners.portability.local_job_service_main`` runs each submitted job on
an FnApiRunner that always uses one SDK worker: unlike ``FnApiRunner.run_pipeline`` (the Direct
runner), ``run_via_runner_api`` never reads ``--direct_num_workers``. This launcher runs that
same service with the count set: the job's ``--direct_num_workers`` when above 1, else the
launcher's ``--workers``. With ``--environment_type EXTERNAL`` each of those workers is a process of an
SDK worker pool (``apache_beam.runners.worker.worker_pool_main``)::

    python -m apache_beam.runners.worker.worker_pool_main --service_port 50000 &
    python -m pipelines.job_service --port 8099 --workers 2 &
    python beam_runner.py --runner PortableRunner --job_endpoint localhost:8099 \\
        --environment_type EXTERNAL --environment_config localhost:50000

(the worker pool must be started where ``pipelines`` and ``crop`` import: from the repository
root, or with the project installed). :class:`LocalCluster` starts and stops such a pair for
tests and benchmarks.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_WORKERS = 1


def _invoke_runner_with_workers(self):
    """``BeamJob._invoke_runner`` with the FnApiRunner's worker count set (see module doc)."""
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    options = self.pipeline_options()
    self.set_state(beam_job_api_pb2.JobState.RUNNING)
    runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
    # the attribute FnApiRunner.run_pipeline sets from --direct_num_workers; read by run_stages.
    # The option arrives as text, and its default is 1: a job asking for more wins over --workers.
    asked = int(options.view_as(DirectOptions).direct_num_workers or 1)
    runner._num_workers = asked if asked > 1 else _DEFAULT_WORKERS
    return runner.run_via_runner_api(self._pipeline_proto, options)


def main(argv: list[str] | None = None) -> None:
    global _DEFAULT_WORKERS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " Other flags go to Beam's "
                                "local_job_service_main (--port, --port_file, ...).")
    p.add_argument("--workers", type=int, default=1,
                   help="SDK workers per job unless the job sets --direct_num_workers (default 1)")
    args, rest = p.parse_known_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    _DEFAULT_WORKERS = args.workers
    from apache_beam.runners.portability import local_job_service, local_job_service_main

    local_job_service.BeamJob._invoke_runner = _invoke_runner_with_workers
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    logging.basicConfig()
    logging.getLogger().setLevel(logging.INFO)
    local_job_service_main.run([local_job_service_main.__file__] + rest)  # it drops argv[0] only if so


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_for_endpoint(endpoint: str, seconds: float) -> bool:
    """True once a gRPC server answers at ``host:port`` within ``seconds``."""
    import grpc

    channel = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=seconds)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


class LocalCluster:
    """A job service (this module) and an SDK worker pool on localhost, as subprocesses.

    ``beam_args`` are the flags that send a job there. Both processes run in their own process
    group, stopped (SIGTERM, then SIGKILL) on exit with the SDK workers the pool started."""

    def __init__(self, workers: int = 2, log_dir: str | None = None):
        self.workers, self.log_dir = workers, log_dir
        self.procs: list[subprocess.Popen] = []
        self.beam_args: list[str] = []

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        env = dict(os.environ)
        # the pool starts workers as "python -c ...": this interpreter first on PATH, the project importable
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        out = open(os.path.join(self.log_dir, name + ".log"), "wb") if self.log_dir else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> "LocalCluster":
        pool, job = free_port(), free_port()
        self._start("worker_pool", [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                    "--service_port", str(pool)])
        self._start("job_service", [sys.executable, "-m", "pipelines.job_service", "--workers", str(self.workers),
                                    "--port", str(job)])
        try:
            deadline = time.monotonic() + 90
            for endpoint in (f"localhost:{pool}", f"localhost:{job}"):
                while not wait_for_endpoint(endpoint, 1):
                    dead = [p.args[2] for p in self.procs if p.poll() is not None]
                    if dead or time.monotonic() > deadline:
                        raise RuntimeError(f"no Beam service came up at {endpoint}" +
                                           (f": {', '.join(dead)} exited" if dead else " within 90 s"))
        except BaseException:
            self.__exit__()
            raise
        self.beam_args = ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{job}",
                          "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{pool}"]
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # its own group: the pool's SDK workers too
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.procs.clear()


if __name__ == "__main__":
    main()
