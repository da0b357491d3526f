"""Linear-attention layer swapping with learned layer selection and data-free distillation (LinVideo).

LinVideo (https://arxiv.org/abs/2510.08318) replaces a chosen number of a video model's self-attention
layers by linear attention, picks *which* by measuring, and recovers quality from the model's own samples,
no data set needed. Here:

* :class:`LinearAttentionConfig` replaces the self-attention of chosen blocks (``layers=[...]``, or
  ``layers="auto"`` with ``num_layers=k``) by linear attention
  (:func:`vidaccel.kernels.linear_attention.linear_attention`). q/k/v, the q/k norms and the output
  projection are the layer's own; only the attention computation changes. Cross-attention is untouched.
  CogVideoX's text tokens, which lead its self-attention sequence, are part of the linear attention
  (queries and keys) like any token.
* Selection (``layers="auto"``): sample trajectories from the original model (its own denoising inputs on a
  few prompts), then for each layer alone swap it and measure the relative error of the transformer's final
  output over those inputs; the ``k`` least sensitive layers are swapped. The ranking and the errors are in
  :func:`vidaccel.stats` and in the adapter file.
* Distillation: :func:`linearize` trains only the new parameters (the Hedgehog feature maps) to match each
  swapped layer's original attention output on the original model's trajectories (teacher forcing: every
  layer sees the teacher's inputs), optionally plus the final output of the fully swapped model. It uses
  ``accelerate`` (one GPU or many: trajectories are sharded and gradients averaged), shows a progress bar,
  is resumable (``checkpoint_dir`` + ``resume=True``) and saves a small safetensors adapter that
  ``LinearAttentionConfig(adapter=path)`` loads (so ``vidaccel.apply`` and ``from_pretrained(accel=...)``
  take it).

Feature maps: ``"elu"`` (elu+1), ``"relu"`` (fixed, nothing to train) and ``"hedgehog"`` (learnable per-head
map, softmax over ``[xW+b, -(xW+b)]``, initialised to approximate softmax attention's kernel).

RoPE (``rope="numerator"``, the default): the feature map sees the *unrotated* (normed) q and k; the
numerator then rotates the features with the layer's own RoPE table (``φ(q)`` and ``φ(k)`` pairs rotated as
diffusers rotates q and k; Hedgehog's ``2D`` features are two ``D`` halves, each rotated), while the
denominator keeps the plain, non-negative features. Why: Wan has no other positional signal, so a
position-blind layer cannot reproduce the local, position-dependent mixing of video attention; rotating
inside the feature map instead would break φ's non-negativity (and with it the normaliser), and rotating
the denominator too would let it reach zero. This is the "RoPE in the numerator only" form of RoFormer's
linear attention. ``rope="none"`` ignores positions. CogVideoX rotates only video tokens, as diffusers does.

Example::

    import vidaccel
    pipe = vidaccel.load_pipeline("embedded")
    result = vidaccel.linearize(pipe, vidaccel.LinearAttentionConfig(layers="auto", num_layers=3),
                                prompts=["a red circle moving right on a black background"], steps=200,
                                output="linear.safetensors")
    vidaccel.apply(pipe, vidaccel.LinearAttentionConfig(adapter="linear.safetensors"))
    frames = pipe("a blue square moving left on a gray background").frames[0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import nn

from ..kernels.linear_attention import (
    BACKENDS,
    FEATURE_MAP_NAMES,
    FIXED_FEATURE_MAPS,
    HedgehogFeatureMap,
    linear_attention_features,
)
from ..specs import pipeline_transformers, spec_for
from .base import Technique, register_technique
from .processors import ProcessorSwap, ProcessorWrapper, wrap_processor

logger = logging.getLogger(__name__)

__all__ = ["LinearAttentionConfig", "LinearAttention", "linearize", "LinearizeResult", "rank_layers",
           "record_trajectories", "layer_output_error", "save_adapter", "read_adapter_metadata",
           "main_linearize", "ADAPTER_FORMAT"]

#: ``format`` metadata value of adapter files.
ADAPTER_FORMAT = "vidaccel-linear-attention"
ADAPTER_VERSION = "1"
ROPE_MODES = ("numerator", "none")
#: Prompts used for layer selection when none are given (the embedded model's grammar).
DEFAULT_CALIBRATION_PROMPTS = ("a red circle moving right on a black background",
                               "a blue square moving left on a gray background")


# -- config -------------------------------------------------------------------------------------------
def _bad(name: str, value, allowed: str) -> ValueError:
    sep = "; " if allowed.startswith("allowed") else ": "
    return ValueError(f"LinearAttentionConfig.{name}={value!r} is not allowed{sep}{allowed}")


def read_adapter_metadata(path: str | os.PathLike) -> dict:
    """The decoded metadata of an adapter file (``roles``, ``ranking``, ``sensitivity`` are parsed JSON)."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"LinearAttentionConfig.adapter={path!r} is not allowed: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # not a safetensors file
        raise ValueError(f"LinearAttentionConfig.adapter={path!r} is not a safetensors file: {e}") from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"LinearAttentionConfig.adapter={path!r} is not a linear-attention adapter "
                         f"(metadata format={meta.get('format')!r}, expected {ADAPTER_FORMAT!r})")
    for key in ("roles", "ranking", "sensitivity"):
        meta[key] = json.loads(meta.get(key) or "{}")
    return meta


