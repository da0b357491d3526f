"""Feature caching: skip transformer blocks on denoising steps where their contribution barely changes.

``CacheConfig(policy=...)`` picks how a call decides to skip (all policies share the guards, forecasting,
per-branch state and stats):

``"block"`` (first-block / dual-block caching, as FBCache and cache-dit's DBCache)
    The first ``compute_front`` blocks always run. Their residual (output − input) is compared with the
    one of the last fully computed call; while the relative L1 change stays under ``threshold`` the
    middle blocks are skipped and their cached residual is reused (or forecast). The last
    ``compute_back`` blocks always run.

``"step"`` (calibration-free step-level indicator; TeaCache's signal with EasyCache-style rescaling)
    Watches the timestep-modulated input of the first block. Instead of per-model polynomial
    coefficients (TeaCache, MagCache), the mapping from input change to output change is learned online
    from the run's own computed calls: ``k = Δoutput / ΣΔinput`` between consecutive computed calls. Calls
    are skipped while the accumulated estimate ``Σ k·Δinput`` stays under ``threshold``. Works unchanged on
    a new model or on Wan 2.2's second expert.

``"profiled"`` (ProfilingDiT, "Model Reveals What to Cache", arXiv:2504.03140)
    During the warm-up calls every block runs and the relative change of each block's own residual between
    consecutive calls is measured. The ``cache_ratio`` most stable blocks become cacheable; on a skip
    decision (same indicator as ``"block"``) only they reuse their residuals while the volatile blocks are
    computed.

``"call"`` (whole-call caching: the transformer output itself is cached, as in FORA / Δ-DiT one level up)
    A skipped call runs nothing at all: not the blocks, not the embeddings, not the output head, not the
    hooks. It returns the last computed output (``forecast_order=0``, the default) or its Taylor forecast in
    the step index. The gap to the next computed call is chosen online, with no per-model coefficients: each
    computed call measures the error the skip it ends would have made (relative L1 between the reused /
    forecast output and the real one, over a gap of ``k`` calls), turns it into a per-call rate
    ``r = error / k^(order+1)``, and skips the next ``g − 1`` calls for the largest ``g ≤ interval`` with
    ``r · g^(order+1) ≤ threshold``. ``threshold=inf`` gives a fixed schedule (every ``interval``-th call).
    On the embedded model plain reuse is the robust choice: the output jitters from step to step, so a
    slope extrapolates the jitter, and on two of six prompts any slope (even damped ×0.3) flipped the
    result (PSNR 12-25 dB) where reuse stayed at 34-41 dB.

``cfg_interval`` (sequential CFG, i.e. Wan's separate ``"cond"`` / ``"uncond"`` calls; FasterCache's
CFG-Cache, arXiv:2410.19355) computes the unconditional branch's skippable blocks only on every
``cfg_interval``-th call; in between their residual is the conditional branch's residual of the same step
(computed or forecast a moment earlier) plus the unconditional−conditional difference measured at the last
full unconditional call. The difference moves far more slowly over the steps than either residual does.

``forecast_order`` 1 or 2 replaces plain reuse of a skipped residual by a Taylor forecast in the step index
from the last computed calls (TaylorSeer, arXiv:2503.06923): first or second divided differences of the
skipped span's *output* (forecasting the output, not the residual, measured 6-7 dB better on the embedded
model: the residual inherits the step-to-step jitter of its input).

Guards: the first ``warmup_steps`` calls of every branch and the last ``final_steps`` denoising steps are
always computed, and no more than ``max_consecutive_skips`` calls in a row are skipped.

State is kept per cache context (Wan's ``"cond"`` / ``"uncond"`` calls, CogVideoX's batched
``"cond_uncond"``; a pipeline that opens no context gets one default state instead of diffusers' "No cache
context is set" error), per transformer (each Wan 2.2 expert has its own technique instance), and is reset
at the start of every pipeline call. A bare transformer called in a loop detects a new run when the
timestep goes up.

Host syncs (one ``.item()`` per decision) live in ``@torch.compiler.disable`` helpers, so blocks compiled
with ``model.compile_repeated_blocks()`` break their graph at most once per call.

Example::

    import vidaccel
    pipe = vidaccel.load_pipeline("embedded")
    vidaccel.apply(pipe, vidaccel.CacheConfig(threshold=0.08, policy="block", forecast_order=1))
    frames = pipe("a red circle moving right on a black background").frames[0]
    print(vidaccel.stats(pipe)["cache"]["transformer"]["skip_ratio"])
"""

