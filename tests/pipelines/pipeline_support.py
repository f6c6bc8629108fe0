"""Shared constants and helpers of the pipeline tests (imported as a sibling module)."""

import os
import shutil

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_RECIPE = os.path.join(REPO, "recipes", "demo.yaml")


def copy_tree_bytes(folder):
    """{file name: bytes} of every file in a build folder."""
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def copy_demo_corpus(tmp_path):
    """A writable copy of the demo corpus and a recipe pointing at it."""
    src = os.path.join(REPO, "pipelines", "demo_corpus")
    dst = tmp_path / "corpus"
    shutil.copytree(src, dst)
    recipe = open(DEMO_RECIPE).read().replace("../pipelines/demo_corpus", str(dst))
    path = tmp_path / "demo.yaml"
    path.write_text(recipe)
    return dst, str(path)
