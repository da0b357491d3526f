"""Data-free distillation of the swapped layers' feature maps (:func:`linearize`), LinVideo-style."""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ...core.state_io import load_state, save_state as write_state
from ...families import family_for, pipeline_transformers
from .adapter import save_adapter
from .config import LinearAttentionConfig
from .selection import rank_layers, record_trajectories, replay
from .technique import LinearAttentionTechnique

logger = logging.getLogger(__name__)

__all__ = ["linearize", "LinearizeResult", "layer_output_error"]


@dataclass
class LinearizeResult:
    """What :func:`linearize` made: the adapter path, a config that loads it, layers, ranking, losses."""

    adapter: str | None
    config: LinearAttentionConfig | None
    layers: dict[str, list[int]]
    ranking: dict[str, list[int] | None]
    sensitivity: dict[str, dict]
    losses: list[float]
    steps: int


def _attach_for_training(pipe, config: LinearAttentionConfig, ranking: dict | None) -> dict[str, LinearAttentionTechnique]:
    techniques = {}
    for role, model in pipeline_transformers(pipe):
        family = family_for(model)
        n = len(family.blocks(model))
        if config.layers == "auto":
            k = config.num_layers if config.num_layers is not None else max(1, n // 2)
            if k > n:
                raise ValueError(f"LinearAttentionConfig.num_layers={k} is out of range: {type(model).__name__} "
                                 f"({role}) has {n} layers")
            layers = tuple(sorted(ranking[role]["ranking"][:k]))
            cfg = replace(config, layers=layers, num_layers=None)
        else:
            cfg = config
        tech = LinearAttentionTechnique(model, cfg, family, role=role, pipeline=None)
        try:
            tech.attach()
        except Exception:
            for t in techniques.values():
                t.detach()
            raise
        if ranking is not None and role in ranking:
            tech.ranking, tech.sensitivity = ranking[role]["ranking"], ranking[role]["sensitivity"]
        techniques[role] = tech
    return techniques


def layer_output_error(pipe, config: LinearAttentionConfig, *, prompts: Sequence[str] | None = None,
                       records: dict | None = None, call_kwargs: dict | None = None) -> dict[str, float]:
    """Mean relative error (RMS, teacher-forced) of the swapped layers' attention outputs, per role.

    Every swapped layer sees the original model's inputs (the teacher's trajectory) on ``prompts``; its
    linear-attention output is compared with the original attention output. ``config`` must name the layers
    (a list or an adapter).
    """
    if config.layers == "auto":
        raise ValueError("layer_output_error needs explicit layers or an adapter, not layers='auto'")
    if records is None:
        records = record_trajectories(pipe, prompts or config.calibration_prompts, call_kwargs=call_kwargs)
    techniques = _attach_for_training(pipe, config, None)
    out = {}
    try:
        for role, tech in techniques.items():
            tech.mode = "distill"
            with torch.no_grad():
                for rec in records.get(role, []):
                    replay(tech.model, rec)
            errs = [e for v in tech.layer_errors.values() for e in v]
            out[role] = sum(errs) / len(errs) if errs else 0.0
    finally:
        for tech in techniques.values():
            tech.detach()
    return out


STATE_FILE = "linearize_state.safetensors"  # safetensors + a JSON header: nothing in it can run code


def _check_layers(pipe, config: LinearAttentionConfig) -> None:
    """Refuse layer indices / counts the transformers do not have, before any trajectory is sampled."""
    for role, model in pipeline_transformers(pipe):
        n = len(family_for(model).blocks(model))
        if config.layers == "auto":
            if config.num_layers is not None and config.num_layers > n:
                raise ValueError(f"LinearAttentionConfig.num_layers={config.num_layers} is not allowed: the {role} "
                                 f"has {n} layers")
        elif any(i >= n for i in config.layers):
            raise ValueError(f"LinearAttentionConfig.layers={list(config.layers)} is not allowed: the {role} has {n} "
                             f"layers (indices 0..{n - 1})")


def linearize(pipe, config: LinearAttentionConfig | None = None, *, prompts: Sequence[str], steps: int = 200,
              output: str | os.PathLike | None = None, call_kwargs: dict | None = None, seeds: Sequence[int] = (0,),
              lr: float = 1e-2, final_weight: float = 0.0, checkpoint_dir: str | os.PathLike | None = None,
              resume: bool = False, save_every: int = 50, seed: int = 0, progress: bool = True,
              max_calls: int | None = None) -> LinearizeResult:
    """Select layers (if ``config.layers == "auto"``) and distil linear attention, data-free.

    1. Sample the original model on ``prompts`` × ``seeds`` (``call_kwargs`` for size and steps) and record
       every transformer call (Wan 2.2: each expert on the steps where it is active).
    2. ``layers="auto"``: rank the layers by sensitivity (:func:`rank_layers`) and swap the ``num_layers``
       least sensitive, per transformer.
    3. For ``steps`` optimizer steps: replay one recorded call with the swapped layers in teacher-forcing
       mode; the loss is the mean over swapped layers of the relative MSE between the linear and the
       original attention output, plus ``final_weight`` × the relative MSE of the final output of the model
       with every chosen layer swapped. Only the feature maps are trained (Adam, ``lr``).
    4. Write the adapter (``output``) for ``LinearAttentionConfig(adapter=output)``.

    Runs under ``accelerate`` (``accelerate launch``: each process takes its share of the recorded calls and
    gradients are averaged). With ``checkpoint_dir`` the optimizer state is saved every ``save_every`` steps;
    ``resume=True`` continues from it (same prompts and config).

    Returns:
        :class:`LinearizeResult`; ``result.config`` applies the adapter.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    config = config or LinearAttentionConfig()
    if config.adapter is not None:
        raise ValueError("linearize starts from a config without an adapter (layers='auto' or a list)")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps={steps!r} is not allowed: it must be an int >= 0")
    if not prompts:
        raise ValueError("prompts must not be empty")
    if isinstance(prompts, str):
        prompts = [prompts]
    _check_layers(pipe, config)
    accelerator = Accelerator()
    if accelerator.num_processes > 1:  # `accelerate launch`: one pipeline copy per device
        pipe.to(accelerator.device)
    records = record_trajectories(pipe, prompts, call_kwargs=call_kwargs, seeds=seeds, max_calls=max_calls)
    ranking = rank_layers(pipe, config, records=records) if config.layers == "auto" else None
    techniques = _attach_for_training(pipe, config, ranking)
    params = [p for t in techniques.values() for p in t.parameters()]
    flags = {role: [p.requires_grad for p in t.model.parameters()] for role, t in techniques.items()}
    for t in techniques.values():
        t.model.requires_grad_(False)
    losses: list[float] = []
    start = 0
    state_path = os.path.join(os.fspath(checkpoint_dir), STATE_FILE) if checkpoint_dir else None
    try:
        calls = [(role, i) for role, recs in sorted(records.items()) for i in range(len(recs))
                 if techniques[role].layers]
        calls = calls[accelerator.process_index::accelerator.num_processes] or calls
        opt = torch.optim.Adam(params, lr=lr) if params else None
        if resume and state_path and os.path.isfile(state_path):
            state = load_state(state_path)
            if not isinstance(state, dict) or not {"step", "losses", "layers", "params", "optim"} <= set(state):
                raise ValueError(f"checkpoint {state_path} is not a linearize state (it lacks step / losses / layers / "
                                 "params / optim)")
            if state["layers"] != {r: list(t.layers) for r, t in techniques.items()}:
                raise ValueError(f"checkpoint {state_path} was made for layers {state['layers']}, not "
                                 f"{ {r: t.layers for r, t in techniques.items()} }")
            for role, t in techniques.items():
                t.feature_maps.load_state_dict(state["params"][role])
            if opt is not None:
                opt.load_state_dict(state["optim"])
            start, losses = state["step"], list(state["losses"])
            logger.info("resumed linearize from step %d (%s)", start, state_path)
        if opt is None and steps:
            logger.warning("feature_map=%r has no parameters: linearize only selects layers", config.feature_map)
        elif not calls and steps:
            logger.warning("no layer is swapped: nothing to distil")

        def save_state(step):
            if state_path and accelerator.is_main_process:
                os.makedirs(os.path.dirname(state_path), exist_ok=True)
                write_state(state_path, {"step": step, "losses": losses,
                                        "layers": {r: list(t.layers) for r, t in techniques.items()},
                                        "params": {r: t.feature_maps.state_dict() for r, t in techniques.items()},
                                        "optim": opt.state_dict()})

        bar = tqdm(range(start, steps), desc="linearize", disable=not (progress and accelerator.is_local_main_process),
                   initial=start, total=steps)
        for step in bar:
            if opt is None or not calls:
                break
            role, idx = calls[random.Random(seed * 1_000_003 + step).randrange(len(calls))]
            tech, rec = techniques[role], records[role][idx]
            tech.reset()
            tech.mode = "distill"
            replay(tech.model, rec)
            loss = torch.stack(tech.losses).mean()
            if final_weight:
                tech.mode = "linear"
                pred = replay(tech.model, rec)
                target = rec["output"].to(pred.device).float()
                loss = loss + final_weight * (pred.float() - target).pow(2).mean() / (target.pow(2).mean() + 1e-8)
            tech.mode = "linear"
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if accelerator.num_processes > 1:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if save_every and (step + 1) % save_every == 0:
                save_state(step + 1)
        bar.close()
        if opt is not None and steps:
            save_state(max(steps, start))
        adapter = None
        if output is not None and accelerator.is_main_process:
            adapter = save_adapter(output, techniques)
        accelerator.wait_for_everyone()
        result = LinearizeResult(
            adapter=adapter if output is None else os.fspath(output),
            config=LinearAttentionConfig(adapter=os.fspath(output)) if output is not None else None,
            layers={r: list(t.layers) for r, t in techniques.items()},
            ranking={r: (list(t.ranking) if t.ranking is not None else None) for r, t in techniques.items()},
            sensitivity={r: dict(t.sensitivity or {}) for r, t in techniques.items()},
            losses=losses, steps=max(steps, start))
    finally:
        for role, t in techniques.items():
            t.detach()
            for p, flag in zip(t.model.parameters(), flags[role]):
                p.requires_grad_(flag)
    return result