@dataclass
class LinearAttentionConfig:
    """Swap chosen self-attention layers for linear attention.

    Args:
        layers: block indices to swap, or ``"auto"``: the ``num_layers`` least sensitive layers, measured on
            the pipeline's own trajectories when applied (needs a pipeline, not a bare transformer).
            ``[]`` swaps nothing (bit-identical to the baseline).
        num_layers: how many layers ``"auto"`` swaps (default: half, rounded down, at least 1).
        feature_map: ``"hedgehog"`` (learnable; train it with :func:`linearize`), ``"elu"`` or ``"relu"``.
        rope: ``"numerator"`` (rotate the numerator's features with the layer's RoPE) or ``"none"``.
        backend: linear-attention backend: ``"auto"``, ``"triton"``, ``"torch"``.
        adapter: path of a safetensors adapter written by :func:`linearize`; it sets the layers (per
            transformer role), the feature map, RoPE mode and the trained parameters.
        calibration_prompts: prompts sampled for ``layers="auto"``.
        calibration_kwargs: pipeline call arguments for those samples (size, ``num_inference_steps``...);
            defaults to the embedded model's defaults when the pipeline has them.
        eps: added to the linear-attention denominator.
    """

    layers: Any = "auto"
    num_layers: int | None = None
    feature_map: str = "hedgehog"
    rope: str = "numerator"
    backend: str = "auto"
    adapter: str | None = None
    calibration_prompts: tuple[str, ...] = DEFAULT_CALIBRATION_PROMPTS
    calibration_kwargs: dict = field(default_factory=dict)
    eps: float = 1e-6
    #: filled from the adapter: ``{role: {"layers": [...], "num_model_layers": n, ...}}`` and its metadata.
    adapter_metadata: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.adapter is not None:
            if not isinstance(self.adapter, (str, os.PathLike)):
                raise _bad("adapter", self.adapter, "it must be a path to a .safetensors adapter or None")
            self.adapter = os.fspath(self.adapter)
            meta = read_adapter_metadata(self.adapter)
            self.adapter_metadata = meta
            self.feature_map = meta["feature_map"]
            self.rope = meta["rope"]
            self.layers = "adapter"
        elif isinstance(self.layers, str):
            if self.layers != "auto":
                raise _bad("layers", self.layers, "use 'auto' or a list of block indices (ints >= 0)")
        else:
            try:
                layers = list(self.layers)
            except TypeError:
                raise _bad("layers", self.layers, "use 'auto' or a list of block indices (ints >= 0)") from None
            if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in layers):
                raise _bad("layers", self.layers, "use 'auto' or a list of block indices (ints >= 0)")
            self.layers = tuple(sorted(set(layers)))
        if self.num_layers is not None and (not isinstance(self.num_layers, int) or isinstance(self.num_layers, bool)
                                            or self.num_layers < 0):
            raise _bad("num_layers", self.num_layers, "it must be an int >= 0 or None (half the layers)")
        if self.num_layers is not None and self.layers != "auto":
            raise _bad("num_layers", self.num_layers, "it is only used with layers='auto'")
        if self.feature_map not in FEATURE_MAP_NAMES:
            raise _bad("feature_map", self.feature_map, f"allowed: {', '.join(FEATURE_MAP_NAMES)}")
        if self.rope not in ROPE_MODES:
            raise _bad("rope", self.rope, f"allowed: {', '.join(ROPE_MODES)}")
        if self.backend not in BACKENDS:
            raise _bad("backend", self.backend, f"allowed: {', '.join(BACKENDS)}")
        if isinstance(self.calibration_prompts, str):
            self.calibration_prompts = (self.calibration_prompts,)
        self.calibration_prompts = tuple(self.calibration_prompts)
        if not self.calibration_prompts or not all(isinstance(p, str) for p in self.calibration_prompts):
            raise _bad("calibration_prompts", self.calibration_prompts, "it must be a non-empty list of strings")
        if not isinstance(self.calibration_kwargs, dict):
            raise _bad("calibration_kwargs", self.calibration_kwargs, "it must be a dict of pipeline call arguments")
        if not isinstance(self.eps, (int, float)) or not self.eps > 0:
            raise _bad("eps", self.eps, "it must be a float > 0")


