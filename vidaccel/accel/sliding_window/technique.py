"""The sliding-tile attention processor and :class:`SlidingWindowTechnique` (see :mod:`vidaccel.accel.sliding_window`)."""

from __future__ import annotations

import functools
import inspect
import logging
import math

import torch

from ...core.attention_backend import dispatch
from ...core.attention_kernel import attention_kernel, parallel_attention_kernel
from ...core.processors import ProcessorSwap, ProcessorWrapper, wrap_processor
from ...core.steps import StepTracker
from ...core.technique import Technique, register_technique
from ...kernels.attention import (
    default_tile,
    sliding_tile_attention,
    sliding_tile_density,
)
from ...kernels.attention.naive import window_in_tiles
from .backend import STA_BACKEND, StaParams
from .config import SlidingWindowConfig

logger = logging.getLogger(__name__)

__all__ = ["SlidingWindowTechnique"]


@functools.lru_cache(maxsize=256)
def _density(grid, window, tile, num_text_tokens) -> float:
    return sliding_tile_density(grid, window, tile, num_text_tokens)



class _WindowedProcessor(ProcessorWrapper):
    """Runs the original processor when dense, sliding-tile attention otherwise.

    q/k/v, the q/k norms and RoPE come from the model family's own computation (exactly as the original
    processor does them); only the attention call changes.
    """

    def __init__(self, inner, layer: int, technique: "SlidingWindowTechnique"):
        super().__init__(inner, layer)
        self.technique = technique

    def __call__(self, attn, *args, **kwargs):
        tech = self.technique
        call = self.bind(attn, *args, **kwargs)
        inputs = None
        if tech.windowed(self.layer) and call.get("attention_mask") is None:
            inputs = tech.family.self_attention_inputs(attn, call)
        if inputs is None:
            tech.count(None, 0)
            return self.inner(attn, *args, **kwargs)
        parallel = self._parallel_config
        # under context parallelism this rank holds 1/world of the tokens (text and video alike)
        world = 1 if parallel is None else (parallel.context_parallel_config.ring_degree
                                            * parallel.context_parallel_config.ulysses_degree)
        tech.count((inputs.q.shape[1] - inputs.text_len) * world, inputs.text_len * world)
        q, k = inputs.rotated()
        if parallel is None:
            out = tech.attend(q, k, inputs.v, inputs.text_len, layer=self.layer)
        else:
            backend, params = tech.parallel_backend(inputs.text_len * world, layer=self.layer)
            out = dispatch(q, k, inputs.v, backend=backend, parallel_config=parallel, params=params)
        return tech.family.attention_output(attn, out, inputs)


# -- the technique -----------------------------------------------------------------------------------
@register_technique(SlidingWindowConfig)
class SlidingWindowTechnique(Technique):
    name = "sliding_window"

    @classmethod
    def noop_config(cls) -> SlidingWindowConfig:
        # every step dense: the original processors run
        return SlidingWindowConfig(window=(1, 1, 1), dense_steps=1_000_000)

    @classmethod
    def example_config(cls) -> SlidingWindowConfig:
        return SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2))

    def attach(self) -> None:
        cfg = self.config
        n_layers = len(self.family.blocks(self.model))
        bad = [i for i in cfg.dense_layers if i >= n_layers]
        if bad:
            raise ValueError(f"SlidingWindowConfig.dense_layers={list(cfg.dense_layers)} is out of range: "
                             f"{type(self.model).__name__} ({self.role}) has {n_layers} layers (indices 0..{n_layers - 1})")
        crosses = list(self.family.cross_attentions(self.model))
        if cfg.cross_attn_every and not crosses:
            raise ValueError(f"SlidingWindowConfig.cross_attn_every={cfg.cross_attn_every} needs cross-attention, but "
                             f"{type(self.model).__name__} puts text in the self-attention sequence; use 0")
        if len(cfg.dense_layers) == n_layers:
            logger.warning("SlidingWindowConfig.dense_layers lists all %d layers: it computes dense attention",
                           n_layers)
        self._forward_params = list(inspect.signature(type(self.model).forward).parameters)[1:]
        self.reset()
        self._handles = [self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)]
        if cfg.cross_attn_every:
            for i, cross in crosses:
                self._handles.append(cross.register_forward_hook(functools.partial(self._cross_hook, i)))
        self.swap = ProcessorSwap(self.family, self.model,
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
        self._text_len = 0  # text tokens leading the sequence (CogVideoX), from the last windowed call
        self.step = 0
        self._steps = StepTracker(self.pipeline)
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

    def _pre_forward(self, module, args, kwargs):
        if self._dense_branch:
            return None
        cfg = self.config
        hidden_states = self._arg("hidden_states", args, kwargs)
        self.grid = self.family.input_grid(self.model, hidden_states)
        step = self._steps.step(self._arg("timestep", args, kwargs))
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
        return any((self._call_in_step, i) not in self._cross_cache for i in range(len(self.family.blocks(self.model))))

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
        return self.config.tile if self.config.tile is not None else default_tile(self.grid, self._text_len)

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
        self._text_len = text_len
        if video_len != math.prod(self.grid):
            raise ValueError(f"self-attention sees {video_len} video tokens but the token grid {self.grid} has "
                             f"{math.prod(self.grid)}")
        self.sparse_calls += 1
        self.pairs_computed += _density(self.grid, self.config.window, self.tile, text_len)
        self.pairs_total += 1.0

    def count_density(self, density: float) -> None:
        """Record one windowed self-attention call computed elsewhere (long video) at ``density``."""
        self.sparse_calls += 1
        self.pairs_computed += density
        self.pairs_total += 1.0

    def backend_params(self, num_text_tokens: int) -> StaParams:
        """The ``vidaccel_sta`` parameters of this call (whole-sequence geometry)."""
        return StaParams(self.grid, self.config.window, tuple(min(t, g) for t, g in zip(self.tile, self.grid)),
                         num_text_tokens, self.config.backend)

    def parallel_backend(self, num_text_tokens: int, layer: int | None = None):
        """``(backend, params)`` of a windowed call under context parallelism (``num_text_tokens``: of the whole
        sequence): the parallel entry of the model's attention-kernel slot (quantized attention) when it takes the
        call, else ``vidaccel_sta``."""
        params = self.backend_params(num_text_tokens)
        parallel = parallel_attention_kernel(self.model)
        if parallel is not None:
            chosen = parallel(layer=layer, num_text_tokens=num_text_tokens, grid=params.grid, window=params.window,
                              tile=params.tile)
            if chosen is not None:
                return chosen
        return STA_BACKEND, params

    def attend(self, q, k, v, num_text_tokens: int, layer: int | None = None):
        """Windowed attention of one call: by the kernel in the model's attention-kernel slot (quantized
        attention) when one is set and takes the call, else by :func:`sliding_tile_attention`."""
        kernel = attention_kernel(self.model)
        if kernel is not None:
            out = kernel(q, k, v, layer=layer, num_text_tokens=num_text_tokens, grid=self.grid,
                         window=self.config.window, tile=self.tile)
            if out is not None:
                return out
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
