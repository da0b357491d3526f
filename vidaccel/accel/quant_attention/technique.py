"""The quantized-attention processor and :class:`QuantAttentionTechnique` (see :mod:`vidaccel.accel.quant_attention`)."""

from __future__ import annotations

import inspect
import logging

from ...core.attention_backend import dispatch
from ...core.attention_kernel import clear_attention_kernel, set_attention_kernel
from ...core.processors import ProcessorSwap, ProcessorWrapper, wrap_processor
from ...core.steps import StepTracker
from ...core.technique import Technique, register_technique
from ...kernels.quant_attention import quant_attention
from .backend import QUANT_BACKEND, QuantParams
from .config import QuantAttentionConfig

logger = logging.getLogger(__name__)

__all__ = ["QuantAttentionTechnique", "quant_attention_backend"]


class _QuantProcessor(ProcessorWrapper):
    """Quantized attention in place of the model's own softmax attention; the original processor when exact.

    Installed underneath every other processor wrapper, so it sees only the calls that would reach the model's
    softmax attention.
    """

    def __init__(self, inner, layer: int, technique: "QuantAttentionTechnique"):
        super().__init__(inner, layer)
        self.technique = technique

    def __call__(self, attn, *args, **kwargs):
        tech = self.technique
        inputs = None
        if tech.quantized(self.layer):
            call = self.bind(attn, *args, **kwargs)
            if call.get("attention_mask") is None:
                inputs = tech.family.self_attention_inputs(attn, call)
        if inputs is None:
            if tech.quantized(self.layer):
                tech.count(self.layer, "fallback")  # masked, or not a plain self-attention (cross, image keys)
            else:
                tech.count(self.layer, "exact")
            return self.inner(attn, *args, **kwargs)
        q, k = inputs.rotated()
        parallel = self._parallel_config
        if parallel is None:
            out = tech.run(q, k, inputs.v, num_text_tokens=inputs.text_len)
        else:
            # this rank holds 1/world of the tokens (text and video alike); the backend sees whole sequences
            # (Ulysses) or meets every rank's keys (ring)
            cp = parallel.context_parallel_config
            world = cp.ring_degree * cp.ulysses_degree
            out = dispatch(q, k, inputs.v, backend=QUANT_BACKEND, parallel_config=parallel,
                           params=tech.backend_params(inputs.text_len * world))
        tech.count(self.layer, "dense")
        return tech.family.attention_output(attn, out, inputs)


