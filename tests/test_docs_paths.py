"""Shard folders named in configs and docs are folders some recipe actually builds.

``python beam_runner.py --recipe R`` writes to ``shards/<R's name>`` by default; a config or doc
pointing at any other ``shards/<x>`` sends a new user to a folder that never exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# placeholders and examples that are not recipe outputs
NOT_RECIPES = {"x", "heldout", "<build folder>", "<recipe name>", "<build>", "README.md"}


def _recipe_names() -> set[str]:
    return {yaml.safe_load(p.read_text())["name"] for p in (ROOT / "recipes").glob("*.yaml")}


def test_shard_folders_in_configs_and_docs_are_built_by_a_recipe():
    names = _recipe_names()
    assert {"demo", "paper-610k"} <= names
    bad = []
    files = [*ROOT.glob("configs/*.yaml"), *ROOT.glob("docs/*.md"), ROOT / "README.md"]
    for path in files:
        for m in re.finditer(r"(?<![\w/.])shards/([\w.<>-]+(?: [\w<>]+>)?)", path.read_text()):
            folder = m.group(1)
            if folder not in names and folder not in NOT_RECIPES and not folder.endswith((".tar", ".json")):
                bad.append(f"{path.relative_to(ROOT)}: shards/{folder}")
    assert not bad, bad