from __future__ import annotations

import logging
import math
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import CacheContext, StateManager

from ..presets import register_preset
from .base import Technique, register_technique

logger = logging.getLogger(__name__)

__all__ = ["CacheConfig", "POLICIES", "bypass_cache"]

POLICIES = ("block", "step", "profiled", "call")
_CONTROLLER_HOOK = "vidaccel_cache_controller"
_BLOCK_HOOK = "vidaccel_cache_block"
_DEFAULT_CONTEXT = "default"


@dataclass
class CacheConfig:
    """Feature caching (see the module docstring for the policies).

    Args:
        threshold: skip budget, a relative L1 change; larger is faster. ``0.0`` never skips (bit-identical
            to no cache). For ``"call"`` the tolerated output error per skipped stretch (see the module
            docstring).
        policy: ``"block"``, ``"step"``, ``"profiled"`` or ``"call"``.
        forecast_order: 0 reuses a skipped residual as is; 1 or 2 forecasts it (Taylor in the step index).
        compute_front: blocks always computed before the skippable ones (default: 1 for ``"block"`` and
            ``"profiled"``, 0 for ``"step"``; ``"call"`` skips whole calls and takes no blocks).
        compute_back: blocks always computed after the skippable ones (default 0).
        warmup_steps: first calls of every CFG branch / expert that always compute (≥ 2 for ``"step"``
            and ``"profiled"``, which learn from them).
        max_consecutive_skips: cap on skipped calls in a row (≥ 1; ``"call"`` uses ``interval``).
        final_steps: last denoising steps that always compute.
        cache_ratio: ``"profiled"`` only: fraction of the skippable blocks that are cached.
        cfg_interval: 0 (off) or ≥ 2: sequential-CFG models only (Wan); the unconditional branch computes
            its skippable blocks every ``cfg_interval``-th call and otherwise reuses the conditional
            branch's residual plus the last measured difference. ``"block"`` and ``"step"`` only.
        interval: ``"call"`` only: the longest gap between computed calls, i.e. at most ``interval − 1``
            skipped calls in a row (≥ 1; 1 never skips).
        num_inference_steps: only for bare transformers driven without a pipeline or cache context, so the
            final-step guard knows where the end is.
    """

    threshold: float = 0.1
    policy: str = "block"
    forecast_order: int = 0
    compute_front: int | None = None
    compute_back: int = 0
    warmup_steps: int = 2
    max_consecutive_skips: int = 3
    final_steps: int = 1
    cache_ratio: float = 0.5
    cfg_interval: int = 0
    interval: int = 4
    num_inference_steps: int | None = None

    def __post_init__(self):
        if not isinstance(self.threshold, (int, float)) or not self.threshold >= 0:
            raise ValueError(f"CacheConfig.threshold={self.threshold!r} is not allowed: it must be a number >= 0")
        if self.policy not in POLICIES:
            raise ValueError(f"CacheConfig.policy={self.policy!r} is not allowed; choose one of {', '.join(POLICIES)}")
        if self.forecast_order not in (0, 1, 2):
            raise ValueError(f"CacheConfig.forecast_order={self.forecast_order!r} is not allowed: use 0, 1 or 2")
        if self.compute_front is None:
            self.compute_front = 0 if self.policy in ("step", "call") else 1
        for name in ("compute_front", "compute_back", "warmup_steps", "final_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"CacheConfig.{name}={value!r} is not allowed: it must be an integer >= 0")
        if self.policy == "call" and (self.compute_front or self.compute_back):
            field_ = "compute_front" if self.compute_front else "compute_back"
            raise ValueError(f"CacheConfig.{field_}={getattr(self, field_)} is not allowed with policy='call': "
                             "it skips whole transformer calls, so no block is computed apart; leave it at 0")
        if self.policy == "call" and self.warmup_steps < self.forecast_order + 2:
            raise ValueError(f"CacheConfig.warmup_steps={self.warmup_steps} is not allowed with policy='call' and "
                             f"forecast_order={self.forecast_order}: the error rate is first measured on call "
                             f"{self.forecast_order + 2}, so it needs >= {self.forecast_order + 2}")
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"CacheConfig.interval={self.interval!r} is not allowed: it must be an integer >= 1")
        if self.policy in ("block", "profiled") and self.compute_front < 1:
            raise ValueError(f"CacheConfig.compute_front={self.compute_front} is not allowed with "
                             f"policy={self.policy!r}: its indicator needs at least 1 front block")
        if self.policy in ("step", "profiled") and self.warmup_steps < 2:
            raise ValueError(f"CacheConfig.warmup_steps={self.warmup_steps} is not allowed with policy="
                             f"{self.policy!r}: it learns from the warm-up calls, so it needs >= 2")
        if not isinstance(self.max_consecutive_skips, int) or self.max_consecutive_skips < 1:
            raise ValueError(f"CacheConfig.max_consecutive_skips={self.max_consecutive_skips!r} is not allowed: "
                             "it must be an integer >= 1")
        if not 0.0 < self.cache_ratio <= 1.0:
            raise ValueError(f"CacheConfig.cache_ratio={self.cache_ratio!r} is not allowed: it must be in (0, 1]")
        if not isinstance(self.cfg_interval, int) or self.cfg_interval < 0 or self.cfg_interval == 1:
            raise ValueError(f"CacheConfig.cfg_interval={self.cfg_interval!r} is not allowed: use 0 (off) or an "
                             "integer >= 2")
        if self.cfg_interval and self.policy in ("profiled", "call"):
            raise ValueError(f"CacheConfig.cfg_interval is not allowed with policy={self.policy!r} (it reuses the "
                             "skippable span's residual); use policy='block' or 'step'")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError(f"CacheConfig.num_inference_steps={self.num_inference_steps!r} is not allowed: >= 1")


