"""Batched, pruned greedy answers for the lmms-eval plug-in; no lmms-eval import here.

:class:`BatchAnswerer` owns one loaded VLM + :class:`crop.eval.models.Frontend` and answers a
list of :class:`Question` rows in one ``generate`` call with any method of the pruning registry
(:mod:`crop.pruning.registry`). Why a module of its own: lmms-eval's wrapper (``crop.lmms.model``)
only orders, groups and logs; everything that decides *what the model sees* (prompt, image view,
region -> tokens, budget) is reused from ``crop eval`` so the two paths answer alike:

* prompts and image views: ``Frontend.prompt`` / ``Frontend.prepare_image`` (``crop.eval.models``);
* regions: :class:`crop.eval.methods.RegionSource` (regions file or in-process localizer), Table
  10's centre / random regions by :func:`crop.eval.methods.region_for_method`;
* fractional budgets per image: :func:`crop.eval.methods.resolve_budget`.

A batch is ragged: rows are left-padded to one length and keep their own regions (the registry
methods take one region per row). Rows without an image are answered unpruned, in a batch of
their own; ``prune`` (a region cut before the LLM: rows of different lengths) answers its rows
one at a time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from crop.eval.config import EvalConfig, MethodConfig, ModelConfig

# crop eval's region-method variants that are ILP with another region (Table 10); not registry lines
REGION_VARIANTS = ("center", "random")


@dataclass(frozen=True)
class Question:
    """One request: the user message (no image placeholder), the original image (PIL, or None),
    a stable key (regions file key, per-sample seeds) and the bare question (for a localizer)."""

    message: str
    image: Any | None
    key: str
    question: str = ""
    benchmark: str | None = None


@dataclass(frozen=True)
class Answer:
    """The decoded answer and the method's report row (``visual_tokens_in`` / ``_kept`` /
    ``_layer_avg``, ``region`` when one was used)."""

    text: str
    report: dict
    new_tokens: int | None = None  # generated tokens up to and including the row's first EOS (as batch 1)


def family_of(path: str) -> str:
    """``llava`` / ``llava_next`` / ``qwen2_vl`` from the checkpoint's ``config.json`` model type."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(path).model_type
    known = {"llava": "llava", "llava_next": "llava_next", "qwen2_vl": "qwen2_vl"}
    if model_type not in known:
        raise ValueError(f"{path}: model type {model_type!r} is not one of CROP's families {sorted(known)}")
    return known[model_type]


