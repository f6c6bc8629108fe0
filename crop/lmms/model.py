"""``CropLMM``: lmms-eval's model class for any CROP pruning method (``--model crop``).

    lmms-eval --model crop --tasks textvqa_val,pope --batch_size 8 --output_path out/ \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=ilp,layer=2,budget=64,regions=regions.jsonl

model_args (lmms-eval's ``key=value,key=value``):

* ``pretrained`` (required): a LLaVA-1.5 / LLaVA-NeXT / Qwen2-VL checkpoint (hub id or folder);
  ``family`` is read from its config unless given (``llava`` | ``llava_next`` | ``qwen2_vl``);
* ``method``: any name of :mod:`crop.pruning.registry` (``crop methods``), or ``center`` /
  ``random`` (Table 10's regions, pruned with ILP); ``layer`` (K, default 2), ``budget`` (R: a
  token count, a fraction or ``"33.3%"``), ``seed``, ``options`` (a JSON object, or a .json /
  .yaml file of method options);
* ``regions`` (a JSONL regions file) or ``localizer`` (a localizer folder) for region methods.
  Regions-file rows are matched by ``benchmark`` = the lmms-eval task name (or no
  ``benchmark``) and ``key`` = the doc's ``question_id`` (the doc index when it has none);
* ``batch_size`` (also lmms-eval's ``--batch_size``), ``max_new_tokens`` (default 128, when the
  task sets none), ``dtype``, ``device``, ``image_aspect``, ``prompt_style``, ``min_pixels``,
  ``max_pixels`` (as in ``crop eval``'s ``model:`` section);
* ``kept_tokens``: where the per-sample kept-token file goes (:mod:`crop.lmms.kept_log`).

Prompts are ``crop eval``'s (LLaVA's ``vicuna_v1`` conversation for the LLaVA families, the chat
template for Qwen2-VL) around lmms-eval's question text, so LLaVA-1.5 sees what its own
evaluation shows it; lmms-eval's bundled ``llava_hf`` wrapper uses a similar template but forces
batch size 1.

Batching follows lmms-eval's own pattern (its ``Collator``: sort by prompt length, group by
generation kwargs, restore the original order); rows in one batch keep their own regions.
Several processes (``accelerate launch -m lmms_eval ...``): lmms-eval shards the requests by
rank; each process loads the model on ``cuda:<local rank>`` and writes its own side file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms
from lmms_eval.utils import Collator

from crop.eval.config import MethodConfig, parse_budget
from crop.lmms.batch import BatchAnswerer, Question
from crop.lmms.kept_log import KeptLog, kept_log_path

IMAGE_PLACEHOLDERS = ("<image>",)


def parse_options(value: Any) -> dict:
    """``options``: a mapping, a JSON object string, or a path to a .json / .yaml file."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    text = str(value)
    if Path(text).is_file():
        import yaml

        data = yaml.safe_load(Path(text).read_text(encoding="utf-8"))  # JSON is YAML too
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"model_args options must be a JSON object or a file of one, got {value!r}")
    return data