@register_technique(QuantAttentionConfig)
class QuantAttentionTechnique(Technique):
    name = "quant_attention"

    @classmethod
    def noop_config(cls) -> QuantAttentionConfig:
        # every step exact: the original processors run
        return QuantAttentionConfig(dense_steps=1_000_000)

    @classmethod
    def example_config(cls) -> QuantAttentionConfig:
        return QuantAttentionConfig()

    def attach(self) -> None:
        cfg = self.config
        n_layers = len(self.family.blocks(self.model))
        bad = [i for i in cfg.dense_layers if i >= n_layers]
        if bad:
            raise ValueError(f"QuantAttentionConfig.dense_layers={list(cfg.dense_layers)} is out of range: "
                             f"{type(self.model).__name__} ({self.role}) has {n_layers} layers (indices "
                             f"0..{n_layers - 1})")
        if len(cfg.dense_layers) == n_layers:
            logger.warning("QuantAttentionConfig.dense_layers lists all %d layers: nothing is quantized", n_layers)
        self.n_layers = n_layers
        self._forward_params = list(inspect.signature(type(self.model).forward).parameters)[1:]
        self._steps = StepTracker(self.pipeline)
        self.reset()
        set_attention_kernel(self.model, self.name, self.kernel, parallel=self.parallel_kernel)
        self._handles = [self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)]
        try:
            self.swap = ProcessorSwap(self.family, self.model,
                                      lambda p, i: wrap_processor(_QuantProcessor, p, i, technique=self),
                                      innermost=True)
            self.swap.attach()
        except Exception:
            self._release()
            raise

    def _release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        clear_attention_kernel(self.model, self.name)

    def detach(self) -> None:
        self.swap.detach()
        self._release()
        self.reset()

    def reset(self) -> None:
        self._steps.reset()
        self.step: int | None = None
        self.counts = {kind: [0] * self.n_layers for kind in ("dense", "sparse", "exact", "fallback")}

    # -- per transformer call -----------------------------------------------------------------------------
    def _pre_forward(self, module, args, kwargs):
        if "timestep" in kwargs:
            timestep = kwargs["timestep"]
        else:
            pos = self._forward_params.index("timestep")
            timestep = args[pos] if pos < len(args) else None
        self.step = self._steps.step(timestep)
        return None

    def quantized(self, layer: int | None) -> bool:
        """Whether this step's calls of ``layer`` are quantized (``None``: a layer the caller does not know)."""
        step = self.step if self.step is not None else 0
        return step >= self.config.dense_steps and layer not in self.config.dense_layers

    def count(self, layer: int, kind: str) -> None:
        self.counts[kind][layer] += 1

    def run(self, q, k, v, *, num_text_tokens: int, grid=None, window=None, tile=None):
        cfg = self.config
        return quant_attention(q, k, v, num_text_tokens=num_text_tokens, grid=grid, window=window, tile=tile,
                               smooth_q=cfg.smooth_q, pv=cfg.pv, backend=cfg.backend)

    def kernel(self, q, k, v, *, layer=None, num_text_tokens=0, grid=None, window=None, tile=None):
        """The attention-kernel slot entry: windowed (or dense) quantized attention of a call another technique
        computes, or ``None`` when this step or layer stays exact."""
        if layer is None:
            return None
        if not self.quantized(layer):
            self.count(layer, "exact")
            return None
        out = self.run(q, k, v, num_text_tokens=num_text_tokens, grid=grid, window=window, tile=tile)
        self.count(layer, "sparse" if grid is not None else "dense")
        return out

    def backend_params(self, num_text_tokens: int, grid=None, window=None, tile=None) -> QuantParams:
        """The ``vidaccel_quant`` parameters of a call (``num_text_tokens``: of the whole sequence)."""
        cfg = self.config
        return QuantParams(num_text_tokens, cfg.smooth_q, cfg.pv, cfg.backend, grid, window, tile)

    def parallel_kernel(self, *, layer=None, num_text_tokens=0, grid=None, window=None, tile=None):
        """The slot's context-parallel entry: ``(backend, params)`` for a call another technique computes, or
        ``None`` when this step or layer stays exact."""
        if layer is None:
            return None
        if not self.quantized(layer):
            self.count(layer, "exact")
            return None
        self.count(layer, "sparse" if grid is not None else "dense")
        return QUANT_BACKEND, self.backend_params(num_text_tokens, grid, window, tile)

    @classmethod
    def parallel_refusal(cls, config, *, ring: int, ulysses: int, techniques) -> str | None:
        if ring > 1 and "sliding_window" in techniques:
            return ("with SlidingWindowConfig under ring attention: the quantized kernel takes no key positions, "
                    "which each ring step's window needs (use Ulysses, or one of the two techniques)")
        return None

    # -- reporting ----------------------------------------------------------------------------------------
    def stats(self) -> dict:
        c = self.counts
        return {
            "quantized_calls": sum(c["dense"]) + sum(c["sparse"]),
            "sparse_calls": sum(c["sparse"]),
            "exact_calls": sum(c["exact"]),
            "fallback_calls": sum(c["fallback"]),
            "per_layer": {kind: list(v) for kind, v in c.items()},
        }

    def finish_run(self) -> None:
        c = self.counts
        calls = sum(sum(v) for v in c.values())
        if calls and not (sum(c["dense"]) + sum(c["sparse"])):
            logger.warning("QuantAttentionConfig(dense_steps=%d, dense_layers=%s) quantized none of the %d "
                           "self-attention calls of the %s", self.config.dense_steps, list(self.config.dense_layers),
                           calls, self.role)


def quant_attention_backend(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                            scale: float | None = None, enable_gqa: bool = False, return_lse: bool = False,
                            _parallel_config=None, **_):
    """:func:`~vidaccel.kernels.quant_attention.quant_attention` with the signature of a diffusers attention
    backend: ``[B, L, H, D]`` in, ``out`` or, with ``return_lse``, ``(out, lse)`` with ``lse [B, L, H]`` fp32
    (diffusers' layout; its ring attention merges the steps of context parallelism through it). For registration
    with diffusers' attention dispatcher."""
    if attn_mask is not None or is_causal or dropout_p or enable_gqa:
        raise ValueError("the vidaccel quantized attention backend takes no attn_mask, is_causal, dropout_p or "
                         f"enable_gqa (got attn_mask={'set' if attn_mask is not None else None}, "
                         f"is_causal={is_causal}, dropout_p={dropout_p}, enable_gqa={enable_gqa})")
    if not return_lse:
        return quant_attention(query, key, value, scale=scale)
    out, lse = quant_attention(query, key, value, scale=scale, return_lse=True)
    return out, lse.permute(0, 2, 1)
