"""What techniques need to know about diffusers' context parallelism on a transformer, in one place.

``transformer.enable_parallelism(config=ContextParallelConfig(...))`` records the config on the model and
registers split / gather hooks (``cp_input---<module>``, ``cp_output---<module>``) from the model's plan: every
rank then computes a slice of the token sequence between the split (before the first block) and the gather
(after the output projection). A technique that watches tensors inside that region sees only its rank's shard,
so anything it decides from them must be agreed over the ranks (:func:`all_reduce_sum`); a diffusers hook it adds
on a module that carries a split hook must run *inside* the split (:func:`keep_split_hooks_outermost`); and a
module it swaps must take the swapped module's hooks along (:func:`move_hooks`).
"""

from __future__ import annotations

import torch

__all__ = ["cp_config", "cp_group", "cp_world", "all_reduce_sum", "keep_split_hooks_outermost", "move_hooks",
           "SPLIT_HOOK_PREFIX", "GATHER_HOOK_PREFIX"]

#: Name prefixes of diffusers' context-parallel hooks (``hooks/context_parallel.py``).
SPLIT_HOOK_PREFIX = "cp_input---"
GATHER_HOOK_PREFIX = "cp_output---"


def cp_config(model):
    """The model's ``ContextParallelConfig`` once ``enable_parallelism`` ran on it, else ``None``."""
    parallel = getattr(model, "_parallel_config", None)
    return getattr(parallel, "context_parallel_config", None)


def cp_world(model) -> int:
    """Ranks sharing one sequence (``ring_degree * ulysses_degree``); 1 without context parallelism."""
    cfg = cp_config(model)
    return 1 if cfg is None else cfg.ring_degree * cfg.ulysses_degree


def cp_group(model):
    """The process group of all ranks sharing the model's sequence, or ``None`` without context parallelism."""
    cfg = cp_config(model)
    if cfg is None or cfg._flattened_mesh is None:
        return None
    return cfg._flattened_mesh.get_group()


def all_reduce_sum(values: torch.Tensor, group) -> torch.Tensor:
    """``values`` summed over ``group`` (identical on every rank afterwards); ``values`` itself when ``group`` is
    ``None``."""
    if group is None:
        return values
    import torch.distributed as dist

    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM, group=group)
    return values


def _registry(module):
    return getattr(module, "_diffusers_hook", None)


def keep_split_hooks_outermost(module) -> None:
    """Re-register the context-parallel split hooks of ``module`` after the others, so the split runs first and
    every other diffusers hook on it sees this rank's shard (the hook registered last runs outermost)."""
    registry = _registry(module)
    if registry is None:
        return
    order = list(registry._hook_order)
    split = [n for n in order if n.startswith(SPLIT_HOOK_PREFIX)]
    if not split or order[-len(split):] == split:
        return
    # unwind from the outermost hook down to the first split hook (removing a middle hook would drop the
    # new_forward of the hook above it), then register the others in their order and the split hooks last
    first = order.index(split[0])
    lifted = [(name, registry.get_hook(name)) for name in order[first:]]
    for name, _ in reversed(lifted):
        registry.remove_hook(name, recurse=False)
    for name, hook in [x for x in lifted if x[0] not in split] + [x for x in lifted if x[0] in split]:
        registry.register_hook(hook, name)


def move_hooks(old, new) -> None:
    """Move every diffusers hook of module ``old`` onto ``new`` (same order), for a module about to replace
    ``old`` in the model: a swapped output projection keeps its context-parallel gather."""
    registry = _registry(old)
    if registry is None or not registry._hook_order:
        return
    from diffusers.hooks import HookRegistry

    moved = [(name, registry.get_hook(name)) for name in registry._hook_order]
    for name, _ in reversed(moved):
        registry.remove_hook(name, recurse=False)
    target = HookRegistry.check_if_exists_or_initialize(new)
    for name, hook in moved:
        target.register_hook(hook, name)
