"""The launch lines of docs/runners.md, checked without submitting anything: each command's
flags parse (ours and Beam's, with Beam's own choices), its paths pass the local-path rule, the
runner's environment is built from the options, the whole graph is constructed and translated
to a runner proto (every DoFn pickled), and Dataflow's own option validator finds nothing.

The data paths of each command are swapped for the demo corpus on the in-memory object store
(``memtest://``) so that the graph can be built (it lists the inputs); every other flag is
exactly as documented."""

from __future__ import annotations

import os
import re
import shlex

import memfs
import pytest
from pipeline_support import DEMO_RECIPE, REPO

DOC = os.path.join(REPO, "docs", "runners.md")
REMOTE = "memtest://crop-runners/corpus"
DATA_FLAGS = {"--visual-cot-dir": REMOTE + "/viscot", "--llava-json": REMOTE + "/llava/llava_v1_5_mix665k.json",
              "--image-root": REMOTE + "/images", "--output": "memtest://crop-runners/out",
              "--recipe": DEMO_RECIPE}


def launch_lines() -> dict[str, list[str]]:
    """``{runner: argv}`` for every ``python beam_runner.py`` command in a bash block of the doc."""
    text = open(DOC).read()
    out = {}
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            argv = shlex.split(line)
            if argv[:2] == ["python", "beam_runner.py"]:
                out[argv[argv.index("--runner") + 1]] = argv[2:]
    return out


def test_the_doc_has_a_launch_line_per_runner():
    assert set(launch_lines()) == {"DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner"}


@pytest.fixture(scope="module")
def remote_corpus():
    memfs.reset()
    memfs.put_tree(os.path.join(REPO, "pipelines", "demo_corpus"), REMOTE)
    yield
    memfs.reset()


def _swap_data_paths(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, a in enumerate(argv[:-1]):
        if a in DATA_FLAGS:
            out[i + 1] = DATA_FLAGS[a]
    return out


@pytest.mark.parametrize("runner", ["DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner"])
def test_documented_launch_line_builds_its_pipeline_without_submitting(runner, remote_corpus):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PortableOptions
    from apache_beam.runners.portability.portable_runner import PortableRunner

    from pipelines import build
    from pipelines.main import INPUT_FLAGS, check_paths_for_runner, make_options, parse_args
    from pipelines.recipe import load_recipe

    argv = launch_lines()[runner]
    args, beam_args = parse_args(_swap_data_paths(argv))  # unknown flags / bad choices fail here
    recipe = load_recipe(args.recipe, inputs={k: getattr(args, k) for k in INPUT_FLAGS})
    opts = make_options(beam_args)
    out = args.output or os.path.join("shards", recipe.name)  # as pipelines.main.run
    check_paths_for_runner(opts, recipe, out)
    p = beam.Pipeline(options=opts)  # the runner object is made; nothing runs
    assert type(p.runner).__name__ == runner
    build.build(p, recipe, out)
    proto = p.to_runner_api()
    assert any("WriteShards" in t.unique_name for t in proto.components.transforms.values())
    if runner == "DataflowRunner":
        from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
        from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

        assert PipelineOptionsValidator(opts, DataflowRunner()).validate() == []
        # the documented data paths themselves are gs:// (the swap only made the graph buildable here)
        assert all(argv[argv.index(f) + 1].startswith("gs://") for f in DATA_FLAGS if f != "--recipe")
    else:
        env = PortableRunner._create_environment(opts)  # environment type + config as the runner reads them
        # DOCKER -> DockerEnvironment (with the documented image), EXTERNAL -> ExternalEnvironment
        assert type(env).__name__.lower() == opts.view_as(PortableOptions).environment_type.lower() + "environment"
        if type(env).__name__ == "DockerEnvironment":
            assert env.container_image == "registry.example/crop-beam:0.1.0"
        if runner != "PortableRunner":
            assert not any("://" not in argv[argv.index(f) + 1] for f in DATA_FLAGS if f != "--recipe")


def test_a_misspelt_runner_option_in_a_launch_line_is_caught():
    from pipelines.main import parse_args

    argv = _swap_data_paths(launch_lines()["FlinkRunner"])
    bad = [a.replace("--flink_version", "--flink_verison") for a in argv]
    with pytest.raises(SystemExit, match="did you mean --flink_version"):
        parse_args(bad)
    unpublished = list(argv)
    unpublished[argv.index("--flink_version") + 1] = "1.3"
    with pytest.raises(SystemExit):
        parse_args(unpublished)


@pytest.mark.parametrize("runner", ["DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"])
def test_dask_runner_is_refused_with_the_reason(runner):
    from pipelines.main import FlagError, parse_args

    with pytest.raises(FlagError, match="DaskRunner is not supported.*docs/runners.md"):
        parse_args(["--runner", runner])