class CropLMM(lmms):
    """lmms-eval ``simple`` model: one VLM, one pruning method, batched ``generate_until``."""

    is_simple = True

    def __init__(self, pretrained: str, family: str | None = None, method: str = "none", layer: int = 2,
                 budget: Any = None, regions: str | None = None, localizer: str | None = None, seed: int = 0,
                 options: Any = None, batch_size: Any = 1, max_new_tokens: int = 128, dtype: str | None = None,
                 device: str | None = None, image_aspect: str = "auto", prompt_style: str = "auto",
                 min_pixels: int | None = None, max_pixels: int | None = None, kept_tokens: str | None = None,
                 max_batch_size: Any = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"crop: unknown model_args {sorted(unknown)}")
        import torch
        from accelerate import Accelerator

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
            if torch.cuda.is_available():
                device = f"cuda:{accelerator.local_process_index}"
        self.accelerator = accelerator
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"crop: batch_size must be >= 1, got {batch_size!r}")
        self.max_new_tokens = int(max_new_tokens)
        method_cfg = MethodConfig(name=str(method), layer=int(layer), budget=parse_budget(budget, "budget"),
                                  regions=regions, localizer=localizer, seed=int(seed),
                                  options=parse_options(options))
        model_fields = {k: v for k, v in (("image_aspect", image_aspect), ("prompt_style", prompt_style),
                                          ("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        self.answerer = BatchAnswerer.load(str(pretrained), method_cfg, family=family, dtype=dtype, device=device,
                                           **model_fields)
        self.method = self.answerer.method
        self._kept_tokens, self._kept_stamp = kept_tokens, time.strftime("%Y%m%d-%H%M%S")
        self._kept_log: KeptLog | None = None

    @property
    def kept_log(self) -> KeptLog:
        """The side file, opened at the first batch: lmms-eval sets ``_rank`` / ``_world_size``
        after ``__init__`` when it runs under torchrun, and the file name carries the rank."""
        if self._kept_log is None:
            self._kept_log = KeptLog(kept_log_path(self._kept_tokens, self.rank, self.world_size,
                                                   stamp=self._kept_stamp))
        return self._kept_log

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> Any:
        return self.answerer.device

    @property
    def model(self) -> Any:
        return self.answerer.model

    @property
    def tokenizer(self) -> Any:
        return self.answerer.frontend.tokenizer

    def _question(self, context: str, doc_to_visual: Any, doc_id: int, task: str, split: str) -> Question:
        """lmms-eval's request -> a :class:`Question` (at most one image per doc: CROP prunes one)."""
        from PIL import Image

        doc = self.task_dict[task][split][doc_id]
        visuals = [v for v in (doc_to_visual(doc) if doc_to_visual is not None else []) if v is not None]
        if len(visuals) > 1:
            raise ValueError(f"crop: {task} doc {doc_id} has {len(visuals)} images; the plug-in prunes one image")
        if visuals and not isinstance(visuals[0], Image.Image):
            raise ValueError(f"crop: {task} doc {doc_id}: only image inputs are supported, got {type(visuals[0])}")
        message = context
        for placeholder in IMAGE_PLACEHOLDERS:  # the frontend places the image itself
            message = message.replace(placeholder, "")
        message = message.strip()
        key = str(doc["question_id"]) if isinstance(doc, dict) and "question_id" in doc else str(doc_id)
        return Question(message=message, image=visuals[0].convert("RGB") if visuals else None, key=key,
                        question=message.split("\n")[0], benchmark=task)

    def generate_until(self, requests: list) -> list[str]:
        from tqdm import tqdm

        def by_length(args: tuple) -> tuple:
            # longest prompt first, as lmms-eval's wrappers sort (errors and OOMs show up early)
            return -len(self.tokenizer(args[0], add_special_tokens=False)["input_ids"]), args[0]

        ordered = Collator([req.args for req in requests], by_length, grouping=True)  # groups by gen kwargs
        results: list[str] = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="crop answering")
        for chunk in ordered.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk)
            gen = dict(all_gen_kwargs[0])  # one group: the same kwargs for every row
            until = gen.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            questions = [self._question(*args) for args in zip(contexts, doc_to_visuals, doc_ids, tasks, splits)]
            answers = self.answerer.answer(questions, until=until, **generation_kwargs(gen, self.max_new_tokens))
            results.extend(a.text for a in answers)
            m = self.method
            self.kept_log.write({"task": task, "split": split, "doc_id": doc_id, "key": q.key, "method": m.name,
                                 "layer": m.layer, "budget": m.budget, "batch_size": len(chunk), **a.report}
                                for task, split, doc_id, q, a in zip(tasks, splits, doc_ids, questions, answers))
            for args, a in zip(chunk, answers):
                self.cache_hook.add_partial("generate_until", (args[0], all_gen_kwargs[0]), a.text)
            bar.update(len(chunk))
        bar.close()
        return ordered.get_original(results)

    def loglikelihood(self, requests: list) -> list:
        raise NotImplementedError("crop: loglikelihood tasks are not supported (pruning methods act on "
                                  "generation); use a generate_until task")

    def generate_until_multi_round(self, requests: list) -> list[str]:
        raise NotImplementedError("crop: multi-round generation is not supported")


def generation_kwargs(gen: dict, default_max_new_tokens: int) -> dict:
    """lmms-eval task ``generation_kwargs`` -> ``generate`` kwargs: greedy unless temperature > 0
    (LLaVA's evaluation decodes greedily; tasks set ``temperature: 0``)."""
    out = {"max_new_tokens": int(gen.get("max_new_tokens") or default_max_new_tokens)}
    temperature = float(gen.get("temperature") or 0)
    if temperature > 0:
        out.update(do_sample=True, temperature=temperature)
        if gen.get("top_p") is not None:
            out["top_p"] = float(gen["top_p"])
    if gen.get("num_beams"):
        out["num_beams"] = int(gen["num_beams"])
    return out
