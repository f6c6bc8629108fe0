"""The one ``accelerate`` set-up of both trainers (``crop train-localizer``, ``crop train-plc``).

Launch either trainer on one device as a plain command, or on several with
``accelerate launch --config_file configs/accelerate-{ddp,fsdp,deepspeed-zero2}.yaml -m crop.cli ...``:
the launcher's environment picks DDP / FSDP2 / DeepSpeed ZeRO-2 and the process count; the
trainer's config picks precision, gradient accumulation and the tracker. What lives here:

* :func:`make_accelerator`: the ``Accelerator`` (CPU processes run as MULTI_CPU over gloo; the
  scheduler is stepped by the loop once per optimizer step, not by accelerate);
* :func:`decide_on_main`: the run-folder rule decided by rank 0 and shared with every rank;
* :func:`full_state` / :func:`load_full_state`: full weights and a *name-keyed* optimizer state
  under one process, DDP (full replicas) and FSDP (``torch.distributed.checkpoint.state_dict``,
  gathered on save, re-sharded on load); DeepSpeed keeps its optimizer inside its engine (its own
  checkpoints are pickles), so its checkpoints hold weights only and cannot resume;
* rank agreement helpers: summed loader counters, a stop signal seen by any rank, tearing the
  process group down before exit.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

MODES = ("plain", "fsdp", "deepspeed")


def mixed_precision(precision: str) -> str:
    """``auto`` | ``bf16`` | ``fp32`` -> accelerate's ``mixed_precision``: auto = bf16 on a CUDA device that has it."""
    import torch

    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"bf16": "bf16", "fp32": "no"}[precision]


def make_accelerator(*, precision: str, grad_accum: int, log_with: str = "none", project_dir: str | None = None,
                     find_unused: bool = False, cpu: bool | None = None):
    """The ``Accelerator`` of a training run; DDP / FSDP / DeepSpeed and the process count come from
    ``accelerate launch`` (environment), the rest from the arguments."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs

    mp = mixed_precision(precision)
    state = AcceleratorState._shared_state
    if state and state.get("num_processes", 1) == 1 and state.get("_mixed_precision") != mp:
        # a second single-process run in this interpreter with another precision (tests, notebooks)
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    # cpu=True on a machine without CUDA: accelerate then runs several launched processes as
    # MULTI_CPU over gloo instead of ignoring the launcher's ranks
    return Accelerator(mixed_precision=mp, gradient_accumulation_steps=grad_accum,
                       log_with=tracker_spec(log_with), project_dir=project_dir,
                       cpu=(not torch.cuda.is_available()) if cpu is None else cpu,
                       step_scheduler_with_optimizer=False,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)])


def tracker_spec(log_with: str):
    """``log_with`` for the Accelerator: the tracker when its package is installed, else None with one
    warning (tracking is never required to train)."""
    if log_with == "none":
        return None
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    checks = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    if log_with not in checks:
        raise ValueError(f"log_with={log_with!r}: choose tensorboard, wandb or none")
    if not checks[log_with]():
        import warnings

        warnings.warn(f"log_with={log_with!r}: the {log_with} package is not installed "
                      f"(pip install {log_with}); training goes on without it", stacklevel=2)
        return None
    return log_with


def tracker_values(rec: dict) -> dict:
    """A log row as tracker values: numbers only, loader counters as ``loader/<kind>``."""
    out = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update({f"loader/{k}": v for k, v in (rec.get("loader") or {}).items()})
    return out


def tracker_config(cfg: dict) -> dict:
    """A nested config as flat tracker hyper-parameters (scalars kept, the rest as JSON)."""
    out: dict = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in tracker_config(value).items()})
        else:
            out[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return out


def check_deepspeed(acc: Any, batch_size: int, grad_accum: int, max_grad_norm: float) -> None:
    """DeepSpeed takes batch size, accumulation and clipping from its own config: they must agree."""
    ds = acc.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = batch_size  # no prepared DataLoader to infer it from
    ds["train_batch_size"] = batch_size * grad_accum * acc.num_processes
    for key, want in (("gradient_accumulation_steps", grad_accum), ("gradient_clipping", max_grad_norm)):
        if ds.get(key, "auto") == "auto":
            ds[key] = want
        elif float(ds[key]) != float(want):
            raise ValueError(f"DeepSpeed config {key}={ds[key]} but trainer config says {want}; make them equal")


def decide_on_main(acc: Any, decide: Callable[[], str], error: type[Exception]) -> str:
    """``decide()`` on the main process, its answer (or its ``error``) shared with every rank."""
    decision: list = [None]
    if acc.is_main_process:
        try:
            decision = [decide()]
        except error as e:
            decision = [f"error:{e}"]
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(decision)
    if decision[0].startswith("error:"):
        raise error(decision[0][len("error:"):])
    return decision[0]


def summed_counts(counts: dict, acc: Any) -> dict[str, int]:
    """Per-rank counters (kind -> count) summed over every rank."""
    mine = dict(counts)
    if acc.num_processes == 1:
        return mine
    from accelerate.utils import gather_object

    total: dict[str, int] = {}
    for part in gather_object([mine]):
        for k, v in part.items():
            total[k] = total.get(k, 0) + v
    return total


def stop_requested(signals: Any, acc: Any) -> bool:
    """Whether any rank got a stop signal (agreed by all ranks: a checkpoint is a collective)."""
    flag = signals.requested is not None
    if acc.num_processes == 1:
        return flag
    import torch

    return bool(acc.reduce(torch.tensor(float(flag), device=acc.device), "sum").item() > 0)


def leave_process_group() -> None:
    """Under ``accelerate launch``, tear the process group down before the interpreter exits (a rank
    exiting while another still holds a gloo group can abort it)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------- full state


