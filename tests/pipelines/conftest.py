import pytest
from pipeline_support import DEMO_RECIPE, copy_demo_corpus


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory):
    """One in-memory build of the bundled demo corpus, shared by the read-only tests."""
    from pipelines.main import run

    out = str(tmp_path_factory.mktemp("demo") / "out")
    manifest = run(["--recipe", DEMO_RECIPE, "--output", out, "--log-level", "WARNING"])
    return out, manifest


@pytest.fixture
def demo_corpus_copy(tmp_path):
    return copy_demo_corpus(tmp_path)
