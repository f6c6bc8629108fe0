"""Inner-LLM pruning as forward pre-hooks on one model instance (no class patching).

From decoder layer ``K`` on, every tensor that is indexed by sequence position is gathered down
to the kept positions, so layers ``>= K`` see (and cache) only kept tokens, while layers ``< K``
run on (and cache) the full sequence::

    layer:   0 .. K-1                      K .. L-1
    tokens:  t t v v v v t t               t t v . . v t t      ('.' = dropped)
    cache:   full length (prefill + new)   kept length (kept prefill + new)

Kept tokens keep their original positions: the (cos, sin) rotary tables the model computed
for the full sequence (including Qwen2-VL's 3-D M-RoPE, already folded to (B, N, D)) are
gathered, not recomputed. During decode the model sizes its 4-D mask against layer 0's cache
(full length); layers ``>= K`` get that mask with the dropped columns removed. Positions of new
tokens come from layer 0's cache length, i.e. they continue the original numbering.

Supported: ``DynamicCache`` (or no cache), ``sdpa`` and ``eager`` attention. Rows of a batch may
drop different positions and keep different numbers of tokens: shorter rows are left-padded to
the longest and the padding slots masked (see :mod:`crop.pruning.gather`); ``model(...)`` then
returns left-padded logits ``(B, M, V)``.

Guards (:mod:`crop.pruning.guards`): a model-level pre-hook checks at every prefill that the
prompt is the one the plan was built for and refuses ``labels``; one handle per model at a time.
"""

from __future__ import annotations

from typing import Any

import torch

from crop.compat import cache_of_kwargs, check_transformers_version
from crop.pruning import guards
from crop.pruning.gather import decode_mask, gather_mask, gather_seq, keep_index, keep_slots, prefill_mask
from crop.pruning.region_map import KeepPlan

__all__ = ["PruneHandle", "attach_ilp", "check_supported", "decoder_layers", "gather_mask", "gather_seq", "keep_index"]

SUPPORTED_ATTN = ("sdpa", "eager")


