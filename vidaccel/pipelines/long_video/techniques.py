"""Which vidaccel techniques act inside :class:`~.pipeline.LongVideoPipeline`, and how.

The long-video pipeline replaces every self-attention processor for the length of a call (the KV-cached
attention, or the block-causal mask of the recompute reference), so a technique that works by changing
attention must act through it; the rest act as in any pipeline. Each built-in technique acts; any other is
refused at :func:`vidaccel.apply` (and at the call, for a transformer that had it before), naming these:

=================== ==================================================================================
``cache``           per chunk: each chunk's denoising steps are one run (warm-up, final steps, schedules
                    scaled to few-step runs); the passes that write the KV cache always compute.
``quant``           module swap, as in any pipeline (empty image-context slices included).
``sliding_window``  each chunk's queries attend, within the sliding-tile window, over the recent cached
                    frames and the chunk itself; sink frames stay global (Light Forcing / FlashBlock:
                    sparse attention for chunked generation; :mod:`vidaccel.kernels.attention.chunk_window`).
                    Temporal tiles are frames; ``dense_steps`` are the first steps of every chunk (the
                    KV-writing pass is windowed); ``dense_layers`` stay dense. Refused: ``cross_attn_every``.
``linear_attention`` the swapped layers attend linearly over the cached frames and the chunk (their
                    own keys/values are cached as for any layer). Refused: ``layers="auto"`` (its calibration
                    samples with the text-to-video call).
=================== ==================================================================================

With ``use_kv_cache=False`` (the recompute reference) the windowed and linear layers apply the same rule to the
whole visible history under the block-causal mask; with a window covering every frame in time the two paths
agree to floating-point precision. ``reuse_context_attention`` (FlashBlock) reuses the context part of dense
layers only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...core.processors import ProcessorWrapper
from ...core.technique import attached
from ...families import unwrap_compiled
from ...kernels.attention import default_tile
from ...kernels.attention.chunk_window import (
    chunk_window_attention,
    chunk_window_density,
)
from ...kernels.attention.naive import sliding_tile_mask
from ...kernels.linear_attention import linear_attention_features

__all__ = ["SUPPORTED", "check_config", "LongVideoTechniques", "RecomputeAttention"]

#: technique name -> how it acts in a long-video call
SUPPORTED = {
    "cache": "feature caching per chunk; the KV-writing passes always compute",
    "quant": "quantized layers, as in any pipeline",
    "sliding_window": "sliding-tile attention of each chunk over the recent cached frames and itself",
    "linear_attention": "linear attention of the swapped layers over the cached frames and the chunk",
}


def _refuse(name: str, why: str) -> ValueError:
    return ValueError(f"{why} inside LongVideoPipeline; techniques that act there: "
                      + "; ".join(f"{n} ({how})" for n, how in SUPPORTED.items()))


def check_config(config, name: str) -> None:
    """Raise ``ValueError`` when a technique config cannot act inside a long-video call."""
    if name not in SUPPORTED:
        raise _refuse(name, f"technique {name!r} ({type(config).__name__}) has no long-video form")
    if name == "sliding_window" and getattr(config, "cross_attn_every", 0):
        raise _refuse(name, f"SlidingWindowConfig.cross_attn_every={config.cross_attn_every} (a dense branch per "
                            "call) cannot run")
    if name == "linear_attention" and getattr(config, "layers", None) == "auto" and config.adapter is None:
        raise _refuse(name, "LinearAttentionConfig(layers='auto') calibrates with text-to-video calls, which "
                            "cannot run; give layers=[...] or an adapter,")


@functools.lru_cache(maxsize=32)
def _window_mask(grid, window, tile, num_global, device) -> torch.Tensor:
    return sliding_tile_mask(grid, window, tile, num_global, device=device)


@dataclass
class ChunkPass:
    """Geometry of the transformer pass in progress (set by the pipeline before each pass)."""

    step: int | None = None       # denoising step within the chunk; None for a KV-writing pass
    sink_frames: int = 0          # sink frames among the frames before the chunk (recompute path)
    grid_hw: tuple[int, int] = (1, 1)
    chunk_frames: int = 1


class LongVideoTechniques:
    """The attention-changing techniques attached to a transformer, as one long-video call uses them."""

    def __init__(self, transformer):
        table = attached(unwrap_compiled(transformer))
        for name, technique in table.items():
            check_config(technique.config, name)
        self.window = table.get("sliding_window")
        self.linear = table.get("linear_attention")
        self.now = ChunkPass()

    @property
    def changes_attention(self) -> bool:
        return self.window is not None or self.linear is not None

    def mode(self, layer: int) -> str:
        """``"linear"``, ``"window"`` or ``"dense"`` for ``layer`` in the pass in progress."""
        if self.linear is not None and layer in self.linear.layers:
            return "linear"
        if self.window is not None:
            cfg = self.window.config
            dense_step = self.now.step is not None and self.now.step < cfg.dense_steps
            if layer not in cfg.dense_layers and not dense_step:
                return "window"
        return "dense"

    def _tile(self, grid) -> tuple[int, int, int]:
        cfg = self.window.config
        tile = cfg.tile if cfg.tile is not None else default_tile(grid)
        return (1, min(tile[1], grid[1]), min(tile[2], grid[2]))

    def _backend(self) -> str:
        return "torch" if self.window.config.backend == "torch" else "gather"

    # -- KV-cache path: the chunk's queries over [sink | recent cached frames | chunk] -------------------------
    def window_kv(self, q_rot, k_all, v_all, sink_tokens: int, frames: int, query_frames: int) -> torch.Tensor:
        gh, gw = self.now.grid_hw
        sink = sink_tokens // (gh * gw)
        grid = (frames - sink, gh, gw)
        tile = self._tile(grid)
        window = self.window.config.window
        out = chunk_window_attention(q_rot, k_all, v_all, grid=grid, window=window, tile=tile, num_global=sink_tokens,
                                     backend=self._backend())
        self.window.count_density(chunk_window_density(grid, window, tile, sink_tokens, query_frames))
        return out

    def linear_kv(self, layer: int, q, k_all, v_all, rope_q, rope_k, n_ctx: int) -> torch.Tensor:
        """Linear attention of the chunk's queries ``q`` over ``k_all = [context | chunk]`` (keys before RoPE)."""
        tech = self.linear
        fm = tech.feature_fn(layer)
        if isinstance(fm, torch.nn.Module) and fm.weight.device != q.device:
            fm.to(q.device)
        fq, fk = fm(q), fm(k_all)
        fq_all = torch.cat([fk[:, :n_ctx].new_zeros(fk[:, :n_ctx].shape), fq], 1)  # context rows are dropped
        cfg = tech.config
        if tech_rope(cfg) and rope_q is not None:
            num_k = torch.cat([rope_k(fk[:, :n_ctx], torch.float32), rope_q(fk[:, n_ctx:], torch.float32)], 1)
            num_q = torch.cat([fq_all[:, :n_ctx].float(), rope_q(fq, torch.float32)], 1)
            out = linear_attention_features(num_q, num_k, v_all, q_den=fq_all, k_den=fk, backend=cfg.backend,
                                            eps=cfg.eps)
        else:
            out = linear_attention_features(fq_all, fk, v_all, backend=cfg.backend, eps=cfg.eps)
        tech.linear_calls += 1
        return out[:, n_ctx:]


