"""Recording the original model's trajectories, and ranking self-attention layers by how much swapping each
alone changes the final output (the ``layers="auto"`` selection of :mod:`vidaccel.accel.linear_attention`)."""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import replace
from typing import Any, Sequence

import torch

from ...core.technique import technique_for_type
from ...families import family_for, pipeline_transformers
from .config import LinearAttentionConfig

logger = logging.getLogger(__name__)

__all__ = ["record_trajectories", "replay", "rank_layers", "cached_ranking"]


def _to(x, device, copy: bool = False):
    """``x`` (tensors inside tuples / lists / dicts) on ``device``; detached copies when ``copy``."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device, copy=copy)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(y, device, copy) for y in x)
    if isinstance(x, dict):
        return {k: _to(v, device, copy) for k, v in x.items()}
    return x


def _sample(output) -> torch.Tensor:
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def _call_kwargs(pipe, call_kwargs: dict | None) -> dict:
    kw = dict(getattr(pipe, "vidaccel_model", {}).get("defaults", {}))
    kw.update(call_kwargs or {})
    kw["output_type"] = "latent"
    kw.pop("num_videos_per_prompt", None)
    return kw


def record_trajectories(pipe, prompts: Sequence[str], *, call_kwargs: dict | None = None, seeds: Sequence[int] = (0,),
                        max_calls: int | None = None) -> dict[str, list[dict]]:
    """Run the pipeline on ``prompts`` × ``seeds`` and record every transformer call.

    Returns ``{role: [{"args", "kwargs", "output"}, ...]}`` (Wan 2.2: each expert's calls are the steps where
    it is active), kept on the CPU (a 480p Wan call is ~8 MB) and moved to the model's device when replayed.
    ``max_calls`` keeps that many evenly spaced calls per role.
    """
    models = pipeline_transformers(pipe)
    records: dict[str, list[dict]] = {role: [] for role, _ in models}
    handles = []
    for role, model in models:
        def pre(module, args, kwargs, role=role):
            records[role].append({"args": _to(args, "cpu", copy=True), "kwargs": _to(kwargs, "cpu", copy=True)})

        def post(module, args, kwargs, output, role=role):
            records[role][-1]["output"] = _sample(output).detach().to("cpu", copy=True)

        handles.append(model.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(model.register_forward_hook(post, with_kwargs=True))
    kw = _call_kwargs(pipe, call_kwargs)
    bar_config = getattr(pipe, "_progress_bar_config", None)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(**dict(bar_config or {}, disable=True))
    try:
        for prompt in prompts:
            for seed in seeds:
                generator = torch.Generator(device="cpu").manual_seed(seed)
                with torch.no_grad():
                    pipe(prompt=prompt, generator=generator, **kw)
    finally:
        for h in handles:
            h.remove()
        if bar_config is None:
            pipe.__dict__.pop("_progress_bar_config", None)
        else:
            pipe._progress_bar_config = bar_config
    if max_calls is not None:
        for role, recs in records.items():
            if len(recs) > max_calls:
                idx = sorted({round(i * (len(recs) - 1) / max(max_calls - 1, 1)) for i in range(max_calls)})
                records[role] = [recs[i] for i in idx]
    return records


def replay(model, rec) -> torch.Tensor:
    device = next(model.parameters()).device
    return _sample(model(*_to(rec["args"], device), **_to(rec["kwargs"], device)))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / (b.float().norm() + 1e-12))


def rank_layers(pipe, config: LinearAttentionConfig | None = None, *, records: dict | None = None,
                prompts: Sequence[str] | None = None, call_kwargs: dict | None = None) -> dict[str, dict]:
    """Sensitivity of every self-attention layer, per transformer role.

    Swaps one layer at a time (with ``config``'s feature map at its initial value) and measures the relative
    error of the transformer's final output over the recorded trajectories (the original model's own inputs).

    Returns ``{role: {"ranking": [layer, ...] least sensitive first, "sensitivity": {layer: error}}}``.
    """
    config = config or LinearAttentionConfig(layers=[])
    if records is None:
        records = record_trajectories(pipe, prompts or config.calibration_prompts,
                                      call_kwargs=call_kwargs if call_kwargs is not None else config.calibration_kwargs,
                                      max_calls=8)
    out = {}
    for role, model in pipeline_transformers(pipe):
        family = family_for(model)
        recs = records.get(role, [])
        errors: dict[int, float] = {}
        technique_cls = technique_for_type(LinearAttentionConfig)
        for i in range(len(family.blocks(model))):
            tech = technique_cls(model, replace(config, layers=(i,), adapter=None, adapter_metadata=None,
                                                num_layers=None), family, role=role)
            tech.attach()
            try:
                with torch.no_grad():
                    errs = [_rel(replay(model, r).cpu(), r["output"]) for r in recs]
            finally:
                tech.detach()
            errors[i] = sum(errs) / len(errs) if errs else 0.0
        ranking = sorted(errors, key=lambda i: (errors[i], i))
        out[role] = {"ranking": ranking, "sensitivity": errors}
        logger.info("linear attention sensitivity (%s): %s", role,
                    ", ".join(f"{i}:{errors[i]:.4f}" for i in ranking))
    return out


_RANKING_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def cached_ranking(pipe, config: LinearAttentionConfig) -> dict:
    """Rank once per pipeline and calibration setting (both Wan 2.2 experts attach from one ranking)."""
    key = (config.calibration_prompts, json.dumps(config.calibration_kwargs, sort_keys=True, default=str),
           config.feature_map, config.rope)
    try:
        cache = _RANKING_CACHE.setdefault(pipe, {})
    except TypeError:
        cache = {}
    if key not in cache:
        cache[key] = rank_layers(pipe, config)
    return cache[key]