# -- per-branch state --------------------------------------------------------------------------------
@dataclass
class _History:
    """Residuals (or outputs) of the last computed calls, with their step index, for reuse or Taylor
    forecasting."""

    maxlen: int
    items: deque = field(default_factory=deque)

    def push(self, t: float, tensors: tuple[torch.Tensor, ...]) -> None:
        self.items.append((t, tensors))
        while len(self.items) > self.maxlen:
            self.items.popleft()

    def ready(self) -> bool:
        return bool(self.items)

    def predict(self, t: float) -> tuple[torch.Tensor, ...]:
        """Newton divided differences in ``t`` (the step index) over the stored points (order = points − 1)."""
        pts = list(self.items)
        t1, r1 = pts[-1]
        if len(pts) == 1 or t == t1:
            return r1
        t0, r0 = pts[-2]
        if t1 == t0:
            return r1
        d1 = [(a - b) / (t1 - t0) for a, b in zip(r1, r0)]
        out = [a + d * (t - t1) for a, d in zip(r1, d1)]
        if len(pts) >= 3:
            tm, rm = pts[-3]
            if t0 != tm and t1 != tm:
                d0 = [(a - b) / (t0 - tm) for a, b in zip(r0, rm)]
                d2 = [(a - b) / (t1 - tm) for a, b in zip(d1, d0)]
                out = [o + d * (t - t1) * (t - t0) for o, d in zip(out, d2)]
        return tuple(out)


class _BranchState:
    """Everything one CFG branch of one transformer remembers between its calls."""

    def __init__(self, forecast_order: int):
        self.forecast_order = forecast_order
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.consecutive_skips = 0
        self.last_t: float | None = None
        self.t: float = 0.0
        self.step: int = 0
        self.skip = False
        self.indicator: float | None = None
        self.front_in: tuple | None = None
        self.mid_in: tuple | None = None
        self.ref_front: tuple | None = None     # front residual at the last computed call
        self.prev_mod: torch.Tensor | None = None  # "step": modulated input of the previous call
        self.acc = 0.0                          # "step": accumulated input change since last compute
        self.ratio: float | None = None         # "step": online Δoutput/ΣΔinput
        self.stack_out_ref: tuple | None = None  # "step": skippable-stack residual at last compute
        self.stack = _History(self.forecast_order + 1)  # residual of the whole skippable span
        self.blocks: dict[int, _History] = {}   # "profiled": per-block residuals
        self.block_in: dict[int, tuple] = {}
        self.block_change: dict[int, list[float]] = {}
        self.block_last: dict[int, tuple] = {}  # "profiled": last residual of each block, while profiling
        self.cached_blocks: set[int] | None = None
        self.cfg_reuse = False                  # this call reuses the cond residual (+ difference)
        self.cfg_delta: tuple | None = None     # uncond − cond stack residual at the last full uncond call
        self.cfg_since = 0                      # uncond calls since the last full one
        self.gap = 1                            # "call": calls from the last computed one to the next
        self.output_type: Any = tuple           # "call": how the transformer returns its output