class BatchAnswerer:
    """A loaded model + frontend + method; :meth:`answer` answers one batch."""

    def __init__(self, model: Any, frontend: Any, method: MethodConfig, device: Any, dtype: Any,
                 regions: Any = None):
        """``regions``: an object with ``region(question, image, benchmark)`` to use instead of a
        :class:`crop.eval.methods.RegionSource` of ``method`` (``crop eval``'s engine passes itself,
        so its localizer is loaded once and timed per question)."""
        from crop.eval.methods import RegionSource
        from crop.pruning.registry import get_method

        self.model, self.frontend, self.method, self.device, self.dtype = model, frontend, method, device, dtype
        registry_name = "ilp" if method.name in REGION_VARIANTS else method.name
        self.spec = get_method(registry_name)  # KeyError naming the known methods
        needs_region = self.spec.needs_region or method.name in REGION_VARIANTS
        self.regions = (regions if regions is not None else RegionSource(method)) if needs_region else None
        self._region_cache: dict[tuple[str | None, str], Any] = {}

    @classmethod
    def load(cls, pretrained: str, method: MethodConfig, family: str | None = None, dtype: str | None = None,
             device: str | None = None, **model_fields: Any) -> "BatchAnswerer":
        """``from_pretrained`` through ``crop eval``'s loaders; ``method`` is validated as ``crop eval``
        validates it (a region method needs ``regions`` or ``localizer``, FastV a budget, ...)."""
        import torch

        from crop.eval.models import load_frontend, load_model

        if method.name == "plc":
            raise ValueError("method plc needs LLaVA-PLC weights; run it with `crop eval` (not in the plug-in yet)")
        family = family or family_of(pretrained)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("float16" if str(device).startswith("cuda") else "float32")
        model_cfg = ModelConfig(path=pretrained, family=family, dtype=dtype, device=device, **model_fields).validate()
        method = method.validate(family)
        cfg = EvalConfig(model=model_cfg, benchmarks=(), method=method)  # only .model / .method are read
        torch_device, torch_dtype = torch.device(device), getattr(torch, dtype)
        frontend = load_frontend(cfg)
        return cls(load_model(cfg, torch_device, torch_dtype), frontend, method, torch_device, torch_dtype)

    # -- one batch -------------------------------------------------------------------------------

    def region(self, q: Question) -> Any:
        """The question's region on its original image (cached: a localizer runs once per key)."""
        if self.regions is None or q.image is None:
            return None
        cache_key = (q.benchmark, q.key)
        if cache_key not in self._region_cache:
            self._region_cache[cache_key] = self.regions.region(q, q.image, q.benchmark)
        return self._region_cache[cache_key]

    def encode(self, questions: Sequence[Question]) -> dict:
        """Left-padded batch tensors on the device: ``input_ids (B, N)``, ``attention_mask (B, N)``,
        pixel inputs (LLaVA-NeXT: ``pixel_values (B, P, 3, h, w)`` + ``image_sizes``; Qwen2-VL:
        ``pixel_values (sum of patches, d)`` + ``image_grid_thw (B, 3)``)."""
        fe = self.frontend
        has_image = [q.image is not None for q in questions]
        if len(set(has_image)) > 1:
            raise ValueError("a batch mixes rows with and without an image; split it first")
        images = [fe.prepare_image(q.image) for q in questions] if has_image[0] else None
        if fe.encoder is not None:  # Qwen2-VL: the chat encoder pads itself
            enc = fe.encoder.encode([fe.messages(q.message, has_image[0]) for q in questions],
                                    images if images is not None else [None] * len(questions),
                                    generation=True, padding_side="left")
        else:
            prompts = [fe.prompt(q.message, has_image[0]) for q in questions]
            fe.tokenizer.padding_side = "left"  # generation continues every row at the same column
            enc = fe.processor(images=images, text=prompts, padding=True, return_tensors="pt")
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in enc.items() if hasattr(v, "to")}

    def answer(self, questions: Sequence[Question], max_new_tokens: int = 128, until: Sequence[str] = (),
               **generation: Any) -> list[Answer]:
        """Greedy answers (unless ``generation`` asks for sampling) in the order given.

        Rows with an image and rows without go in separate ``generate`` calls; with a fractional
        budget, rows whose images resolve to different R go in separate calls too.
        """
        answers: list[Answer | None] = [None] * len(questions)
        with_image = [i for i, q in enumerate(questions) if q.image is not None]
        text_only = [i for i, q in enumerate(questions) if q.image is None]
        for group, pruned in ((with_image, True), (text_only, False)):
            if not group:
                continue
            for idx, got in zip(group, self._answer_group([questions[i] for i in group], pruned,
                                                          max_new_tokens, until, generation)):
                answers[idx] = got
        return answers  # type: ignore[return-value]

    def _answer_group(self, questions: list[Question], pruned: bool, max_new_tokens: int,
                      until: Sequence[str], generation: dict) -> list[Answer]:
        import torch

        from crop.eval.methods import region_for_method, resolve_budget
        from crop.pruning import token_layout
        from crop.pruning.registry import PruneRequest, get_method

        inputs = self.encode(questions)
        m = self.method
        spec = self.spec if pruned else get_method("none")
        budget = None
        if pruned and m.budget is not None:
            layouts = token_layout(self.model, inputs)
            budgets = [resolve_budget(m.budget, lay) for lay in layouts]
            if len(set(budgets)) > 1:  # a fraction of images with different token counts
                return self._split_by_budget(questions, budgets, max_new_tokens, until, generation)
            budget = budgets[0]
        if pruned and len(questions) > 1 and self.spec.stage == "before_llm" and self.spec.needs_region:
            # a region cut before the LLM keeps a different count per row (even a budget rectangle
            # differs by a token or two) and the cut embeddings cannot be ragged: one row at a time
            return [a for q in questions for a in self._answer_group([q], True, max_new_tokens, until, generation)]
        regions = None
        if pruned and self.regions is not None:
            regions = [region_for_method(m.name, self.region(q), m.seed, q.key) for q in questions]
        req = PruneRequest(budget=budget, layer=m.layer, regions=regions,
                           image_sizes_wh=[q.image.size for q in questions] if pruned else None,
                           llava_geometry=self.frontend.llava_geometry, seed=m.seed,
                           keys=[q.key for q in questions], options=dict(m.options), processor=self.frontend)
        tok = self.frontend.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        kwargs = {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens, "pad_token_id": pad,
                  **generation}
        with torch.inference_mode(), spec.load()(self.model, inputs, req) as run:
            out = self.model.generate(**run.inputs, **kwargs)
            rows = run.rows()
        start = inputs["input_ids"].shape[1] if run.output_has_prompt else 0
        new = out[:, start:]  # (B, new): rows that finished early are padded after their EOS
        lengths = generated_lengths(new, self._eos_ids())
        texts = [tok.decode(row[:n], skip_special_tokens=True) for row, n in zip(new, lengths)]
        answers = []
        for i, text in enumerate(texts):
            report = dict(rows[i])
            if regions is not None:
                report["region"] = list(regions[i])
            answers.append(Answer(cut_at_stop(text, until).strip(), report, lengths[i]))
        return answers

    def _eos_ids(self) -> set[int]:
        """The ids ``generate`` stops a row at: the generation config's EOS (an int or a list)."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = self.frontend.tokenizer.eos_token_id
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}

    def _split_by_budget(self, questions: list[Question], budgets: list[int | None], max_new_tokens: int,
                         until: Sequence[str], generation: dict) -> list[Answer]:
        out: list[Answer | None] = [None] * len(questions)
        for value in dict.fromkeys(budgets):
            idx = [i for i, b in enumerate(budgets) if b == value]
            part = BatchAnswerer.__new__(BatchAnswerer)
            part.__dict__.update(self.__dict__)
            part.method = dataclasses.replace(self.method, budget=value)
            for i, got in zip(idx, part._answer_group([questions[i] for i in idx], True, max_new_tokens,
                                                      until, generation)):
                out[i] = got
        return out  # type: ignore[return-value]


def generated_lengths(new: Any, eos_ids: set[int]) -> list[int]:
    """Per row of ``new (B, T)``: tokens up to and including the first EOS, else ``T``.

    ``generate`` stops a row at its EOS and fills the rest of a batch's columns with padding, so
    this is the length the same row has when generated alone (batch size 1)."""
    out = []
    for row in new.tolist():
        stop = next((j for j, t in enumerate(row) if t in eos_ids), None)
        out.append(len(row) if stop is None else stop + 1)
    return out


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (lmms-eval's ``until``)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
