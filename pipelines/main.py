"""Driver of the main job: flags -> recipe + PipelineOptions -> ``pipelines.build`` -> summary.

Our own flags are parsed here; every other flag goes to Beam's ``PipelineOptions`` unchanged, so
``--runner DataflowRunner --project ... --region ... --temp_location gs://...`` or
``--runner FlinkRunner --flink_master ...`` work as Beam documents them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

DEFAULT_RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "demo.yaml")


INPUT_FLAGS = ("visual_cot_dir", "visual_cot_llava_json", "llava_json", "image_root")  # -> recipe.inputs


class FlagError(SystemExit):
    """A wrong flag, or a flag naming something unusable: ``main`` prints the message as one line
    and exits with status 2, argparse's status for its own flag errors. ``str(e)`` is the message
    (for callers of ``run``)."""


def main(argv: list[str] | None = None) -> None:
    """``python beam_runner.py``: ``run``, with flag errors as one line and exit status 2."""
    try:
        run(argv)
    except FlagError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(
        prog="beam_runner.py",
        description="Build CROP localization + instruction WebDataset shards. Unknown flags go to Beam.")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="recipe YAML (default: the bundled demo)")
    p.add_argument("--output", default=None, help="output folder (local or gs://, s3://, hdfs://); "
                   "default shards/<recipe name>")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--visual-cot-dir", help="override recipe.inputs.visual_cot_dir (replaces the recipe's "
                   "visual_cot_llava_json, if any: the two are alternatives)")
    p.add_argument("--visual-cot-llava-json", help="override recipe.inputs.visual_cot_llava_json (replaces the "
                   "recipe's visual_cot_dir, if any)")
    p.add_argument("--llava-json", help="override recipe.inputs.llava_json")
    p.add_argument("--image-root", help="override recipe.inputs.image_root")
    p.add_argument("--shard-max-samples", type=_positive_int, help="override recipe shards.max_samples")
    p.add_argument("--allow-local-paths", action="store_true",
                   help="with a distributed runner, accept local paths (only if every worker sees the same "
                        "filesystem at the same place, e.g. NFS)")
    p.add_argument("--fail-on-internal-error", action="store_true",
                   help="fail the job at the first record whose processing raises an unexpected exception (CI, "
                        "debugging); by default such a record becomes an internal_error reject, the build "
                        "finishes, and the command exits with status 1 at the end")
    p.add_argument("--max-reject-fraction", type=_fraction, default=None,
                   help="fail the build when more than this share of a source's records is rejected (default: "
                        "the recipe's reject_limits.max_fraction, 0.5; a wrong --image-root rejects nearly "
                        "everything); above reject_limits.warn_fraction (0.1) a warning")
    p.add_argument("--omit-input-roots", action="store_true",
                   help="leave the input folders' own paths out of manifest.json too (published files then "
                        "name inputs only relative to their roots)")
    p.add_argument("--log-level", default="INFO", help="log level of the crop.build logger (default INFO)")
    args, rest = p.parse_known_args(argv)
    check_beam_args(rest, [o for a in p._actions for o in a.option_strings])
    return args, rest


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def check_beam_args(beam_args: list[str], own_flags: list[str]) -> None:
    """Refuse flags neither this driver nor any Beam option class knows, and unknown runners.

    Everything our parser does not know goes to Beam, so a misspelt flag of ours (``--recipie``)
    would otherwise be dropped by Beam with a log line and the demo built instead. Beam's own
    option parser (all ``PipelineOptions`` classes, obtained through ``get_all_options``'s
    ``add_extra_args_fn`` hook) decides what is a Beam flag."""
    import difflib

    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    captured: list = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=captured.append)
    beam_parser = captured[0]
    known, unknown = beam_parser.parse_known_args(beam_args)
    beam_flags = [o for a in beam_parser._actions for o in a.option_strings]
    for arg in unknown:
        name = arg.split("=", 1)[0]
        if not name.startswith("-"):
            raise FlagError(f"error: unexpected argument {arg!r} (flags take the form --name VALUE)")
        close = difflib.get_close_matches(name, own_flags + beam_flags, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise FlagError(f"error: unknown flag {name}{hint} (python beam_runner.py --help lists this "
                         "driver's flags; Beam's pipeline options are accepted too)")
    runner = getattr(known, "runner", None)
    if runner and runner.rsplit(".", 1)[-1].lower() in ("dask", "daskrunner"):
        raise FlagError("error: DaskRunner is not supported: Beam's Dask translation loses or mixes elements "
                        "of this pipeline (docs/runners.md says why); use Direct, PortableRunner, FlinkRunner, "
                        "SparkRunner or DataflowRunner")
    if runner and "." not in runner:  # a dotted name is a runner class path: Beam imports it
        names = {path.rsplit(".", 1)[-1] for path in StandardOptions.ALL_KNOWN_RUNNERS}
        lowered = {n.lower() for n in names}
        if runner.lower() not in lowered and runner.lower() + "runner" not in lowered:
            choices = sorted(names | {"Direct"})
            close = difflib.get_close_matches(runner, choices, n=1)
            raise FlagError(f"error: unknown runner {runner!r}" + (f"; did you mean {close[0]}?" if close else "")
                             + f" (known: {', '.join(choices)})")


DIRECT_RUNNERS = ("Direct", "DirectRunner", "direct")
LOCAL_RUNNERS = DIRECT_RUNNERS + ("PrismRunner", "Prism", "prism")  # workers on the launching machine


def check_paths_for_runner(opts, recipe, out_dir: str) -> None:
    """Refuse local paths when the workers run elsewhere.

    On Dataflow, or Flink / Spark without ``--environment_type LOOPBACK``, each worker would read
    and write its own disk: inputs "missing", shards scattered over machines, and a manifest on
    yet another one. Object-store / HDFS URLs (``scheme://``) are what such runners need."""
    from apache_beam.options.pipeline_options import PortableOptions, StandardOptions

    runner = opts.view_as(StandardOptions).runner
    if runner in LOCAL_RUNNERS or workers_on_this_machine(opts):
        return
    named = {"--output": out_dir, **{f"recipe.inputs.{k}": getattr(recipe.inputs, k) for k in INPUT_FLAGS}}
    local = [f"{name}={path}" for name, path in named.items() if path and "://" not in path]
    if local:
        raise FlagError(
            f"error: runner {runner} runs its workers on other machines, but these paths are local: "
            f"{', '.join(local)}. Use gs://, s3:// or hdfs:// paths (the flags override the recipe's), "
            "or pass --allow-local-paths if every worker mounts the same filesystem")


LOCALHOST = ("localhost", "127.0.0.1", "[::1]", "::1")


def _on_localhost(endpoint: str | None) -> bool:
    host = (endpoint or "").rsplit(":", 1)[0]
    return host in LOCALHOST


def workers_on_this_machine(opts) -> bool:
    """True when every SDK worker runs on the launching machine, so local paths mean the same to
    them: ``LOOPBACK`` (workers inside this process), or a ``PortableRunner`` job service on
    localhost whose ``EXTERNAL`` worker pool is on localhost too. Flink or Spark with an
    ``EXTERNAL`` pool at "localhost" mean a pool beside each of *their* workers (the Kubernetes
    sidecar pattern), and a remote job service's "localhost" is its own machine: both refused."""
    from apache_beam.options.pipeline_options import PortableOptions, StandardOptions

    portable = opts.view_as(PortableOptions)
    env = (portable.environment_type or "").upper()
    if env == "LOOPBACK":
        return True
    runner = opts.view_as(StandardOptions).runner or ""
    return (runner.rsplit(".", 1)[-1] in ("PortableRunner", "Portable") and env == "EXTERNAL"
            and _on_localhost(portable.environment_config) and _on_localhost(portable.job_endpoint))


def check_endpoints(opts, seconds: float = 3.0) -> None:
    """Fail within seconds, as one line, when ``--job_endpoint`` (or an ``EXTERNAL`` worker pool's
    ``--environment_config``) does not answer: Beam's PortableRunner would wait without a word."""
    from apache_beam.options.pipeline_options import PortableOptions

    from pipelines.job_service import wait_for_endpoint

    from apache_beam.options.pipeline_options import StandardOptions

    portable = opts.view_as(PortableOptions)
    named = [("--job_endpoint", portable.job_endpoint)]
    runner = (opts.view_as(StandardOptions).runner or "").rsplit(".", 1)[-1]
    if (runner in ("PortableRunner", "Portable") and (portable.environment_type or "").upper() == "EXTERNAL"
            and _on_localhost(portable.job_endpoint)):
        # a pool for a job service on this machine; Flink/Spark pools sit beside their own workers
        named.append(("--environment_config", portable.environment_config))
    for flag, endpoint in named:
        if not endpoint or endpoint == "embed" or ":" not in endpoint:
            continue
        if not wait_for_endpoint(endpoint, seconds):
            raise FlagError(f"error: nothing answers at {flag} {endpoint} (waited {seconds:g} s); start the "
                            "service there (python -m pipelines.job_service / Beam's worker_pool_main, see "
                            "docs/runners.md) or fix the address")


def make_options(beam_args: list[str]):
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    opts = PipelineOptions(beam_args)
    std = opts.view_as(StandardOptions)
    if std.runner is None:
        std.runner = "DirectRunner"
    if std.runner in DIRECT_RUNNERS:
        mode = opts.view_as(DirectOptions).direct_running_mode
        if mode == "multi_threading":
            raise FlagError(
                "error: --direct_running_mode=multi_threading is not supported: Beam 2.77's "
                "multi-threaded direct mode has been seen to lose elements; use in_memory (default) "
                "or multi_processing with --direct_num_workers N")
    return opts


def offline_direct_runner(opts):
    """For ``--runner Direct``: Beam's FnApiRunner, chosen here; None (Beam picks) for other runners.

    Beam 2.77's DirectRunner first tries the Prism runner, which downloads a Go binary from GitHub
    (offline: a failed attempt costing ~0.4 s, then a fallback; online: a different engine). The
    Direct runner must run offline and the same way everywhere, so we construct the engine the
    DirectRunner falls back to for batch pipelines: the FnApiRunner, which honours
    ``--direct_running_mode`` (in_memory, multi_processing) and ``--direct_num_workers``.
    ``--runner PrismRunner`` still selects Prism explicitly."""
    from apache_beam.options.pipeline_options import StandardOptions

    if opts.view_as(StandardOptions).runner not in DIRECT_RUNNERS:
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(opts.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def _quiet_beam_import_notice(record: logging.LogRecord) -> bool:
    """Drop Beam's import-time "apitools not found" notice (root logger, WARNING).

    Beam logs it whenever its BigQuery client module is imported without the ``[gcp]`` extra,
    although nothing here uses BigQuery; a GCS or Dataflow run needs ``pip install
    crop-toolkit[gcp]``, which brings apitools, and then the notice never fires anyway."""
    return not (record.name == "root" and str(record.msg).startswith("apitools not found"))


def check_reject_rates(stats: dict, max_fraction: float, log, warn_fraction: float = 0.1) -> None:
    """Fail (``SystemExit``) when a source's rejected share exceeds ``max_fraction``; warn above
    ``warn_fraction``. A wrong ``--image-root`` or a misread format rejects most records: "built"
    with a handful of samples is a failure, and the top reasons say why. The outputs stay in place
    (they are complete and reconcile) for the user to inspect."""
    from collections import Counter

    read, rejected = stats.get("read", {}), stats.get("rejected_by_reason", {})
    failing, warned = [], []
    for source in sorted(read):
        n, reasons = read[source], Counter(rejected.get(source, {}))
        bad = sum(reasons.values())
        if not n or not bad:
            continue
        share = bad / n
        top = ", ".join(f"{r} {c}" for r, c in reasons.most_common(3))
        line = f"{source}: {bad} of {n} records rejected ({share:.0%}; {top})"
        if share > max_fraction:
            failing.append(line)
        elif share > warn_fraction:
            warned.append(line)
    for line in warned:
        log.warning("high reject rate: %s", line)
    if failing:
        more = f"; and {len(failing) - 3} more source(s)" if len(failing) > 3 else ""
        raise SystemExit(f"error: reject rate above --max-reject-fraction {max_fraction:g}: " + "; ".join(failing[:3])
                         + more + " (see rejects.jsonl; a wrong --image-root rejects every image as missing_image)")


def run(argv: list[str] | None = None) -> dict:
    """Run the build; returns the manifest. Raises on any failure (including reconciliation), and
    ``SystemExit`` (status 1) after a finished build in which any record hit an internal error."""
    # logging first: parsing the flags imports Beam, whose import-time notice would otherwise
    # configure the root logger itself (and print the notice)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().addFilter(_quiet_beam_import_notice)
    args, beam_args = parse_args(argv)
    logging.getLogger("crop").setLevel(args.log_level)

    import apache_beam as beam

    from pipelines import build, summary
    from pipelines.recipe import load_recipe

    recipe = load_recipe(args.recipe, inputs={k: getattr(args, k) for k in INPUT_FLAGS},
                         shard_max_samples=args.shard_max_samples)
    out_dir = args.output or os.path.join("shards", recipe.name)
    opts = make_options(beam_args)
    check_endpoints(opts)
    if not args.allow_local_paths:
        check_paths_for_runner(opts, recipe, out_dir)
    mode = build.prepare_output(out_dir, recipe, args.overwrite)
    log = logging.getLogger("crop.build")
    log.info("building recipe %r into %s (%s)", recipe.name, out_dir, mode)

    t0 = time.perf_counter()
    p = beam.Pipeline(runner=offline_direct_runner(opts), options=opts)
    build.build(p, recipe, out_dir, fail_on_internal_error=args.fail_on_internal_error,
                publish_input_roots=not args.omit_input_roots)
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - t0
    log.info("Beam counters (%s): %s", build.METRICS,
             ", ".join(f"{k}={v}" for k, v in build.progress_counters(result).items()))

    from pipelines.shards import join, read_bytes

    manifest = json.loads(read_bytes(join(out_dir, "manifest.json")))
    stats = json.loads(read_bytes(join(out_dir, "stats.json")))
    print(summary.human_summary(manifest, stats, seconds, color=sys.stderr.isatty()), file=sys.stderr)
    max_fraction = recipe.max_reject_fraction if args.max_reject_fraction is None else args.max_reject_fraction
    check_reject_rates(stats, max_fraction, log, min(recipe.warn_reject_fraction, max_fraction))
    n_internal = summary.internal_error_count(stats)
    if n_internal:  # every output is written and reconciles; the exit status still says a bug was hit
        raise SystemExit(f"error: {n_internal} record(s) hit an internal error (reason internal_error in "
                         f"{join(out_dir, 'rejects.jsonl')}); the build finished without them")
    return manifest