class _ContextStates(StateManager):
    """diffusers' per-context state map, with a default context instead of the "No cache context" error."""

    @property
    def context(self) -> CacheContext:
        return self._context if self._context is not None else CacheContext(_DEFAULT_CONTEXT)


def _rel_l1(new: tuple, old: tuple) -> float:
    num = sum((a.float() - b.float()).abs().mean() for a, b in zip(new, old))
    den = sum(b.float().abs().mean() for b in old)
    return float(num / (den + 1e-12))


def _sub(a: tuple, b: tuple) -> tuple:
    return tuple(x - y for x, y in zip(a, b))


def _add(a: tuple, b: tuple) -> tuple:
    return tuple(x + y.to(x.dtype) for x, y in zip(a, b))


def _same_shapes(a: tuple | None, b: tuple) -> bool:
    return a is not None and len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))


# -- hooks -------------------------------------------------------------------------------------------
class _ControllerHook(ModelHook):
    """On the transformer: picks the branch state for this call and reads the timestep."""

    _is_stateful = True

    def __init__(self, technique: "FeatureCache"):
        super().__init__()
        self.technique = technique
        self.states = _ContextStates(_BranchState, (technique.config.forecast_order,))

    def pre_forward(self, module, *args, **kwargs):
        if self.technique.bypass:  # inside bypass_cache: no state, no decision, no record
            return args, kwargs
        pos = self.technique.timestep_position
        self.technique.begin_call(self.states, kwargs.get("timestep", args[pos] if len(args) > pos else None))
        return args, kwargs

    def new_forward(self, module, *args, **kwargs):
        tech = self.technique
        if not tech.whole_call or tech.current is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        cached = tech.cached_call(tech.current)
        if cached is not None:
            return cached
        output = self.fn_ref.original_forward(*args, **kwargs)
        tech.record_call(tech.current, output)
        return output

    def post_forward(self, module, output):
        self.technique.end_call()
        return output

    def reset_state(self, module):
        # diffusers calls this when a pipeline call ends (maybe_free_model_hooks): drop the cached tensors.
        # The counters for vidaccel.stats live on the technique and survive until the next call starts.
        self.states.reset()
        return module


class _BlockHook(ModelHook):
    """On each block: computes it, or returns its input plus a cached / forecast residual."""

    def __init__(self, technique: "FeatureCache", index: int, carry_positions: dict[str, int]):
        super().__init__()
        self.technique = technique
        self.index = index
        self.carry_positions = carry_positions

    def _carried(self, args, kwargs) -> tuple:
        return tuple(kwargs[n] if n in kwargs else args[p] for n, p in self.carry_positions.items())

    def new_forward(self, module, *args, **kwargs):
        tech = self.technique
        state = tech.current
        if state is None:  # called outside a transformer forward (e.g. a user probing one block)
            return self.fn_ref.original_forward(*args, **kwargs)
        carried = self._carried(args, kwargs)
        i = self.index
        if i == 0:
            state.front_in = carried
            if tech.config.policy == "step":
                tech.decide_step(state, module, args, kwargs)
        if state.skip and tech.skippable(state, i):
            out = tech.skipped_output(state, i, carried)
            tech.count(i, computed=False)
            return out[0] if len(out) == 1 else out
        if i == tech.mid_start:
            state.mid_in = carried
        if tech.per_block and i in tech.mid_range:
            state.block_in[i] = carried
        output = self.fn_ref.original_forward(*args, **kwargs)
        tech.count(i, computed=True)
        out = output if isinstance(output, tuple) else (output,)
        if i == tech.mid_start - 1 and tech.config.policy != "step":
            tech.decide_front(state, _sub(out, state.front_in))
        if tech.per_block and i in tech.mid_range:
            tech.record_block(state, i, out, state.block_in.pop(i))
        if i == tech.mid_end - 1 and not state.skip and not tech.per_block:
            tech.record_stack(state, out, state.mid_in)
            state.mid_in = None
        return output


