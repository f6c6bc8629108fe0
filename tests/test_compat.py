"""crop.compat against the installed transformers, and the version ranges against each other.

Three places state which releases are supported and must agree: ``pyproject.toml`` (what pip
may install), ``requirements.lock`` (what a fresh install gets = the highest tested),
``.ci/lowest.txt`` (the lowest tested) and ``crop.compat.TESTED_TRANSFORMERS`` (what warns).
The tripwire tests read the running release's own signatures, so a release that moves a call
convention the hooks rely on fails here by name instead of producing wrong pruning.
"""

from __future__ import annotations

import inspect
import re
import tomllib
import warnings
from pathlib import Path

import pytest
import transformers
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

from crop import compat

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, Version]:
    """name -> pinned version for the lines of a requirements file that apply to this interpreter."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        (spec,) = req.specifier
        assert spec.operator == "==", line
        out[_norm(req.name)] = Version(spec.version)
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_norm(Requirement(d).name): Requirement(d) for d in deps}


# ----------------------------------------------------------------------------- the cache adapter
def test_cache_found_under_either_name():
    a, b = object(), object()
    assert compat.cache_of_kwargs({"cache": a}) is a
    assert compat.cache_of_kwargs({"past_key_values": b}) is b
    assert compat.cache_of_kwargs({"cache": None, "past_key_values": b}) is b
    assert compat.cache_of_kwargs({"hidden_states": 1}) is None

    class Out:
        pass

    o = Out()
    o.past_key_values = b
    assert compat.cache_of_output(o) is b
    o.cache = a
    assert compat.cache_of_output(o) is a


# ----------------------------------------------------------------------------- tripwires
def _decoder_layer_classes():
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer

    return [LlamaDecoderLayer, Qwen2VLDecoderLayer]


@pytest.mark.parametrize("cls", _decoder_layer_classes(), ids=lambda c: c.__name__)
def test_decoder_layer_takes_what_the_hooks_rewrite(cls):
    """The pre-hooks rewrite hidden_states, attention_mask, position_embeddings, position_ids and read the cache."""
    params = inspect.signature(cls.forward).parameters
    for name in ("hidden_states", "attention_mask", "position_embeddings", "position_ids"):
        assert name in params, f"{cls.__name__}.forward lost {name!r}: update crop/compat.py and the hooks"
    assert compat.cache_kwarg() in params, (
        f"transformers {transformers.__version__} passes the cache to {cls.__name__} as none of "
        f"{compat.CACHE_KWARGS}: update crop/compat.py"
    )


@pytest.mark.parametrize(
    "cls_name",
    ["LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration", "Qwen2VLForConditionalGeneration"],
)
def test_model_forward_declares_the_cache_kwarg(cls_name):
    params = inspect.signature(getattr(transformers, cls_name).forward).parameters
    assert compat.cache_kwarg() in params
    assert [n for n in compat.CACHE_KWARGS if n in params] == [compat.cache_kwarg()]


def test_dynamic_cache_layout():
    """FastV reads layer K-1's rotated keys as cache.layers[i].keys; ILP asks per-layer lengths."""
    import torch
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    k = torch.randn(1, 2, 5, 4)
    cache.update(k, k.clone(), 0)
    cache.update(k[:, :, :3], k[:, :, :3].clone(), 1)
    assert cache.get_seq_length(0) == 5 and cache.get_seq_length(1) == 3
    assert torch.equal(cache.layers[0].keys, k)
    assert type(cache).__name__ == "DynamicCache" and not getattr(cache, "is_compileable", False)


# ----------------------------------------------------------------------------- the version warning
def test_running_version_is_tested_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.check_transformers_version()


@pytest.mark.parametrize("version", ["5.22.2", "5.26.0", "6.0.0"])
def test_untested_version_warns_once_naming_the_range(monkeypatch, version):
    monkeypatch.setattr(compat, "_version_string", lambda: version)
    monkeypatch.setattr(compat, "_warned", set())
    with pytest.warns(compat.UntestedVersionWarning, match=r"tested: 5\.23\.x to 5\.25\.x") as rec:
        assert not compat.check_transformers_version()
    assert version in str(rec[0].message) and "\n" not in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not compat.check_transformers_version()  # second call: no second warning


