"""Guards: a plan for another prompt, ``labels``, two handles on one model (crop/pruning/guards.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crop.geometry import Region
from crop.pruning import attach_fastv, attach_ilp, region_keep_plan, token_layout
from crop.pruning.guards import PromptGuard, attached_handle
from crop.pruning.plugin import decoder_layers

from pruning_tiny import FAMILIES, build_inputs, build_model

torch.set_num_threads(1)
K, R = 2, 5
REG = Region(2, 1, 5, 4)


def _plan(model, x):
    lay = token_layout(model, x)
    return lay, region_keep_plan(lay, [REG] * len(lay), image_sizes_wh=[(16, 12)] * len(lay), llava_geometry="resize")


def _n_hooks(model) -> int:
    _, layers = decoder_layers(model)
    return len(model._forward_pre_hooks) + sum(len(l._forward_pre_hooks) + len(l._forward_hooks) for l in layers)


# ----------------------------------------------------------------------------- plan for another prompt
def test_longer_prompt_is_refused_not_pruned_at_wrong_positions():
    """The reviewer's case: a plan for a 23-token prompt on a 25-token prompt (2 more text tokens)."""
    model = build_model("llava")
    x23 = build_inputs("llava", prefix=3)
    x25 = build_inputs("llava", prefix=5)
    _, plan = _plan(model, x23)
    assert plan.prompt_len == 23 and x25["input_ids"].shape[1] == 25
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        with pytest.raises(ValueError, match="prefill of 25 tokens does not match the keep plan, built for a 23-token"):
            model(**x25)
        with pytest.raises(ValueError, match="prefill of 25 tokens"):
            model.generate(**x25, max_new_tokens=2, do_sample=False)
        model(**x23)  # the right prompt still runs


@pytest.mark.parametrize("family", FAMILIES)
def test_same_length_prompt_with_moved_image_is_refused(family):
    """Equal length, image 2 tokens later: the positions the plan treats as visual hold text."""
    model = build_model(family)
    x = build_inputs(family, prefix=3, suffix=4)
    y = build_inputs(family, prefix=5, suffix=2)
    assert x["input_ids"].shape == y["input_ids"].shape
    _, plan = _plan(model, x)
    v0 = int(plan.visual[0][0])
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        with pytest.raises(ValueError, match=rf"row 0: the keep plan \(row 0\) was built for another prompt.*"
                                             rf"no image token at visual positions \[{v0}\.\.{v0 + 1}\]"):
            model(**y)
        with pytest.raises(ValueError, match="image tokens the plan does not know"):
            model.generate(**y, max_new_tokens=2, do_sample=False)


def test_error_names_the_bad_row_of_a_batch():
    model = build_model("llava")
    x = build_inputs("llava", batch=2)
    _, plan = _plan(model, x)
    y = {k: v.clone() for k, v in x.items()}
    y["input_ids"][1] = torch.roll(x["input_ids"][1], 1)  # row 1: image one token later
    with torch.no_grad(), attach_ilp(model, plan, layer=K), pytest.raises(ValueError, match=r"^row 1: .*\(row 1\)"):
        model(**y)


def test_plan_without_visual_positions_checks_its_dropped_positions():
    """A hand-built plan (no recorded visual positions): dropped positions must hold image tokens."""
    model = build_model("llava")
    x = build_inputs("llava", prefix=3, suffix=4)
    y = build_inputs("llava", prefix=5, suffix=2)
    _, plan = _plan(model, x)
    bare = dataclasses.replace(plan, visual=None)
    with torch.no_grad(), attach_ilp(model, bare, layer=K):
        model(**x)
        with pytest.raises(ValueError, match="as dropped.*no image token at dropped positions"):
            model(**y)


def test_beams_repeat_plan_rows_and_check_once_per_prefill(monkeypatch):
    """One plan row for 2 beams passes; the check runs at the prefill only, not per decode step."""
    model = build_model("llava")
    x = build_inputs("llava")
    _, plan = _plan(model, x)
    calls = []
    orig = PromptGuard.check
    monkeypatch.setattr(PromptGuard, "check", lambda self, *a: (calls.append(a[3]), orig(self, *a))[1])
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        out = model.generate(**x, max_new_tokens=4, do_sample=False, num_beams=2, num_return_sequences=2)
    assert out.shape == (2, 23 + 4)
    assert calls == [23]  # one prefill of 23 tokens; the decode steps skipped the check


