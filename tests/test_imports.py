"""Import rules (style.md): ``import crop`` stays light, pipelines never import torch, the
torch-side packages never import Beam, and geometry/formatting use only stdlib + numpy.

Dynamic checks run in a fresh interpreter with an import hook that *refuses* the heavy modules and
records who asked, so a guarded ``try: import torch`` counts as well and nothing heavy is loaded.
Static checks parse the source files (AST), so an import in a function body counts too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "apache_beam")

# Run in a subprocess: install a finder that refuses HEAVY modules, import the targets, then print
# {"attempts": [[module, importer_file], ...], "loaded": [...]} as the last line.
_PROBE = r"""
import importlib.abc, json, sys, traceback
HEAVY = set(sys.argv[1].split(","))
attempts = []

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            who = "?"
            for frame in reversed(traceback.extract_stack()[:-1]):
                if "importlib" not in frame.filename and "<frozen" not in frame.filename:
                    who = frame.filename
                    break
            attempts.append([name, who])
            raise ModuleNotFoundError(f"{name} refused by test_imports", name=name)
        return None

sys.meta_path.insert(0, Refuse())
import importlib
for target in sys.argv[2:]:
    importlib.import_module(target)
print(json.dumps({"attempts": attempts, "loaded": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def _probe(targets, heavy=HEAVY):
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(heavy), *targets],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"importing {targets} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


LIGHT = ["crop", "crop.geometry", "crop.formatting", "crop.contract", "crop.cli", "schemas"]


def test_light_modules_do_not_import_torch_beam_or_transformers():
    result = _probe(LIGHT, heavy=HEAVY + ("datasets",))
    assert result["attempts"] == [], f"light modules tried to import: {result['attempts']}"
    assert result["loaded"] == []


def test_cli_help_stays_light():
    code = (
        "import sys, contextlib, io\n"
        "from crop.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out: rc = main(['--help'])\n"
        "assert rc == 0 and 'validate' in out.getvalue(), out.getvalue()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'apache_beam', 'datasets') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("command", sorted(__import__("crop.cli", fromlist=["COMMANDS"]).COMMANDS))
def test_every_command_help_stays_light(command):
    """`crop <command> --help` answers without importing torch, transformers, Beam or datasets
    (a new user's first look costs no multi-second import)."""
    code = (
        "import sys, contextlib, io\n"
        "from crop.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main([{command!r}, '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'apache_beam', 'datasets') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", f"crop {command} --help imported {proc.stdout.strip()}"


# ---------------------------------------------------------------------------------------------
# static scans
# ---------------------------------------------------------------------------------------------


def _imported_modules(path: Path) -> list[tuple[str, int]]:
    """Absolute module names a file imports (import / from-import / importlib.import_module("x"))."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.append((node.module, node.lineno))
            elif node.level > 0:
                found.append(("<relative>", node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.args[0].value, node.lineno))
    return found


def _py_files(rel: str) -> list[Path]:
    base = ROOT / rel
    if base.is_file():
        return [base]
    return sorted(p for p in base.rglob("*.py") if "demo_corpus" not in p.parts)


def _violations(rel: str, forbidden: set[str]) -> list[str]:
    out = []
    for path in _py_files(rel):
        for module, line in _imported_modules(path):
            if module.split(".")[0] in forbidden:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return out


def _require(rel: str):
    if not (ROOT / rel).exists() or not _py_files(rel):
        pytest.skip(f"{rel} does not exist yet")


def test_scanner_sees_every_import_form(tmp_path):
    # The scanner itself must be able to fail.
    f = tmp_path / "m.py"
    f.write_text(
        "import os\nimport torch.nn as nn\nfrom transformers import AutoModel\n"
        "def f():\n    import apache_beam as beam\n    importlib.import_module('torchvision')\n"
        "from . import sibling\n"
    )
    names = {m for m, _ in _imported_modules(f)}
    assert names == {"os", "torch.nn", "transformers", "apache_beam", "torchvision", "<relative>"}


def test_pipelines_never_import_torch_or_transformers():
    _require("pipelines")
    bad = _violations("pipelines", {"torch", "transformers", "torchvision"})
    assert not bad, "\n".join(bad)


def test_pipelines_do_not_even_try_to_import_torch():
    _require("pipelines")
    modules = sorted(
        "pipelines." + ".".join(p.relative_to(ROOT / "pipelines").with_suffix("").parts)
        for p in _py_files("pipelines") if p.name != "__init__.py"
    )
    result = _probe(["pipelines", *modules], heavy=("torch", "transformers"))
    assert result["attempts"] == [], f"pipelines tried to import: {result['attempts']}"


@pytest.mark.parametrize("package", ["crop/models", "crop/eval", "crop/pruning", "crop/data"])
def test_torch_side_packages_never_import_beam(package):
    _require(package)
    bad = _violations(package, {"apache_beam", "pipelines"})
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("rel", ["crop/geometry", "crop/formatting.py", "crop/contract.py", "crop/__init__.py"])
def test_pure_modules_import_only_stdlib_numpy_and_crop(rel):
    allowed_third_party = {"numpy"}
    if rel == "crop/contract.py":
        # validation and HF features are imported lazily inside functions (checked dynamically above)
        allowed_third_party |= {"jsonschema", "referencing", "datasets", "schemas"}
    bad = []
    for path in _py_files(rel):
        for module, line in _imported_modules(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in allowed_third_party or top in ("crop", "<relative>"):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)
