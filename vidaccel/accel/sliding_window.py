"""Sliding-tile (local window) self-attention for Wan and CogVideoX, training-free.

Most of a video model's self-attention mass is local in (time, height, width). This technique replaces
the self-attention of every layer except ``dense_layers`` by sliding-tile attention
(:func:`vidaccel.kernels.attention.sliding_tile_attention`; STA, https://arxiv.org/abs/2502.04507): a
query attends to the keys in a window of tiles centred on its own tile, shifted inward at the borders so
every query keeps a full window. The first ``dense_steps`` denoising steps stay dense (as STA and Radial
Attention do): they fix the global layout. Cross-attention is untouched. CogVideoX's text tokens, which
lead the self-attention sequence, stay global (they attend to and are attended by everything).

q/k/v, the q/k norms and RoPE are computed by the attention module's own layers exactly as diffusers'
processor does; only the attention call changes. Layers and steps that stay dense run the original
processor, so they are bit-identical to the baseline.

High-resolution mode (FreeSwim, https://arxiv.org/abs/2511.14712): above the training size, set
``train_grid`` (windows default to it, so every query keeps its training-size receptive field) and
``cross_attn_every=k``: every ``k`` steps a dense branch (a full transformer call with dense
self-attention) runs first and its cross-attention outputs are cached; the windowed branch uses them in
place of its own until the next refresh. Wan only (CogVideoX has no cross-attention).

``vidaccel.stats(pipe)["sliding_window"]`` reports the attention density actually computed: the fraction
of (query, key) pairs over all self-attention calls of the last run (dense calls count as 1).

Example::

    import vidaccel
    pipe = vidaccel.load_pipeline("embedded")
    vidaccel.apply(pipe, vidaccel.SlidingWindowConfig(window=(3, 4, 4), tile=(1, 2, 2), dense_steps=2))
    frames = pipe("a red circle moving right on a black background").frames[0]
    print(vidaccel.stats(pipe)["sliding_window"]["transformer"]["density"])
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from dataclasses import dataclass, field

import torch

from ..kernels.attention import BACKENDS, default_tile, sliding_tile_attention, sliding_tile_density
from ..kernels.attention.naive import window_in_tiles
from .base import Technique, register_technique
from .processors import ProcessorSwap, ProcessorWrapper, wrap_processor

logger = logging.getLogger(__name__)

__all__ = ["SlidingWindowConfig", "SlidingWindow"]


def _triple(name: str, value, optional: bool = False):
    if value is None and optional:
        return None
    ok = isinstance(value, (tuple, list)) and len(value) == 3 and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value)
    if not ok:
        raise ValueError(f"SlidingWindowConfig.{name}={value!r} is not allowed: it must be three integers "
                         f"(t, h, w) in tokens, each >= 1")
    return tuple(value)


@dataclass
class SlidingWindowConfig:
    """Sliding-tile self-attention.

    Args:
        window: ``(wt, wh, ww)`` window in tokens of the token grid (after patching), rounded up to whole
            tiles. A window ≥ the grid computes dense attention (a warning says so). ``None`` only with
            ``train_grid`` (then the window is the training grid).
        tile: ``(tt, th, tw)`` tokens per tile (default ``(4, 8, 8)`` clipped to the grid). Tiles are the
            unit kept or skipped; smaller tiles follow the window more closely, larger ones run faster.
        dense_steps: the first denoising steps that keep dense attention.
        dense_layers: block indices whose self-attention stays dense.
        backend: kernel backend, one of ``"auto"``, ``"triton"``, ``"flex"``, ``"gather"``, ``"torch"``.
        train_grid: FreeSwim mode: the token grid of the model's training size ``(T, H, W)``.
        cross_attn_every: FreeSwim mode: recompute the dense branch's cross-attention outputs every this
            many steps (0: no dense branch). Needs a model with cross-attention (Wan).
    """

    window: tuple[int, int, int] | None = None
    tile: tuple[int, int, int] | None = None
    dense_steps: int = 0
    dense_layers: tuple[int, ...] = field(default_factory=tuple)
    backend: str = "auto"
    train_grid: tuple[int, int, int] | None = None
    cross_attn_every: int = 0

    def __post_init__(self):
        self.train_grid = _triple("train_grid", self.train_grid, optional=True)
        if self.window is None:
            if self.train_grid is None:
                raise ValueError("SlidingWindowConfig.window=None is only allowed with train_grid (FreeSwim mode); "
                                 "give window=(wt, wh, ww) in tokens")
            self.window = self.train_grid
        self.window = _triple("window", self.window)
        self.tile = _triple("tile", self.tile, optional=True)
        for name in ("dense_steps", "cross_attn_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"SlidingWindowConfig.{name}={value!r} is not allowed: it must be an int >= 0")
        try:
            layers = tuple(self.dense_layers)
        except TypeError:
            layers = None
        if layers is None or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in layers):
            raise ValueError(f"SlidingWindowConfig.dense_layers={self.dense_layers!r} is not allowed: it must be a "
                             f"list of block indices >= 0")
        self.dense_layers = tuple(sorted(set(layers)))
        if self.backend not in BACKENDS:
            raise ValueError(f"SlidingWindowConfig.backend={self.backend!r} is not allowed; allowed: "
                             f"{', '.join(BACKENDS)}")


@functools.lru_cache(maxsize=256)
def _density(grid, window, tile, num_text_tokens) -> float:
    return sliding_tile_density(grid, window, tile, num_text_tokens)


# -- the attention computations (the original processors' q/k/v, only the attention call swapped) ----
def _wan_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # as in diffusers' WanAttnProcessor (interleaved pairs)
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _wan_self_attention(attn, hidden_states, rotary_emb, attend):
    from diffusers.models.transformers.transformer_wan import _get_qkv_projections

    query, key, value = _get_qkv_projections(attn, hidden_states, None)
    query, key = attn.norm_q(query), attn.norm_k(key)
    query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
    if rotary_emb is not None:
        query, key = _wan_rope(query, *rotary_emb), _wan_rope(key, *rotary_emb)
    out = attend(query, key, value, 0).flatten(2, 3).type_as(query)
    return attn.to_out[1](attn.to_out[0](out))


def _cogvideox_self_attention(attn, hidden_states, encoder_hidden_states, image_rotary_emb, attend):
    from diffusers.models.embeddings import apply_rotary_emb

    text_len = encoder_hidden_states.size(1)
    x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    batch = x.shape[0]
    query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch, -1, attn.heads, head_dim) for t in (query, key, value))  # [B, L, H, D]
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if image_rotary_emb is not None:  # video part only, as in CogVideoXAttnProcessor2_0
        query[:, text_len:] = apply_rotary_emb(query[:, text_len:], image_rotary_emb, sequence_dim=1)
        if not attn.is_cross_attention:
            key[:, text_len:] = apply_rotary_emb(key[:, text_len:], image_rotary_emb, sequence_dim=1)
    out = attend(query, key, value, text_len).reshape(batch, -1, attn.heads * head_dim)
    out = attn.to_out[1](attn.to_out[0](out))
    return out[:, text_len:], out[:, :text_len]


class _WindowedProcessor(ProcessorWrapper):
    """Runs the original processor when dense, sliding-tile attention otherwise."""

    def __init__(self, inner, layer: int, technique: "SlidingWindow"):
        super().__init__(inner, layer)
        self.technique = technique

    def __call__(self, attn, *args, **kwargs):
        tech = self.technique
        bound = self.bind(attn, *args, **kwargs)
        if not tech.windowed(self.layer) or bound.get("attention_mask") is not None:
            tech.count(None, 0)
            return self.inner(attn, *args, **kwargs)
        hidden_states = bound["hidden_states"]
        if tech.spec.text_in_sequence:
            ehs = bound["encoder_hidden_states"]
            tech.count(hidden_states.shape[1], ehs.shape[1])
            return _cogvideox_self_attention(attn, hidden_states, ehs, bound.get("image_rotary_emb"), tech.attend)
        if getattr(attn, "add_k_proj", None) is not None or bound.get("encoder_hidden_states") is not None:
            tech.count(None, 0)  # not a self-attention (never the case for Wan's attn1)
            return self.inner(attn, *args, **kwargs)
        tech.count(hidden_states.shape[1], 0)
        return _wan_self_attention(attn, hidden_states, bound.get("rotary_emb"), tech.attend)


# -- the technique -----------------------------------------------------------------------------------
@register_technique(SlidingWindowConfig)
class SlidingWindow(Technique):
    name = "sliding_window"

    def attach(self) -> None:
        cfg = self.config
        n_layers = len(self.spec.blocks(self.model))
        bad = [i for i in cfg.dense_layers if i >= n_layers]
        if bad:
            raise ValueError(f"SlidingWindowConfig.dense_layers={list(cfg.dense_layers)} is out of range: "
                             f"{type(self.model).__name__} ({self.role}) has {n_layers} layers (indices 0..{n_layers - 1})")
        if cfg.cross_attn_every and self.spec.cross_attn_attr is None:
            raise ValueError(f"SlidingWindowConfig.cross_attn_every={cfg.cross_attn_every} needs cross-attention, but "
                             f"{type(self.model).__name__} puts text in the self-attention sequence; use 0")
        if len(cfg.dense_layers) == n_layers:
            logger.warning("SlidingWindowConfig.dense_layers lists all %d layers: it computes dense attention",
                           n_layers)
        self._forward_params = list(inspect.signature(type(self.model).forward).parameters)[1:]
        self.reset()
        self._handles = [self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)]
        if cfg.cross_attn_every:
            for i, block in enumerate(self.spec.blocks(self.model)):
                cross = getattr(block, self.spec.cross_attn_attr)
                self._handles.append(cross.register_forward_hook(functools.partial(self._cross_hook, i)))
        self.swap = ProcessorSwap(self.spec, self.model,
                                  lambda p, i: wrap_processor(_WindowedProcessor, p, i, technique=self))
        self.swap.attach()
        self._warned: set = set()

    def detach(self) -> None:
        self.swap.detach()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.reset()

    def reset(self) -> None:
        self.grid: tuple[int, int, int] | None = None
        self.step = 0
        self._last_t: float | None = None
        self._bare_step = 0
        self._prev_step: int | None = None
        self._sparse_step = False
        self._call_in_step = 0
        self._dense_branch = False
        self._cross_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.pairs_computed = 0.0
        self.pairs_total = 0.0
        self.sparse_calls = 0
        self.dense_calls = 0
        self.dense_branch_calls = 0
        self.cross_overrides = 0

    # -- per transformer call ---------------------------------------------------------------------
    def _arg(self, name, args, kwargs):
        if name in kwargs:
            return kwargs[name]
        pos = self._forward_params.index(name)
        return args[pos] if pos < len(args) else None

    def _step_index(self, timestep) -> int:
        t = float(timestep.detach().float().max()) if isinstance(timestep, torch.Tensor) else float(timestep or 0.0)
        timesteps = getattr(getattr(self.pipeline, "scheduler", None), "timesteps", None)
        if isinstance(timesteps, torch.Tensor) and timesteps.numel():
            return int((timesteps.detach().float().cpu() - t).abs().argmin())
        # bare model: count distinct timesteps; a rising timestep starts a new run
        if self._last_t is None or t > self._last_t:
            self._bare_step = 0
        elif t != self._last_t:
            self._bare_step += 1
        self._last_t = t
        return self._bare_step

    def _pre_forward(self, module, args, kwargs):
        if self._dense_branch:
            return None
        cfg = self.config
        hidden_states = self._arg("hidden_states", args, kwargs)
        latent = tuple(hidden_states.shape[a] for a in self.spec.latent_axes)
        self.grid = self.spec.token_grid(self.model, latent)
        step = self._step_index(self._arg("timestep", args, kwargs))
        self._call_in_step = self._call_in_step + 1 if step == self._prev_step else 0
        self.step = self._prev_step = step
        self._sparse_step = step >= cfg.dense_steps
        tile = self.tile
        if self._sparse_step and self.grid not in self._warned:
            self._warned.add(self.grid)
            if window_in_tiles(self.grid, cfg.window, tile) == tuple(math.ceil(g / t) for g, t in zip(self.grid, tile)):
                logger.warning("SlidingWindowConfig(window=%s) covers the whole token grid %s (tile %s): it computes "
                               "dense attention", cfg.window, self.grid, tile)
        if self._sparse_step and cfg.cross_attn_every and self._needs_refresh(step):
            self._dense_branch = True
            try:
                self.dense_branch_calls += 1
                module(*args, **kwargs)  # dense branch: records every layer's cross-attention output
            finally:
                self._dense_branch = False
        return None

    def _needs_refresh(self, step: int) -> bool:
        if (step - self.config.dense_steps) % self.config.cross_attn_every == 0:
            return True
        return any((self._call_in_step, i) not in self._cross_cache for i in range(len(self.spec.blocks(self.model))))

    def _cross_hook(self, layer, module, args, output):
        key = (self._call_in_step, layer)
        if self._dense_branch:
            self._cross_cache[key] = output.detach()
            return None
        cached = self._cross_cache.get(key)
        if self._sparse_step and cached is not None and cached.shape == output.shape:
            self.cross_overrides += 1
            return cached
        return None

    # -- used by the processors -----------------------------------------------------------------
    @property
    def tile(self) -> tuple[int, int, int]:
        return self.config.tile if self.config.tile is not None else default_tile(self.grid)

    def windowed(self, layer: int) -> bool:
        return (self._sparse_step and not self._dense_branch and self.grid is not None
                and layer not in self.config.dense_layers)

    def count(self, video_len: int | None, text_len: int) -> None:
        """Record one self-attention call: dense (``video_len=None``) or windowed."""
        if video_len is None:
            self.dense_calls += 1
            self.pairs_computed += 1.0
            self.pairs_total += 1.0
            return
        if video_len != math.prod(self.grid):
            raise ValueError(f"self-attention sees {video_len} video tokens but the token grid {self.grid} has "
                             f"{math.prod(self.grid)}")
        self.sparse_calls += 1
        self.pairs_computed += _density(self.grid, self.config.window, self.tile, text_len)
        self.pairs_total += 1.0

    def attend(self, q, k, v, num_text_tokens: int):
        return sliding_tile_attention(q, k, v, grid=self.grid, window=self.config.window, tile=self.tile,
                                      num_text_tokens=num_text_tokens, backend=self.config.backend)

    # -- reporting ----------------------------------------------------------------------------------
    def stats(self) -> dict:
        return {
            "density": self.pairs_computed / self.pairs_total if self.pairs_total else 1.0,
            "sparse_calls": self.sparse_calls,
            "dense_calls": self.dense_calls,
            "grid": list(self.grid) if self.grid else None,
            "tile": list(self.tile) if self.grid else None,
            "window_tiles": list(window_in_tiles(self.grid, self.config.window, self.tile)) if self.grid else None,
            "dense_branch_calls": self.dense_branch_calls,
            "cross_attn_overrides": self.cross_overrides,
        }

    def finish_run(self) -> None:
        if self.pairs_total and self.pairs_computed >= self.pairs_total:
            logger.warning("SlidingWindowConfig(window=%s, dense_steps=%d) made nothing sparse in this run (token "
                           "grid %s): it computed dense attention", self.config.window, self.config.dense_steps,
                           self.grid)