# -- the attention computation ----------------------------------------------------------------------
def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of every ``D``-sized group of features; ``cos``/``sin``: ``[1, L, 1, D/2]``."""
    half = cos.shape[-1]
    shape = x.shape
    x = x.reshape(*shape[:-1], shape[-1] // (2 * half), half, 2)
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    x1, x2 = x[..., 0], x[..., 1]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.reshape(shape)


def _wan_qkv(attn, hidden_states, rotary_emb):
    from diffusers.models.transformers.transformer_wan import _get_qkv_projections

    query, key, value = _get_qkv_projections(attn, hidden_states, None)
    query, key = attn.norm_q(query), attn.norm_k(key)
    query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
    rope = None
    if rotary_emb is not None:
        cos, sin = rotary_emb[0][..., 0::2], rotary_emb[1][..., 1::2]  # as diffusers' WanAttnProcessor

        def rope(feat):
            return _rotate(feat, cos, sin)
    return query, key, value, rope


def _cogvideox_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb):
    text_len = encoder_hidden_states.size(1)
    x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    batch = x.shape[0]
    query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch, -1, attn.heads, head_dim) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    rope = None
    if image_rotary_emb is not None:  # video tokens only, as CogVideoXAttnProcessor2_0
        cos, sin = image_rotary_emb
        cos, sin = cos[None, :, None, 0::2], sin[None, :, None, 1::2]

        def rope(feat):
            return torch.cat([feat[:, :text_len], _rotate(feat[:, text_len:], cos, sin)], dim=1)
    return query, key, value, rope, text_len


class _LinearProcessor(ProcessorWrapper):
    """Linear attention in place of the original processor (which it still calls when distilling)."""

    def __init__(self, inner, layer: int, technique: "LinearAttention"):
        super().__init__(inner, layer)
        self.technique = technique

    def __call__(self, attn, *args, **kwargs):
        tech = self.technique
        bound = self.bind(attn, *args, **kwargs)
        hidden_states = bound["hidden_states"]
        cog = tech.spec.text_in_sequence
        if bound.get("attention_mask") is not None or (not cog and bound.get("encoder_hidden_states") is not None):
            tech.fallback_calls += 1  # masked or cross-attention: not what this technique replaces
            return self.inner(attn, *args, **kwargs)
        teacher = None
        if tech.mode == "distill":
            with torch.no_grad():
                teacher = self.inner(attn, *args, **kwargs)
        with torch.no_grad():
            if cog:
                q, k, v, rope, text_len = _cogvideox_qkv(attn, hidden_states, bound["encoder_hidden_states"],
                                                         bound.get("image_rotary_emb"))
            else:
                q, k, v, rope = _wan_qkv(attn, hidden_states, bound.get("rotary_emb"))
        out = tech.attend(self.layer, q, k, v, rope).flatten(2, 3)
        out = attn.to_out[1](attn.to_out[0](out.to(hidden_states.dtype)))
        if cog:
            out = (out[:, text_len:], out[:, :text_len])
        tech.linear_calls += 1
        if teacher is None:
            return out
        tech.record_loss(self.layer, out, teacher)
        return teacher


# -- the technique ----------------------------------------------------------------------------------
def _layer_count(spec, model) -> int:
    return len(spec.blocks(model))


@register_technique(LinearAttentionConfig)
class LinearAttention(Technique):
    """Linear attention on the chosen self-attention layers of one transformer (see module docs)."""

    name = "linear_attention"

    def attach(self) -> None:
        cfg = self.config
        n = _layer_count(self.spec, self.model)
        cls_name = type(self.model).__name__
        self.ranking: list[int] | None = None
        self.sensitivity: dict[int, float] | None = None
        tensors = {}
        if cfg.adapter_metadata is not None:
            meta = cfg.adapter_metadata
            if meta.get("model_class") != cls_name:
                raise ValueError(f"adapter {cfg.adapter!r} was made for {meta.get('model_class')}, not {cls_name}")
            roles = meta["roles"]
            if self.role not in roles:
                raise ValueError(f"adapter {cfg.adapter!r} holds roles {sorted(roles)}, not {self.role!r}")
            info = roles[self.role]
            if info["num_model_layers"] != n:
                raise ValueError(f"adapter {cfg.adapter!r} was made for a {cls_name} with {info['num_model_layers']} "
                                 f"layers, but {self.role} has {n} layers")
            layers = list(info["layers"])
            self.ranking = meta["ranking"].get(self.role)
            self.sensitivity = {int(i): e for i, e in meta["sensitivity"].get(self.role, {}).items()} or None
            tensors = _load_adapter_tensors(cfg.adapter, self.role)
        elif cfg.layers == "auto":
            if self.pipeline is None:
                raise ValueError("LinearAttentionConfig(layers='auto') measures layer sensitivity on the "
                                 "pipeline's own samples, so it needs a pipeline, not a bare transformer: give "
                                 "layers=[...] or an adapter")
            k = cfg.num_layers if cfg.num_layers is not None else max(1, n // 2)
            if k > n:
                raise ValueError(f"LinearAttentionConfig.num_layers={k} is out of range: {cls_name} ({self.role}) has "
                                 f"{n} layers")
            ranked = _cached_ranking(self.pipeline, cfg)[self.role]
            self.ranking, self.sensitivity = ranked["ranking"], ranked["sensitivity"]
            layers = sorted(self.ranking[:k])
        else:
            layers = list(cfg.layers)
            bad = [i for i in layers if i >= n]
            if bad:
                raise ValueError(f"LinearAttentionConfig.layers={list(cfg.layers)} is out of range: {cls_name} "
                                 f"({self.role}) has {n} layers (indices 0..{n - 1})")
        self.layers = sorted(layers)
        self.feature_maps = self._make_feature_maps()
        if tensors:
            missing = self.feature_maps.load_state_dict(tensors, strict=False)
            if missing.missing_keys or missing.unexpected_keys:
                raise ValueError(f"adapter {cfg.adapter!r} does not fit {self.role}: missing {missing.missing_keys}, "
                                 f"unexpected {missing.unexpected_keys}")
        self.mode = "linear"
        self.reset()
        self.swap = ProcessorSwap(self.spec, self.model,
                                  lambda p, i: wrap_processor(_LinearProcessor, p, i, technique=self), self.layers)
        if self.layers:
            self.swap.attach()

    def _make_feature_maps(self) -> nn.ModuleDict:
        maps = nn.ModuleDict()
        if self.config.feature_map != "hedgehog":
            return maps
        device = next(self.model.parameters()).device
        for i, attn in self.spec.self_attentions(self.model):
            if i in self.layers:
                heads = attn.heads
                head_dim = attn.to_q.out_features // heads
                maps[str(i)] = HedgehogFeatureMap(heads, head_dim).to(device)
        return maps

    def detach(self) -> None:
        self.swap.detach()
        self.reset()

    def reset(self) -> None:
        self.linear_calls = 0
        self.fallback_calls = 0
        self.losses: list[torch.Tensor] = []
        self.layer_errors: dict[int, list[float]] = {}

    # -- used by the processors -------------------------------------------------------------------
    def feature_fn(self, layer: int):
        if self.config.feature_map in FIXED_FEATURE_MAPS:
            return FIXED_FEATURE_MAPS[self.config.feature_map]
        return self.feature_maps[str(layer)]

    def attend(self, layer: int, q, k, v, rope):
        fm = self.feature_fn(layer)
        if isinstance(fm, nn.Module) and fm.weight.device != q.device:
            fm.to(q.device)
        fq, fk = fm(q), fm(k)
        if rope is None or self.config.rope == "none":
            return linear_attention_features(fq, fk, v, backend=self.config.backend, eps=self.config.eps)
        return linear_attention_features(rope(fq), rope(fk), v, q_den=fq, k_den=fk, backend=self.config.backend,
                                         eps=self.config.eps)

    def record_loss(self, layer: int, student, teacher) -> None:
        s = student if isinstance(student, tuple) else (student,)
        t = teacher if isinstance(teacher, tuple) else (teacher,)
        s = torch.cat([x.float().flatten(1) for x in s], 1)
        t = torch.cat([x.float().flatten(1) for x in t], 1)
        loss = (s - t).pow(2).mean() / (t.pow(2).mean() + 1e-8)
        self.losses.append(loss)
        self.layer_errors.setdefault(layer, []).append(float(loss.detach().sqrt()))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.feature_maps.parameters())

    def stats(self) -> dict:
        return {
            "layers": list(self.layers),
            "num_model_layers": _layer_count(self.spec, self.model),
            "feature_map": self.config.feature_map,
            "rope": self.config.rope,
            "ranking": list(self.ranking) if self.ranking is not None else None,
            "sensitivity": ({str(i): e for i, e in self.sensitivity.items()} if self.sensitivity else None),
            "linear_calls": self.linear_calls,
            "fallback_calls": self.fallback_calls,
        }

    def finish_run(self) -> None:
        if self.layers and not self.linear_calls:
            logger.warning("LinearAttentionConfig swapped layers %s but no linear attention ran in this call",
                           self.layers)


# -- trajectories and selection ----------------------------------------------------------------------
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


def _replay(model, rec) -> torch.Tensor:
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
        spec = spec_for(model)
        recs = records.get(role, [])
        errors: dict[int, float] = {}
        for i in range(_layer_count(spec, model)):
            tech = LinearAttention(model, replace(config, layers=(i,), adapter=None, adapter_metadata=None,
                                                  num_layers=None), spec, role=role)
            tech.attach()
            try:
                with torch.no_grad():
                    errs = [_rel(_replay(model, r).cpu(), r["output"]) for r in recs]
            finally:
                tech.detach()
            errors[i] = sum(errs) / len(errs) if errs else 0.0
        ranking = sorted(errors, key=lambda i: (errors[i], i))
        out[role] = {"ranking": ranking, "sensitivity": errors}
        logger.info("linear attention sensitivity (%s): %s", role,
                    ", ".join(f"{i}:{errors[i]:.4f}" for i in ranking))
    return out


_RANKING_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _cached_ranking(pipe, config: LinearAttentionConfig) -> dict:
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


# -- adapter files ---------------------------------------------------------------------------------
def save_adapter(path: str | os.PathLike, techniques: dict[str, LinearAttention]) -> str:
    """Write the techniques' (one per role) layers, ranking and parameters as a safetensors adapter."""
    from safetensors.torch import save_file

    tensors, roles, ranking, sensitivity = {}, {}, {}, {}
    model_class = feature_map = rope = None
    for role, tech in techniques.items():
        for name, p in tech.feature_maps.state_dict().items():
            tensors[f"{role}.{name}"] = p.detach().float().cpu().contiguous()
        roles[role] = {"layers": list(tech.layers), "num_model_layers": _layer_count(tech.spec, tech.model)}
        ranking[role] = list(tech.ranking) if tech.ranking is not None else None
        sensitivity[role] = {str(i): e for i, e in (tech.sensitivity or {}).items()}
        model_class, feature_map, rope = type(tech.model).__name__, tech.config.feature_map, tech.config.rope
    meta = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "model_class": model_class,
            "feature_map": feature_map, "rope": rope, "roles": json.dumps(roles), "ranking": json.dumps(ranking),
            "sensitivity": json.dumps(sensitivity)}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=meta)
    return path