# -- the technique -------------------------------------------------------------------------------------
@register_technique(CacheConfig)
class FeatureCache(Technique):
    name = "cache"

    def attach(self) -> None:
        import inspect

        cfg = self.config
        blocks = self.spec.blocks(self.model)
        n = len(blocks)
        self.whole_call = cfg.policy == "call"
        if cfg.compute_front + cfg.compute_back >= n:
            raise ValueError(
                f"CacheConfig.compute_front + compute_back = {cfg.compute_front + cfg.compute_back} leaves no block to "
                f"cache: the {self.role} has {n} blocks"
            )
        self.n_blocks = n
        self.mid_start = cfg.compute_front
        self.mid_end = n - cfg.compute_back
        self.mid_range = range(self.mid_start, self.mid_end)
        self.per_block = cfg.policy == "profiled"
        params = list(inspect.signature(type(blocks[0]).forward).parameters)[1:]
        carry_positions = {name: params.index(name) for name in self.spec.block_carries}
        self.timestep_position = list(inspect.signature(type(self.model).forward).parameters)[1:].index("timestep")
        self.current: _BranchState | None = None
        self._controller = _ControllerHook(self)
        HookRegistry.check_if_exists_or_initialize(self.model).register_hook(self._controller, _CONTROLLER_HOOK)
        for i, block in enumerate(blocks if not self.whole_call else ()):  # "call" skips whole calls
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                _BlockHook(self, i, carry_positions), _BLOCK_HOOK
            )
        self._warned_steps = False
        self.bypass = False
        self.cfg_active = cfg.cfg_interval > 0 and self.spec.cfg_style == "sequential"
        if cfg.cfg_interval and not self.cfg_active:
            logger.warning("CacheConfig.cfg_interval=%d has no effect on %s: its pipelines run both CFG branches in "
                           "one batched call (cfg_style=%r); only the per-call caching applies",
                           cfg.cfg_interval, type(self.model).__name__, self.spec.cfg_style)
        self.reset()

    def detach(self) -> None:
        HookRegistry.check_if_exists_or_initialize(self.model).remove_hook(_CONTROLLER_HOOK, recurse=False)
        for block in self.spec.blocks(self.model) if not self.whole_call else ():
            HookRegistry.check_if_exists_or_initialize(block).remove_hook(_BLOCK_HOOK, recurse=False)
        self.current = None

    def reset(self) -> None:
        self._controller.states.reset()
        self.current = None
        self.computed = [0] * self.n_blocks
        self.skipped = [0] * self.n_blocks
        self.steps: list[dict] = []
        self.profiles: dict[str, dict] = {}  # "profiled": per branch, the blocks chosen and why
        self.cond_residual: tuple | None = None  # (step, residual) of the cond branch's skippable span

    # -- bookkeeping --------------------------------------------------------------------------------
    @torch.compiler.disable
    def begin_call(self, states: _ContextStates, timestep) -> None:
        state = states.get_state()
        ctx = states.context
        t = float(timestep.flatten()[0].item()) if isinstance(timestep, torch.Tensor) else float(timestep or 0.0)
        if state.last_t is not None and t > state.last_t and ctx.step_index in (None, 0):
            state.reset()  # a new denoising run on a bare model (timesteps go down within a run)
        state.t = t
        state.step = ctx.step_index if ctx.step_index is not None else state.calls
        state.skip = False
        state.cfg_reuse = False
        state.indicator = None
        state.context_name = ctx.name
        state.total_steps = ctx.num_inference_steps or getattr(self.pipeline, "_num_timesteps", None) or \
            self.config.num_inference_steps
        if state.total_steps is not None and self.config.threshold > 0 and self.config.warmup_steps >= state.total_steps:
            raise ValueError(f"CacheConfig.warmup_steps={self.config.warmup_steps} is not allowed for a run of "
                             f"{state.total_steps} steps: it must be smaller than the number of steps")
        self.current = state

    @torch.compiler.disable
    def end_call(self) -> None:
        state = self.current
        if state is None:
            return
        if state.skip:
            state.consecutive_skips += 1
        else:
            state.consecutive_skips = 0
            state.acc = 0.0
        if state.context_name == "uncond" and self.cfg_active:
            state.cfg_since = state.cfg_since + 1 if state.cfg_reuse else 0
        self.steps.append({"step": state.step, "context": state.context_name, "t": state.t,
                           "computed": not state.skip, "cfg_reuse": state.cfg_reuse,
                           "indicator": None if state.indicator is None else round(state.indicator, 6)})
        state.calls += 1
        state.last_t = state.t
        self.current = None

    def count(self, i: int, computed: bool) -> None:
        if computed:
            self.computed[i] += 1
        else:
            self.skipped[i] += 1

    def _count_all(self, computed: bool) -> None:
        """``"call"``: a whole call computes or skips every block."""
        for i in range(self.n_blocks):
            self.count(i, computed)

    def skippable(self, state: _BranchState, i: int) -> bool:
        if i not in self.mid_range:
            return False
        return not self.per_block or i in (state.cached_blocks or ())

    def _guarded(self, state: _BranchState, skip_cap: bool = True) -> bool:
        """True when a guard forces this call to compute (``skip_cap=False``: all but the cap on consecutive
        skips, which ``cfg_interval`` replaces for CFG reuse and ``interval`` for the ``"call"`` policy)."""
        cfg = self.config
        if cfg.threshold <= 0 or state.calls < cfg.warmup_steps:
            return True
        if skip_cap and state.consecutive_skips >= cfg.max_consecutive_skips:
            return True
        total = state.total_steps
        if total is None:
            if not self._warned_steps and cfg.final_steps:
                logger.warning("CacheConfig: the number of denoising steps is unknown (no pipeline and no cache "
                               "context), so the final_steps guard is off; pass num_inference_steps=")
                self._warned_steps = True
            return False
        return state.step >= total - cfg.final_steps

    # -- decisions (one host sync each) ----------------------------------------------------------------
    @torch.compiler.disable
    def decide_front(self, state: _BranchState, front_res: tuple) -> None:
        """``"block"`` / ``"profiled"``: compare the front residual with the last computed call's."""
        if self.per_block and state.cached_blocks is None and state.calls >= self.config.warmup_steps:
            self._choose_cached_blocks(state)
        ready = state.stack.ready() if not self.per_block else bool(state.cached_blocks)
        if _same_shapes(state.ref_front, front_res) and ready:
            state.indicator = _rel_l1(front_res, state.ref_front)
            state.skip = not self._guarded(state) and state.indicator < self.config.threshold
        if not state.skip and self._cfg_reusable(state):
            state.skip = state.cfg_reuse = True
        if not state.skip:
            state.ref_front = tuple(r.detach() for r in front_res)

    @torch.compiler.disable
    def decide_step(self, state: _BranchState, block, args, kwargs) -> None:
        """``"step"``: accumulate the rescaled change of the first block's modulated input."""
        names = ("hidden_states", "encoder_hidden_states", "temb")
        params = dict(zip(names, args))
        params.update({k: v for k, v in kwargs.items() if k in names})
        with torch.no_grad():
            mod = self.spec.modulated_input(block, params["hidden_states"], params["encoder_hidden_states"],
                                            params["temb"])
        if state.prev_mod is not None and state.prev_mod.shape == mod.shape:
            d_in = _rel_l1((mod,), (state.prev_mod,))
            state.acc += d_in
            if state.ratio is not None and state.stack.ready():
                state.indicator = state.ratio * state.acc
                state.skip = not self._guarded(state) and state.indicator < self.config.threshold
        if not state.skip and self._cfg_reusable(state):
            state.skip = state.cfg_reuse = True
        state.prev_mod = mod.detach()

    @torch.compiler.disable
    def cached_call(self, state: _BranchState):
        """``"call"``: the cached / forecast output of this whole call, or None when it must compute."""
        if self._guarded(state, skip_cap=False) or not state.stack.ready():
            return None
        if state.consecutive_skips + 1 >= state.gap:
            return None
        state.skip = True
        sample = state.stack.predict(state.step)[0].clone()  # a caller may write into its output in place
        self._count_all(computed=False)
        return (sample,) if state.output_type is tuple else state.output_type(sample=sample)

    @torch.compiler.disable
    def record_call(self, state: _BranchState, output) -> None:
        """``"call"``: measure the error of the skip this computed call ends, choose the next gap, store."""
        cfg = self.config
        sample = (output[0] if isinstance(output, tuple) else output.sample).detach()
        state.output_type = tuple if isinstance(output, tuple) else type(output)
        self._count_all(computed=True)
        if len(state.stack.items) > cfg.forecast_order and _same_shapes(state.stack.items[-1][1], (sample,)):
            k = state.step - state.stack.items[-1][0]
            state.indicator = _rel_l1(state.stack.predict(state.step), (sample,))
            power = cfg.forecast_order + 1
            rate = state.indicator / max(k, 1) ** power
            gap = 1
            while gap < cfg.interval and rate * (gap + 1) ** power <= cfg.threshold:
                gap += 1
            state.gap = gap
        state.stack.push(state.step, (sample,))

    def _cfg_reusable(self, state: _BranchState) -> bool:
        """Uncond call of a sequential-CFG model: reuse the cond residual of this step plus the difference?"""
        if not self.cfg_active or state.context_name != "uncond" or state.cfg_delta is None:
            return False
        if self.cond_residual is None or self.cond_residual[0] != state.step:
            return False
        if not _same_shapes(state.cfg_delta, self.cond_residual[1]) or state.cfg_since + 1 >= self.config.cfg_interval:
            return False
        return not self._guarded(state, skip_cap=False)

    def _choose_cached_blocks(self, state: _BranchState) -> None:
        scores = {i: sum(v) / len(v) for i, v in state.block_change.items() if v}
        ranked = sorted(scores, key=scores.get)
        k = max(1, round(self.config.cache_ratio * len(self.mid_range)))
        state.cached_blocks = set(ranked[:k])
        self.profiles[state.context_name] = {"cached_blocks": sorted(state.cached_blocks),
                                             "block_stability": [(i, round(scores[i], 6)) for i in ranked]}
        for i in [i for i in state.blocks if i not in state.cached_blocks]:
            del state.blocks[i]  # volatile blocks always compute: their residuals are not needed

    # -- residuals ---------------------------------------------------------------------------------------
    def _forecasts(self) -> bool:
        return self.config.forecast_order > 0

    @torch.compiler.disable
    def record_stack(self, state: _BranchState, out: tuple, inp: tuple) -> None:
        out = tuple(o.detach() for o in out)
        residual = _sub(out, inp)
        if self.config.policy == "step" and state.stack_out_ref is not None and state.acc > 0 \
                and _same_shapes(state.stack_out_ref, residual):
            observed = _rel_l1(residual, state.stack_out_ref) / state.acc
            state.ratio = observed if state.ratio is None else 0.5 * (state.ratio + observed)
        state.stack_out_ref = residual
        state.stack.push(state.step, out if self._forecasts() else residual)
        self._note_cfg(state, residual)

    def _note_cfg(self, state: _BranchState, residual: tuple) -> None:
        """Keep the cond residual of this step; on a full uncond call, measure uncond − cond."""
        if not self.cfg_active:
            return
        if state.context_name == "cond":
            self.cond_residual = (state.step, residual)
        elif state.context_name == "uncond" and self.cond_residual is not None \
                and self.cond_residual[0] == state.step and _same_shapes(self.cond_residual[1], residual):
            state.cfg_delta = _sub(residual, self.cond_residual[1])

    @torch.compiler.disable
    def record_block(self, state: _BranchState, i: int, out: tuple, inp: tuple) -> None:
        out = tuple(o.detach() for o in out)
        residual = _sub(out, inp)
        history = state.blocks.setdefault(i, _History(self.config.forecast_order + 1))
        if state.cached_blocks is None:  # profiling: how much does this block's residual move per call?
            if state.block_last.get(i) is not None and _same_shapes(state.block_last[i], residual):
                state.block_change.setdefault(i, []).append(_rel_l1(residual, state.block_last[i]))
            state.block_last[i] = residual
        if state.cached_blocks is None or i in state.cached_blocks:
            history.push(state.step, out if self._forecasts() else residual)

    def _predicted_residual(self, history: _History, state: _BranchState, carried: tuple) -> tuple:
        prediction = history.predict(state.step)
        return _sub(prediction, carried) if self._forecasts() else prediction

    def skipped_output(self, state: _BranchState, i: int, carried: tuple) -> tuple:
        if self.per_block:
            return _add(carried, self._predicted_residual(state.blocks[i], state, carried))
        if i == self.mid_start:
            if state.cfg_reuse:
                return _add(carried, _add(self.cond_residual[1], state.cfg_delta))
            residual = self._predicted_residual(state.stack, state, carried)
            if self.cfg_active and state.context_name == "cond":
                self.cond_residual = (state.step, residual)
            return _add(carried, residual)
        return carried  # the whole span's residual was added at its first block

    # -- reporting ---------------------------------------------------------------------------------------
    def stats(self) -> dict:
        calls = len(self.steps)
        skipped_calls = sum(1 for s in self.steps if not s["computed"])
        total = sum(self.computed) + sum(self.skipped)
        out = {
            "policy": self.config.policy,
            "threshold": self.config.threshold,
            "calls": calls,
            "skipped_calls": skipped_calls,
            "cfg_reused_calls": sum(1 for s in self.steps if s.get("cfg_reuse")),
            "blocks_computed": sum(self.computed),
            "blocks_skipped": sum(self.skipped),
            "skip_ratio": (sum(self.skipped) / total) if total else 0.0,
            "per_block": {"computed": list(self.computed), "skipped": list(self.skipped)},
            "per_step": list(self.steps),
        }
        if self.per_block:
            out["cached_blocks"] = {name: p["cached_blocks"] for name, p in self.profiles.items()}
            out["block_stability"] = {name: p["block_stability"] for name, p in self.profiles.items()}
        return out

    def finish_run(self) -> None:
        calls = len(self.steps)
        if self.config.threshold > 0 and calls > 0 and sum(self.skipped) == 0:
            logger.warning(
                "CacheConfig(threshold=%g, policy=%r) skipped nothing in %d transformer calls of the %s: the "
                "threshold is below every observed change (largest needed: see vidaccel.stats()['cache'] per_step "
                "indicators); raise threshold to get a speed-up",
                self.config.threshold, self.config.policy, calls, self.role,
            )