def distributed_mode(acc: Any) -> str:
    """"plain" (one process or DDP: full replicas), "fsdp" or "deepspeed"."""
    kind = str(getattr(acc, "distributed_type", "NO")).rsplit(".", 1)[-1]
    return {"FSDP": "fsdp", "DEEPSPEED": "deepspeed"}.get(kind, "plain")


def raw_optimizer(opt: Any) -> Any:
    return getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps the torch one


def param_names(model: Any, opt: Any) -> list[str]:
    """Names of the optimizer's parameters in its own order (the index a state dict uses)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for g in raw_optimizer(opt).param_groups for p in g["params"]]


def full_weights(acc: Any, prepared: Any, model: Any) -> dict:
    """Full weights (a collective under FSDP: call on every rank)."""
    mode = distributed_mode(acc)
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(prepared, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if mode == "deepspeed":
        return acc.get_state_dict(prepared)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def full_state(acc: Any, prepared: Any, model: Any, opt: Any) -> tuple[dict, dict | None]:
    """Full weights and the name-keyed optimizer state ``{"state": {name: {slot: v}}, "param_groups"}``
    (None under DeepSpeed). A collective under FSDP: call on every rank."""
    mode = distributed_mode(acc)
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(prepared, options=options),
                get_optimizer_state_dict(prepared, raw_optimizer(opt), options=options))
    if mode == "deepspeed":
        return acc.get_state_dict(prepared), None
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    sd = raw_optimizer(opt).state_dict()
    names = param_names(model, opt)
    groups = [dict(g, params=[names[i] for i in g["params"]]) for g in sd["param_groups"]]
    return weights, {"state": {names[i]: st for i, st in sd["state"].items()}, "param_groups": groups}


def load_full_state(acc: Any, prepared: Any, model: Any, opt: Any, weights: dict, osd: dict,
                    strict: bool = True, where: str = "checkpoint") -> None:
    """Put full ``weights`` and a name-keyed optimizer state back (every rank, after ``prepare``).

    ``strict=False`` loads a subset of the weights (the trainable ones a PLC checkpoint stores)."""
    import torch

    mode = distributed_mode(acc)
    if mode == "deepspeed":
        raise ValueError("resuming under DeepSpeed is not supported: its optimizer state lives in the "
                         "engine and is not saved by this trainer")
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, strict=strict)
        set_model_state_dict(prepared, weights, options=options)
        set_optimizer_state_dict(prepared, raw_optimizer(opt), osd, options=options)
        return
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(weights, strict=strict)
    if unexpected:
        raise ValueError(f"{where}: weights the model does not have: {sorted(unexpected)[:5]}")
    index = {n: i for i, n in enumerate(param_names(model, opt))}
    unknown = sorted(set(osd["state"]) - set(index))
    if unknown:
        raise ValueError(f"{where}: optimizer state for parameters the model does not train: {unknown[:5]}")
    groups = [dict(g, params=[index[n] for n in g["params"]]) for g in osd["param_groups"]]
    raw_optimizer(opt).load_state_dict({"state": {index[n]: st for n, st in osd["state"].items()},
                                        "param_groups": groups})


def write_optimizer(folder: str, osd: dict) -> None:
    """``optimizer.safetensors`` (tensors keyed ``<param name>.<slot>``) + ``optimizer.json`` (the rest)."""
    import torch
    from safetensors.torch import save_file

    tensors, meta = {}, {"param_groups": osd["param_groups"], "state": {}}
    for name, st in osd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{name}.{k}"] = v.detach().contiguous().cpu()
            else:
                meta["state"].setdefault(name, {})[k] = v
    save_file(tensors, os.path.join(folder, "optimizer.safetensors"))
    with open(os.path.join(folder, "optimizer.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f)


def read_optimizer(folder: str) -> dict:
    """The name-keyed optimizer state :func:`write_optimizer` wrote."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, "optimizer.json"), encoding="utf-8") as f:
        meta = json.load(f)
    state: dict = {k: dict(v) for k, v in meta["state"].items()}
    for key, t in load_file(os.path.join(folder, "optimizer.safetensors")).items():
        name, _, slot = key.rpartition(".")  # slot names (step, exp_avg, ...) hold no dot
        state.setdefault(name, {})[slot] = t
    return {"state": state, "param_groups": meta["param_groups"]}