def tech_rope(config) -> bool:
    return getattr(config, "rope", "none") != "none"


class RecomputeAttention(ProcessorWrapper):
    """Recompute reference (``use_kv_cache=False``): windowed / linear layers under the block-causal mask;
    every other layer calls the wrapped processor (the model's own, with the block-causal mask)."""

    def __init__(self, inner, layer: int, techniques: LongVideoTechniques, family, block_causal):
        super().__init__(inner, layer)
        self.techniques = techniques
        self.family = family
        self.block_causal = block_causal

    def __call__(self, attn, *args, **kwargs):
        lv = self.techniques
        call = self.bind(attn, *args, **kwargs)
        if call.get("encoder_hidden_states") is not None:
            return self.inner(attn, *args, **kwargs)
        mode = lv.mode(self.layer)
        inputs = self.family.self_attention_inputs(attn, call) if mode != "dense" else None
        if inputs is None:
            return self.inner(attn, *args, **kwargs)
        q, k, v = inputs.q, inputs.k, inputs.v
        seq = q.shape[1]
        gh, gw = lv.now.grid_hw
        tpf = gh * gw
        if mode == "linear":
            out = self._linear(q, k, v, inputs.rotary, tpf * lv.now.chunk_frames)
        else:
            q_rot, k_rot = inputs.rotated()
            frames = seq // tpf
            sink = min(lv.now.sink_frames, frames - lv.now.chunk_frames)
            grid = (frames - sink, gh, gw)
            tile = lv._tile(grid)
            window = lv.window.config.window
            mask = _window_mask(grid, window, tile, sink * tpf, q.device) & self.block_causal.mask(seq, q.device)
            out = F.scaled_dot_product_attention(q_rot.transpose(1, 2), k_rot.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask).transpose(1, 2)
            q_frames = lv.now.chunk_frames
            lv.window.count_density(chunk_window_density(grid, window, tile, sink * tpf, q_frames))
        return self.family.attention_output(attn, out, inputs)

    def _linear(self, q, k, v, rotary, chunk_tokens: int):
        tech = self.techniques.linear
        fm = tech.feature_fn(self.layer)
        if isinstance(fm, torch.nn.Module) and fm.weight.device != q.device:
            fm.to(q.device)
        fq, fk = fm(q), fm(k)
        cfg = tech.config
        tech.linear_calls += 1
        if rotary is not None and tech_rope(cfg):
            return linear_attention_features(rotary(fq, torch.float32), rotary(fk, torch.float32), v, q_den=fq,
                                             k_den=fk, causal=True, chunk=chunk_tokens, backend=cfg.backend,
                                             eps=cfg.eps)
        return linear_attention_features(fq, fk, v, causal=True, chunk=chunk_tokens, backend=cfg.backend,
                                         eps=cfg.eps)