# ----------------------------------------------------------------------------- model access
def decoder_layers(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """(decoder stack, its layers) of a LLaVA / LLaVA-NeXT / Qwen2-VL / plain causal-LM model."""
    for path in ("model.language_model", "language_model", "model", ""):
        mod = model
        for part in filter(None, path.split(".")):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        layers = getattr(mod, "layers", None) if mod is not None else None
        if isinstance(layers, torch.nn.ModuleList) and len(layers) and hasattr(layers[0], "self_attn"):
            return mod, layers
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def check_supported(model: torch.nn.Module, layer: int, *, min_layer: int = 1) -> int:
    """Validate K and the attention / cache settings; returns the number of layers."""
    _, layers = decoder_layers(model)
    n = len(layers)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer K must be an int, got {layer!r}")
    if layer < min_layer:
        raise ValueError(
            f"layer K={layer} is not supported: K must be >= {min_layer} (K=0 would prune before the LLM; "
            "use prune_inputs for that baseline)"
        )
    if layer > n:
        raise ValueError(
            f"layer K={layer} must be <= the number of decoder layers ({n}); K = {n} means no pruning in the "
            "LLM (the paper's Table 8 row K = 32 on 32-layer LLaVA-1.5-7B)"
        )
    _check_attn(model)
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(gen, "cache_implementation", None) not in (None, "dynamic"):
        raise ValueError(
            f"generation_config.cache_implementation={gen.cache_implementation!r} is not supported; "
            "ILP needs a DynamicCache (layers before and after K hold different lengths)"
        )
    return n


def _check_attn(model: torch.nn.Module) -> None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    impl = getattr(cfg, "_attn_implementation", None)
    if impl not in SUPPORTED_ATTN:
        raise ValueError(
            f"attention implementation {impl!r} is not supported (flex / flash attention take packed or "
            f"block masks that ILP does not rewrite); load the model with attn_implementation in {SUPPORTED_ATTN}"
        )


COMPILE_MESSAGE = (
    "ILP / FastV hooks do not support torch.compile (the pruned layers change sequence length per "
    "plan and the hooks keep Python state between layers); run the model uncompiled"
)


def _is_compiled(model: torch.nn.Module) -> bool:
    """``torch.compile(model)``, ``model.compile()`` or a compiled ``model.forward``."""
    from torch._dynamo.eval_frame import OptimizedModule

    return (
        isinstance(model, OptimizedModule)
        or getattr(model, "_compiled_call_impl", None) is not None
        or hasattr(getattr(model, "forward", None), "_torchdynamo_orig_callable")
    )


@torch.compiler.disable
def _raise_compiled() -> None:
    """Raise outside the traced graph.

    A plain ``raise`` inside a hook that dynamo traces is not what the user sees: dynamo treats
    it as an unhandled exception of the frame, drops the frame and re-runs it eagerly, where
    ``is_compiling()`` is False, so the run silently continues (checked in
    ``tests/pruning/test_ilp.py::test_torch_compile_raises``). A compiler-disabled function is
    called through a graph break and runs eagerly, so its exception reaches the caller.
    """
    raise RuntimeError(COMPILE_MESSAGE)


def _check_runtime(cache: Any) -> None:
    if torch.compiler.is_compiling():
        _raise_compiled()
    if cache is None:
        return
    if getattr(cache, "is_compileable", False) or type(cache).__name__ != "DynamicCache":
        raise RuntimeError(
            f"cache {type(cache).__name__} is not supported (static / compileable caches have fixed lengths); "
            "use the default DynamicCache"
        )


# ----------------------------------------------------------------------------- position gathers
def _gather_positions(kwargs: dict, idx: torch.Tensor, seq_len: int) -> dict:
    out = {}
    pe = kwargs.get("position_embeddings")
    if pe is not None:
        out["position_embeddings"] = tuple(gather_seq(t, idx, dim=1) for t in pe)  # (B, N_keep, D)
    pid = kwargs.get("position_ids")
    if isinstance(pid, torch.Tensor) and pid.shape[-1] == seq_len:
        if pid.dim() == 2:
            out["position_ids"] = gather_seq(pid, idx, dim=1)  # (B, N_keep)
        else:  # (P, B, N): M-RoPE ids carried along
            out["position_ids"] = torch.stack([gather_seq(p, idx, dim=1) for p in pid])
    return out


# ----------------------------------------------------------------------------- the handle
class PruneHandle:
    """Hooks that prune from layer ``K`` on; remove with ``remove()`` or a ``with`` block.

    ``plan`` may be replaced between calls (``handle.plan = new_plan``). ``kept_counts`` reports
    the number of visual tokens kept per row of the last plan.
    """

    kind = "ILP"

    def __init__(self, model: torch.nn.Module, plan: KeepPlan | None, layer: int):
        if _is_compiled(model):
            raise RuntimeError(f"{COMPILE_MESSAGE}: attach to the uncompiled model")
        check_supported(model, layer)
        check_transformers_version(f"{self.kind} pruning")
        self.model = model
        self.layer = layer
        self.plan = plan
        self._stack, self._layers = decoder_layers(model)
        self._hooks: list = []
        self._keep_idx: torch.Tensor | None = None  # (B, M) kept prefill positions, left-padded
        self._pad: torch.Tensor | None = None  # (B, M) padding slots (rows keeping < M tokens)
        self._prefill_len = 0
        self._layer_kwargs: dict = {}
        self._guard = guards.PromptGuard(guards.image_token_id_of(model))
        guards.claim(self._stack, self, type(model).__name__)  # raises if another handle is attached
        try:
            self._hooks.append(model.register_forward_pre_hook(self._pre_model, with_kwargs=True))
            if layer < len(self._layers):  # K = number of layers: every layer runs unpruned
                self._hooks.append(self._layers[layer].register_forward_pre_hook(self._pre_first, with_kwargs=True))
            for lyr in self._layers[layer + 1 :]:
                self._hooks.append(lyr.register_forward_pre_hook(self._pre_rest, with_kwargs=True))
        except Exception:
            self.remove()
            raise

    def __repr__(self) -> str:
        return f"an {self.kind} handle (layer K={self.layer})"

    # what the prefill guard checks against; FastV checks its layouts
    def _prompt_ref(self) -> tuple[guards.PromptRef, object] | None:
        return None if self.plan is None else (guards.ref_of_plan(self.plan), self.plan)

    # plan source; FastV overrides it to select at layer K-1
    def _plan_for_prefill(self) -> KeepPlan:
        if self.plan is None:
            raise RuntimeError("no keep plan set on this ILP handle")
        return self.plan

    @property
    def kept_counts(self) -> tuple[int, ...] | None:
        return None if self.plan is None else self.plan.visual_kept

    def _pre_model(self, module, args, kwargs):
        """Model-level guard: no ``labels``; at a prefill, the prompt must be the plan's."""
        if kwargs.get("labels") is not None:
            raise ValueError(guards.LABELS_MESSAGE)
        cache = cache_of_kwargs(kwargs)
        if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
            return None  # decode step: its prefill was checked
        if torch.compiler.is_compiling():
            _raise_compiled()
        ids = kwargs["input_ids"] if "input_ids" in kwargs else (args[0] if args else None)
        seq = ids if ids is not None else kwargs.get("inputs_embeds")
        got = self._prompt_ref()
        if seq is None or got is None:
            return None  # nothing to check against: the model / layer K raises its own error
        ref, owner = got
        self._guard.check(ref, owner, ids, seq.shape[1], seq.shape[0])
        return None

    def _pre_first(self, module, args, kwargs):
        cache = cache_of_kwargs(kwargs)
        _check_runtime(cache)
        h = args[0] if args else kwargs["hidden_states"]
        batch, seq_len = h.shape[:2]
        mask = kwargs.get("attention_mask")
        prefill = cache is None or cache.get_seq_length(self.layer) == 0
        if prefill:
            _check_attn(self.model)  # once per prefill, not per decode step (config lookup ~25 us)
            idx, pad = keep_slots(self._plan_for_prefill(), batch, seq_len, h.device)  # (B, M), (B, M) | None
            self._keep_idx, self._pad, self._prefill_len = idx, pad, seq_len
            new = _gather_positions(kwargs, idx, seq_len)
            new["attention_mask"] = prefill_mask(mask, idx, pad)  # (B, 1, M, M) or None
            h = gather_seq(h, idx, dim=1)  # (B, N, D) -> (B, M, D)
        else:
            if self._keep_idx is None or self._keep_idx.shape[0] != batch:
                raise RuntimeError("decode step reached layer K without a matching pruned prefill")
            kv_kept = cache.get_seq_length(self.layer) + seq_len  # this layer's cache after the step
            new = {"attention_mask": decode_mask(mask, self._keep_idx, self._pad, self._prefill_len, kv_kept, seq_len)}
        self._layer_kwargs = new
        kwargs.update(new)
        if args:
            args = (h,) + tuple(args[1:])
        else:
            kwargs["hidden_states"] = h
        return args, kwargs

    def _pre_rest(self, module, args, kwargs):
        kwargs.update(self._layer_kwargs)
        return args, kwargs

    def remove(self) -> None:
        """Detach every hook and free the model for another handle (idempotent)."""
        for hk in self._hooks:
            hk.remove()
        self._hooks.clear()
        self._keep_idx, self._pad, self._layer_kwargs = None, None, {}
        guards.release(self._stack, self)

    def __enter__(self) -> "PruneHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def attach_ilp(model: torch.nn.Module, plan: KeepPlan, layer: int = 2) -> PruneHandle:
    """Prune the positions ``plan`` drops from decoder layer ``layer`` (K, paper default 2) on.

    K counts the decoder layers that run on the full sequence (0-based index of the first pruned
    layer), as the paper's K: K = 1 prunes after the first layer, K = number of layers prunes
    nothing in the LLM (outputs equal the unpruned model's; the prompt guard still applies).
    """
    return PruneHandle(model, plan, layer)