def test_attach_ilp_warns_under_an_untested_version(monkeypatch):
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "pruning"))
    try:
        from pruning_tiny import build_inputs, build_model
    finally:
        sys.path.pop(0)
    from crop.pruning import attach_ilp, keep_all_plan, token_layout

    model = build_model("llava")
    plan = keep_all_plan(token_layout(model, build_inputs("llava")))
    monkeypatch.setattr(compat, "_version_string", lambda: "5.99.0")
    monkeypatch.setattr(compat, "_warned", set())
    with pytest.warns(compat.UntestedVersionWarning, match="ILP pruning"):
        attach_ilp(model, plan, layer=2).remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error", compat.UntestedVersionWarning)
        attach_ilp(model, plan, layer=2).remove()


# ----------------------------------------------------------------------------- ranges agree
def test_declared_transformers_range_is_the_tested_range():
    (lo_mm, hi_mm) = compat.TESTED_TRANSFORMERS
    spec = _declared()["transformers"].specifier
    assert str(spec) in (f">={lo_mm[0]}.{lo_mm[1]},<{hi_mm[0]}.{hi_mm[1] + 1}", f"<{hi_mm[0]}.{hi_mm[1] + 1},>={lo_mm[0]}.{lo_mm[1]}")
    lock = _pins(ROOT / "requirements.lock")["transformers"]
    lowest = _pins(ROOT / ".ci" / "lowest.txt")["transformers"]
    assert (lock.major, lock.minor) == hi_mm, "requirements.lock must pin the highest tested transformers"
    assert (lowest.major, lowest.minor) == lo_mm, ".ci/lowest.txt must pin the lowest tested transformers"


@pytest.mark.parametrize("dist", ["transformers", "apache-beam", "accelerate"])
def test_internals_deps_have_both_bounds_and_ci_tests_both(dist):
    req = _declared()[dist]
    ops = {s.operator: Version(s.version) for s in req.specifier}
    assert set(ops) == {">=", "<"}, f"{dist}: internals are touched, so the range needs both bounds"
    lowest = _pins(ROOT / ".ci" / "lowest.txt")[dist]
    assert lowest.release[: len(ops[">="].release)] == ops[">="].release, f".ci/lowest.txt must test {dist}'s lower bound"
    assert lowest in req.specifier and _pins(ROOT / "requirements.lock")[dist] in req.specifier


def test_lock_satisfies_every_declared_range():
    pins = _pins(ROOT / "requirements.lock")
    for name, req in _declared().items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        assert name in pins, f"requirements.lock does not pin {name}"
        assert pins[name] in req.specifier, f"requirements.lock pins {name}=={pins[name]} outside {req.specifier}"


def test_lock_holds_no_cuda_runtime_and_no_local_paths():
    text = (ROOT / "requirements.lock").read_text()
    assert "bash .ci/refresh-lock" in text.split("\n", 3)[1], "the lock's header names the command that refreshes it"
    names = [_norm(Requirement(l.split("#")[0]).name) for l in text.splitlines() if l and not l.startswith((" ", "#"))]
    assert "torch" in names
    bad = [n for n in names if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
    assert not bad, f"CUDA runtime packages in the lock would make a CPU install pull gigabytes: {bad}"
    assert not re.search(r"file:|/work/|/home/|/root/|/tmp/", text)
    # markers in the lock must parse (a universal lock)
    for line in text.splitlines():
        if ";" in line and not line.startswith((" ", "#")):
            Marker(line.split(";", 1)[1].split("#")[0].strip())


def test_plc_entry_points_exist():
    """PLC hands its compressed tokens to LLaVA through ``mm_encoder_outputs`` (transformers 5.x) and
    reads the projected features from ``get_image_features(..., return_dict=True).pooler_output``."""
    from transformers import LlavaForConditionalGeneration, LlavaModel

    assert "mm_encoder_outputs" in inspect.signature(LlavaForConditionalGeneration.forward).parameters
    assert "mm_encoder_outputs" in inspect.signature(LlavaModel.forward).parameters
    assert "pixel_values" in inspect.signature(LlavaModel.get_image_features).parameters