def _load_adapter_tensors(path: str, role: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    prefix = role + "."
    return {k[len(prefix):]: v for k, v in load_file(path).items() if k.startswith(prefix)}


# -- distillation --------------------------------------------------------------------------------------
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


def _attach_for_training(pipe, config: LinearAttentionConfig, ranking: dict | None) -> dict[str, LinearAttention]:
    techniques = {}
    for role, model in pipeline_transformers(pipe):
        spec = spec_for(model)
        n = _layer_count(spec, model)
        if config.layers == "auto":
            k = config.num_layers if config.num_layers is not None else max(1, n // 2)
            if k > n:
                raise ValueError(f"LinearAttentionConfig.num_layers={k} is out of range: {type(model).__name__} "
                                 f"({role}) has {n} layers")
            layers = tuple(sorted(ranking[role]["ranking"][:k]))
            cfg = replace(config, layers=layers, num_layers=None)
        else:
            cfg = config
        tech = LinearAttention(model, cfg, spec, role=role, pipeline=None)
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
                    _replay(tech.model, rec)
            errs = [e for v in tech.layer_errors.values() for e in v]
            out[role] = sum(errs) / len(errs) if errs else 0.0
    finally:
        for tech in techniques.values():
            tech.detach()
    return out


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
    state_path = os.path.join(os.fspath(checkpoint_dir), "linearize_state.pt") if checkpoint_dir else None
    try:
        calls = [(role, i) for role, recs in sorted(records.items()) for i in range(len(recs))
                 if techniques[role].layers]
        calls = calls[accelerator.process_index::accelerator.num_processes] or calls
        opt = torch.optim.Adam(params, lr=lr) if params else None
        if resume and state_path and os.path.isfile(state_path):
            state = torch.load(state_path, map_location="cpu", weights_only=False)
            if state["layers"] != {r: t.layers for r, t in techniques.items()}:
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
                torch.save({"step": step, "losses": losses, "layers": {r: t.layers for r, t in techniques.items()},
                            "params": {r: t.feature_maps.state_dict() for r, t in techniques.items()},
                            "optim": opt.state_dict()}, state_path)

        bar = tqdm(range(start, steps), desc="linearize", disable=not (progress and accelerator.is_local_main_process),
                   initial=start, total=steps)
        for step in bar:
            if opt is None or not calls:
                break
            role, idx = calls[random.Random(seed * 1_000_003 + step).randrange(len(calls))]
            tech, rec = techniques[role], records[role][idx]
            tech.reset()
            tech.mode = "distill"
            _replay(tech.model, rec)
            loss = torch.stack(tech.losses).mean()
            if final_weight:
                tech.mode = "linear"
                pred = _replay(tech.model, rec)
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


# -- command line (wired as ``vidaccel linearize``) ---------------------------------------------------
def _parse_layers(text: str):
    if text == "auto":
        return "auto"
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers={text!r} is not allowed: use 'auto' or comma-separated block indices") from None


def build_linearize_parser(prog: str = "vidaccel linearize") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="select and distil linear-attention layers (LinVideo), "
                                "data-free; writes a safetensors adapter")
    p.add_argument("model", nargs="?", default="embedded", help="'embedded', a local folder or a hub id")
    p.add_argument("--prompt", action="append", default=[], help="prompt to sample (repeatable)")
    p.add_argument("--prompts-file", help="text file, one prompt per line")
    p.add_argument("--output", "-o", required=True, help="adapter path (.safetensors)")
    p.add_argument("--layers", default="auto", help="'auto' or comma-separated block indices")
    p.add_argument("--num-layers", type=int, default=None, help="layers to swap with --layers auto")
    p.add_argument("--feature-map", default="hedgehog", help=f"one of {', '.join(FEATURE_MAP_NAMES)}")
    p.add_argument("--rope", default="numerator", help=f"one of {', '.join(ROPE_MODES)}")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--final-weight", type=float, default=0.0, help="weight of the final-output loss")
    p.add_argument("--inference-steps", type=int, default=None, help="denoising steps of the sampled trajectories")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--num-frames", type=int, default=None)
    p.add_argument("--seeds", default="0", help="comma-separated sampling seeds")
    p.add_argument("--checkpoint-dir", default=None, help="where to keep the resumable training state")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def main_linearize(argv: Sequence[str] | None = None) -> int:
    """``vidaccel linearize``: exit 0 on success, 2 with a one-line error on bad arguments."""

    class _Exit(Exception):
        pass

    parser = build_linearize_parser()

    def error(message):
        raise _Exit(message)

    parser.error = error  # one line, no usage dump
    try:
        args = parser.parse_args(argv)
        prompts = list(args.prompt)
        if args.prompts_file:
            if not os.path.isfile(args.prompts_file):
                raise _Exit(f"--prompts-file={args.prompts_file!r} does not exist")
            with open(args.prompts_file) as f:
                prompts += [line.strip() for line in f if line.strip()]
        if not prompts:
            raise _Exit("give at least one --prompt or --prompts-file")
        for name in ("steps", "inference_steps", "height", "width", "num_frames"):
            value = getattr(args, name)
            if value is not None and value < (0 if name == "steps" else 1):
                raise _Exit(f"--{name.replace('_', '-')}={value} is not allowed: it must be >= "
                            f"{0 if name == 'steps' else 1}")
        if args.resume and not args.checkpoint_dir:
            raise _Exit("--resume needs --checkpoint-dir")
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise _Exit(f"--seeds={args.seeds!r} is not allowed: use comma-separated integers") from None
        try:
            config = LinearAttentionConfig(layers=_parse_layers(args.layers), num_layers=args.num_layers,
                                           feature_map=args.feature_map, rope=args.rope)
        except ValueError as e:
            raise _Exit(str(e)) from None
        call_kwargs = {k: v for k, v in dict(num_inference_steps=args.inference_steps, height=args.height,
                                             width=args.width, num_frames=args.num_frames).items() if v is not None}
        from ..loading import load_pipeline

        try:
            pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device)
        except (ValueError, OSError) as e:
            raise _Exit(f"cannot load model {args.model!r}: {str(e).splitlines()[0] if str(e) else e!r}") from None
        pipe.set_progress_bar_config(disable=True)
        try:
            result = linearize(pipe, config, prompts=prompts, steps=args.steps, output=args.output,
                               call_kwargs=call_kwargs, seeds=seeds, lr=args.lr, final_weight=args.final_weight,
                               checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                               progress=not args.no_progress)
        except ValueError as e:
            raise _Exit(str(e)) from None
    except _Exit as e:
        print(f"vidaccel linearize: error: {e}", file=sys.stderr)
        return 2
    summary = {"adapter": result.adapter, "layers": result.layers, "ranking": result.ranking,
               "final_loss": result.losses[-1] if result.losses else None, "steps": result.steps}
    print(json.dumps(summary))
    return 0
