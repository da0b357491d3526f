"""The linear-attention processor and :class:`LinearAttentionTechnique` (see :mod:`vidaccel.accel.linear_attention`)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ...core.attention_backend import dispatch
from ...core.processors import ProcessorSwap, ProcessorWrapper, wrap_processor
from ...core.technique import Technique, register_technique
from ...kernels.linear_attention import FIXED_FEATURE_MAPS, HedgehogFeatureMap, linear_attention
from .adapter import load_adapter_tensors
from .backend import LINEAR_BACKEND, LinearParams
from .config import LinearAttentionConfig
from .selection import cached_ranking

logger = logging.getLogger(__name__)

__all__ = ["LinearAttentionTechnique"]


class _LinearProcessor(ProcessorWrapper):
    """Linear attention in place of the original processor (which it still calls when distilling)."""

    def __init__(self, inner, layer: int, technique: "LinearAttentionTechnique"):
        super().__init__(inner, layer)
        self.technique = technique

    def __call__(self, attn, *args, **kwargs):
        tech = self.technique
        call = self.bind(attn, *args, **kwargs)
        inputs = None
        if call.get("attention_mask") is None:
            with torch.no_grad():
                inputs = tech.family.self_attention_inputs(attn, call)
        if inputs is None:
            tech.fallback_calls += 1  # masked or cross-attention: not what this technique replaces
            return self.inner(attn, *args, **kwargs)
        parallel = self._parallel_config
        if parallel is not None:
            if tech.mode == "distill":
                raise ValueError("linearize (distillation) does not run under context parallelism; distil on one "
                                 "process and load the adapter on every rank")
            out = tech.attend_parallel(self.layer, inputs.q, inputs.k, inputs.v, inputs.rotary, parallel)
            tech.linear_calls += 1
            return tech.family.attention_output(attn, out, inputs)
        teacher = None
        if tech.mode == "distill":
            with torch.no_grad():
                teacher = self.inner(attn, *args, **kwargs)
        out = tech.attend(self.layer, inputs.q, inputs.k, inputs.v, inputs.rotary)
        out = tech.family.attention_output(attn, out, inputs)
        tech.linear_calls += 1
        if teacher is None:
            return out
        tech.record_loss(self.layer, out, teacher)
        return teacher


# -- the technique ----------------------------------------------------------------------------------
@register_technique(LinearAttentionConfig)
class LinearAttentionTechnique(Technique):
    """Linear attention on the chosen self-attention layers of one transformer (see module docs)."""

    name = "linear_attention"

    @classmethod
    def noop_config(cls) -> LinearAttentionConfig:
        return LinearAttentionConfig(layers=[])

    @classmethod
    def example_config(cls) -> LinearAttentionConfig:
        return LinearAttentionConfig(layers=[0], feature_map="elu")

    def attach(self) -> None:
        cfg = self.config
        n = len(self.family.blocks(self.model))
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
            if cfg.num_layers is not None:
                if cfg.num_layers > len(layers):
                    raise ValueError(f"LinearAttentionConfig.num_layers={cfg.num_layers} is out of range: adapter "
                                     f"{cfg.adapter!r} swaps {len(layers)} layers of {self.role}")
                order = [i for i in (self.ranking or []) if i in layers] + sorted(layers)
                layers = list(dict.fromkeys(order))[:cfg.num_layers]
            tensors = {k: v for k, v in load_adapter_tensors(cfg.adapter, self.role).items()
                       if int(k.split(".", 1)[0]) in layers}
        elif cfg.layers == "auto":
            if self.pipeline is None:
                raise ValueError("LinearAttentionConfig(layers='auto') measures layer sensitivity on the "
                                 "pipeline's own samples, so it needs a pipeline, not a bare transformer: give "
                                 "layers=[...] or an adapter")
            k = cfg.num_layers if cfg.num_layers is not None else max(1, n // 2)
            if k > n:
                raise ValueError(f"LinearAttentionConfig.num_layers={k} is out of range: {cls_name} ({self.role}) has "
                                 f"{n} layers")
            ranked = cached_ranking(self.pipeline, cfg)[self.role]
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
        self.swap = ProcessorSwap(self.family, self.model,
                                  lambda p, i: wrap_processor(_LinearProcessor, p, i, technique=self), self.layers)
        if self.layers:
            self.swap.attach()

    def _make_feature_maps(self) -> nn.ModuleDict:
        maps = nn.ModuleDict()
        if self.config.feature_map != "hedgehog":
            return maps
        device = next(self.model.parameters()).device
        for i, attn in self.family.self_attentions(self.model):
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

    def attend(self, layer: int, q, k, v, rotary):
        """Linear attention of one layer on ``q, k, v [B, L, H, D]``, RoPE (``rotary``, the family's) in the
        numerator only: rotated features there, the plain non-negative ones in the denominator. On a CUDA GPU
        without gradients the fused Triton kernels compute the features and the rotation in registers; when
        distilling (gradients) the torch path runs the same ops as :class:`~vidaccel.families.Rotary`."""
        fm = self.feature_fn(layer)
        if isinstance(fm, nn.Module) and fm.weight.device != q.device:
            fm.to(q.device)
        feature_map = self.config.feature_map if self.config.feature_map in FIXED_FEATURE_MAPS else fm
        rope = None if rotary is None or self.config.rope == "none" else rotary.tables()
        return linear_attention(q, k, v, feature_map=feature_map, rope=rope, backend=self.config.backend,
                                eps=self.config.eps)

    def attend_parallel(self, layer: int, q, k, v, rotary, parallel):
        """:meth:`attend` for this rank's tokens under context parallelism, through ``vidaccel_linear``."""
        fm = self.feature_fn(layer)
        if isinstance(fm, nn.Module) and fm.weight.device != q.device:
            fm.to(q.device)
        fq, fk = fm(q), fm(k)
        rotated = rotary is not None and self.config.rope != "none"
        if rotated:
            fq = torch.cat([rotary(fq, torch.float32), fq], dim=-1)
            fk = torch.cat([rotary(fk, torch.float32), fk], dim=-1)
        head_dim = v.shape[-1]
        value = v.float()
        if parallel.context_parallel_config.ulysses_degree > 1 and fq.shape[-1] > head_dim:
            value = F.pad(value, (0, fq.shape[-1] - head_dim))
        params = LinearParams(fq.shape[-1] // (2 if rotated else 1), head_dim, rotated, self.config.eps,
                              self.config.backend)
        out = dispatch(fq, fk, value, backend=LINEAR_BACKEND, parallel_config=parallel, params=params)
        return out[..., :head_dim].to(v.dtype)

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
            "num_model_layers": len(self.family.blocks(self.model)),
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