def test_uncached_generation_continues_only_the_checked_prompt():
    """``use_cache=False`` re-runs prompt + new tokens: accepted as the continuation of the checked prompt."""
    model = build_model("llava")
    x = build_inputs("llava")
    _, plan = _plan(model, x)
    longer = torch.cat([x["input_ids"], torch.tensor([[11, 12]])], 1)  # (1, 25)
    other = longer.clone()
    other[0, 0] += 1  # same length, different prompt
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        gen = model.generate(**x, max_new_tokens=3, do_sample=False, use_cache=False)
        assert gen.shape == (1, 26)
        model(input_ids=longer, pixel_values=x["pixel_values"])  # continues the prompt just checked
        with pytest.raises(ValueError, match="accepted only as the continuation"):
            model(input_ids=other, pixel_values=x["pixel_values"])


def test_inputs_embeds_only_checks_the_length():
    model = build_model("llava")
    x = build_inputs("llava")
    _, plan = _plan(model, x)
    with torch.no_grad():
        emb = model.get_input_embeddings()(x["input_ids"])  # (1, 23, D): length is all that can be checked
    with torch.no_grad(), attach_ilp(model, plan, layer=K):
        assert model(inputs_embeds=emb).logits.shape[1] == 23 - plan.drop[0].size
        with pytest.raises(ValueError, match="prefill of 24 tokens"):
            model(inputs_embeds=torch.cat([emb, emb[:, -1:]], 1))


def test_fastv_layouts_for_another_prompt_are_refused():
    model = build_model("qwen2_vl")
    x = build_inputs("qwen2_vl", prefix=3, suffix=4)
    y = build_inputs("qwen2_vl", prefix=5, suffix=2)
    z = build_inputs("qwen2_vl", prefix=5, suffix=4)
    lay = token_layout(model, x)
    with torch.no_grad(), attach_fastv(model, lay, budget=R, layer=K):
        model(**x)
        with pytest.raises(ValueError, match=r"row 0: the FastV layouts \(row 0\) was built for another prompt"):
            model(**y)
        with pytest.raises(ValueError, match="does not match the FastV layouts"):
            model.generate(**z, max_new_tokens=2, do_sample=False)


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize("kind", ["ilp", "fastv"])
def test_labels_raise_a_clear_error(kind):
    model = build_model("llava")
    x = build_inputs("llava")
    lay, plan = _plan(model, x)
    handle = attach_ilp(model, plan, layer=K) if kind == "ilp" else attach_fastv(model, lay, budget=R, layer=K)
    with handle, torch.no_grad(), pytest.raises(ValueError, match="labels are not supported while an ILP / FastV"):
        model(**x, labels=x["input_ids"])
    with torch.no_grad():
        assert model(**x, labels=x["input_ids"]).loss is not None  # removed: labels work again


# ----------------------------------------------------------------------------- one handle per model
@pytest.mark.parametrize("first,second", [("ilp", "ilp"), ("ilp", "fastv"), ("fastv", "ilp"), ("fastv", "fastv")])
def test_second_handle_on_one_model_raises(first, second):
    model = build_model("llava")
    x = build_inputs("llava")
    lay, plan = _plan(model, x)

    def attach(kind, target=model):
        return attach_ilp(target, plan, layer=K) if kind == "ilp" else attach_fastv(target, lay, budget=R, layer=K)

    n0 = _n_hooks(model)
    with torch.no_grad():
        h1 = attach(first)
        ref = model(**x).logits
        n1 = _n_hooks(model)
        name = "an ILP handle" if first == "ilp" else "a FastV handle"
        with pytest.raises(RuntimeError, match=f"already has {name} \\(layer K=2.*call remove\\(\\) on it"):
            attach(second)
        with pytest.raises(RuntimeError, match="already has"):
            attach(second, model.model)  # the inner model shares the decoder stack
        assert _n_hooks(model) == n1  # the refused attach left no hooks behind
        torch.testing.assert_close(model(**x).logits, ref, atol=0, rtol=0)  # first handle unaffected
        stack, _ = decoder_layers(model)
        assert attached_handle(stack) is h1
        h1.remove()
        h1.remove()  # idempotent
        assert _n_hooks(model) == n0 and attached_handle(stack) is None
        with attach(second) as h2:  # free again after remove()
            out = model(**x).logits
            assert out.shape[1] < x["input_ids"].shape[1]
        assert _n_hooks(model) == n0
        h3 = attach(first)  # and after the with-block
        torch.testing.assert_close(model(**x).logits, ref, atol=0, rtol=0)
        h3.remove()
        assert h2 is not h3
