"""``enable_parallelism``: diffusers' context parallelism on every transformer of a pipeline (both Wan 2.2
experts), ready for vidaccel's techniques before or after.

Per transformer it: checks the process group, the head count and that the family has a plan (Wan's own
``_cp_plan``; CogVideoX's from :meth:`~vidaccel.families.ModelFamily.cp_plan`); gives self-attention layers whose
processor does not dispatch through diffusers (CogVideoX) a :class:`~vidaccel.core.processors.DispatchProcessor`
underneath any technique wrapper; picks the self-attention backend per processor (ring needs one that returns
the log-sum-exp: ``vidaccel_flash``); calls ``enable_parallelism`` with the plan; and checks each call's token
counts before diffusers splits them.
"""

from __future__ import annotations

import logging
import math

from ..core.attention_backend import FLASH, backend_member, can_return_lse, select, selected
from ..core.context_parallel import cp_config
from ..core.processors import DispatchProcessor, wrap_processor
from ..core.technique import attached, check_parallel
from ..families import family_for, pipeline_transformers, supported_model_classes
from .config import ParallelConfig, as_parallel_config

logger = logging.getLogger(__name__)

__all__ = ["enable_parallelism", "parallel_config_of"]

_CHECK_HANDLE = "_vidaccel_parallel_check"


def parallel_config_of(target) -> ParallelConfig | None:
    """The :class:`ParallelConfig` :func:`enable_parallelism` applied to ``target``'s first transformer, or None."""
    return getattr(pipeline_transformers(target)[0][1], "_vidaccel_parallel", None)


def _check_group(config: ParallelConfig) -> None:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("context parallelism needs a process group: launch with `torchrun --nproc-per-node "
                           f"{config.degree} ...` and call vidaccel.parallel.init_distributed() first "
                           "(load_pipeline(..., parallel=...) does)")
    world = dist.get_world_size()
    if world != config.degree:
        raise ValueError(f"ParallelConfig(ulysses={config.ulysses}, ring={config.ring}) needs {config.degree} "
                         f"processes, but the process group has {world}: launch with --nproc-per-node "
                         f"{config.degree} (or make ulysses * ring equal the number of processes)")
    if torch.accelerator.device_count() == 0:
        raise RuntimeError("diffusers' enable_parallelism needs an accelerator: it computes "
                           "rank % torch.accelerator.device_count(), which is 0 on a machine without GPUs. Context "
                           "parallelism is for several GPUs; prompt batches (--prompts) run on CPUs")


def _check_model(role: str, model, config: ParallelConfig) -> None:
    family = family_for(model)
    name = type(model).__name__
    if cp_config(model) is not None:
        raise ValueError(f"context parallelism is already enabled on {role} ({name})")
    if family.cp_plan(model) is None:
        raise ValueError(f"{name} has no context-parallel plan; supported: {', '.join(supported_model_classes())}")
    for i, attn in family.self_attentions(model):
        processor = attn.processor
        while processor is not None:
            if not getattr(processor, "context_parallel", True):
                raise ValueError(f"{type(processor).__name__} (layer {i} of {role}) computes attention over this "
                                 "rank's tokens only and does not support context parallelism")
            processor = processor.inner if getattr(processor, "forwards_attention", False) else None
    check_parallel(role, model, [(type(t), t.config) for t in attached(model).values()], ring=config.ring,
                   ulysses=config.ulysses)
    heads = model.config.num_attention_heads
    if heads % config.ulysses:
        raise ValueError(f"ParallelConfig.ulysses={config.ulysses} is not allowed for {role} ({name}): its "
                         f"{heads} attention heads must divide evenly by the Ulysses degree")
    if config.attention != "auto":
        backend = backend_member(config.attention)
        if config.ring > 1 and not can_return_lse(backend):
            raise ValueError(f"ParallelConfig.attention={config.attention!r} cannot run ring attention (it does not "
                             f"return the log-sum-exp); use 'auto' or {FLASH!r}")


def _dispatching(attn, layer: int, family) -> None:
    """Make the processor at the bottom of ``attn``'s wrapper chain one that dispatches through diffusers."""
    parent, processor = None, attn.processor
    while getattr(processor, "forwards_attention", False):
        parent, processor = processor, processor.inner
    if hasattr(processor, "_parallel_config"):
        return
    dispatcher = wrap_processor(DispatchProcessor, processor, layer, family=family)
    if parent is None:
        attn.set_processor(dispatcher)
    else:
        parent.inner = dispatcher


def _token_check(family, world: int):
    def check(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if hidden is None:
            return None
        grid = family.input_grid(module, hidden)
        video = math.prod(grid)
        if video % world:
            raise ValueError(f"context parallelism over {world} ranks needs the video tokens to split evenly: "
                             f"{video} tokens (grid {grid}) do not; change the frame count or size")
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        if family.text_in_sequence and text is not None and text.shape[1] % world:
            raise ValueError(f"context parallelism over {world} ranks needs the text tokens to split evenly: "
                             f"{text.shape[1]} do not (set max_sequence_length to a multiple of {world})")
        return None

    return check


def _enable_one(model, config: ParallelConfig) -> None:
    from diffusers import ContextParallelConfig

    family = family_for(model)
    for i, attn in family.self_attentions(model):
        _dispatching(attn, i, family)
        if config.attention != "auto":
            select(attn.processor, config.attention)
        elif config.ring > 1 and not can_return_lse(selected(attn.processor)):
            select(attn.processor, FLASH)
    model.enable_parallelism(config=ContextParallelConfig(ring_degree=config.ring, ulysses_degree=config.ulysses),
                             cp_plan=family.cp_plan(model))
    handle = model.register_forward_pre_hook(_token_check(family, config.degree), with_kwargs=True)
    object.__setattr__(model, _CHECK_HANDLE, handle)
    object.__setattr__(model, "_vidaccel_parallel", config)


def enable_parallelism(target, config=None, **fields):
    """Spread every call of ``target``'s transformers (a pipeline: both Wan 2.2 experts; or a bare transformer)
    over the process group by context parallelism; returns ``target``.

    Args:
        target: a Wan / CogVideoX pipeline or transformer, the same on every rank (same weights, same inputs).
        config: a :class:`ParallelConfig` (or a dict / int, see :func:`as_parallel_config`), or its fields as
            keywords: ``enable_parallelism(pipe, ulysses=2, ring=2)``.

    vidaccel techniques may be applied before or after. Each rank then runs the whole pipeline on the same
    inputs; the transformers split the token sequence among the ranks and gather their output, so every rank
    holds the same result (write it on rank 0 only: :func:`~vidaccel.parallel.is_main_process`).

    Raises:
        RuntimeError: no process group, or no accelerator (diffusers needs one).
        ValueError: world size ≠ ``ulysses * ring``; heads not divisible by ``ulysses``; a model without a plan;
            parallelism already enabled.
    """
    if config is not None and fields:
        raise ValueError(f"give enable_parallelism a config or its fields, not both (got {sorted(fields)} too)")
    config = as_parallel_config(config) if config is not None else ParallelConfig(**fields)
    if config is None:
        raise ValueError("enable_parallelism needs a ParallelConfig, e.g. ParallelConfig(ulysses=2)")
    models = pipeline_transformers(target)
    for role, model in models:
        _check_model(role, model, config)
    _check_group(config)
    for _, model in models:
        _enable_one(model, config)
    logger.info("context parallelism on %s: ulysses=%d ring=%d", ", ".join(r for r, _ in models), config.ulysses,
                config.ring)
    return target