@contextmanager
def bypass_cache(model):
    """Calls of ``model`` inside this block always compute, and the cache neither decides on them nor records
    them: for passes that are not denoising steps, e.g. the long-video pipeline's passes that write the KV cache
    (a skipped one would write nothing). A no-op when ``model`` has no feature cache."""
    registry = getattr(model, "_diffusers_hook", None)
    hook = registry.get_hook(_CONTROLLER_HOOK) if registry is not None else None
    if hook is None:
        yield
        return
    previous, hook.technique.bypass = hook.technique.bypass, True
    try:
        yield
    finally:
        hook.technique.bypass = previous


# -- presets -------------------------------------------------------------------------------------------
# Chosen from benchmarks/caching.py on the embedded shapes-t2v model (25 steps, 6 prompts, 2026-11-21, see
# benchmarks/RESULTS.md): whole-call caching on a fixed schedule was the fastest policy at every PSNR level.
# quality 1.74x at 41.2 dB, balanced 2.39x at 37.0 dB, fast 3.31x at 30.6 dB (denoising speed-up, PSNR; 21:11 run).
def _call_schedule(interval: int) -> CacheConfig:
    return CacheConfig(threshold=math.inf, policy="call", interval=interval, warmup_steps=3, final_steps=0)


register_preset("quality", lambda: [_call_schedule(2)],
                "feature caching, conservative (whole-call reuse on every 2nd call after 3 warm-up calls)")
register_preset("balanced", lambda: [_call_schedule(3)],
                "feature caching, balanced (whole-call reuse, 1 call in 3 computed after 3 warm-up calls)")
register_preset("fast", lambda: [_call_schedule(5)],
                "feature caching, aggressive (whole-call reuse, 1 call in 5 computed after 3 warm-up calls)")
