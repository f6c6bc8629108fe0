import os
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_RECIPE = os.path.join(REPO, "recipes", "demo.yaml")


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory):
    """One in-memory build of the bundled demo corpus, shared by the read-only tests."""
    from pipelines.main import run

    out = str(tmp_path_factory.mktemp("demo") / "out")
    manifest = run(["--recipe", DEMO_RECIPE, "--output", out, "--log-level", "WARNING"])
    return out, manifest


def copy_tree_bytes(folder):
    """{file name: bytes} of a build folder (minus the card, which may embed nothing variable)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


@pytest.fixture
def demo_corpus_copy(tmp_path):
    """A writable copy of the demo corpus and its recipe (for tests that break or extend it)."""
    src = os.path.join(REPO, "pipelines", "demo_corpus")
    dst = tmp_path / "corpus"
    shutil.copytree(src, dst)
    recipe = open(DEMO_RECIPE).read().replace("../pipelines/demo_corpus", str(dst))
    path = tmp_path / "demo.yaml"
    path.write_text(recipe)
    return dst, str(path)
