"""The caching hooks and :class:`CacheTechnique` (see :mod:`vidaccel.accel.caching` for the policies)."""

from __future__ import annotations

import inspect
import logging
import math
from contextlib import contextmanager

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ...core.context_parallel import cp_group, keep_split_hooks_outermost
from ...core.technique import Technique, register_technique
from .config import CacheConfig, RunSettings, run_settings
from .state import BranchState, ContextStates, History, add_all, rel_l1, same_shapes, sub_all

logger = logging.getLogger(__name__)

__all__ = ["CacheTechnique", "bypass_cache"]

_CONTROLLER_HOOK = "vidaccel_cache_controller"
_BLOCK_HOOK = "vidaccel_cache_block"


# -- hooks -------------------------------------------------------------------------------------------
class _ControllerHook(ModelHook):
    """On the transformer: picks the branch state for this call and reads the timestep."""

    _is_stateful = True

    def __init__(self, technique: "CacheTechnique"):
        super().__init__()
        self.technique = technique
        self.states = ContextStates(BranchState, (technique.config.forecast_order,))

    def pre_forward(self, module, *args, **kwargs):
        if self.technique.bypass:  # inside bypass_cache: no state, no decision, no record
            return args, kwargs
        self.technique.begin_call(self.states, self.technique.call_timestep, self.technique.call_input_shape)
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

    def __init__(self, technique: "CacheTechnique", index: int, carry_positions: dict[str, int]):
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
            tech.decide_front(state, sub_all(out, state.front_in))
        if tech.per_block and i in tech.mid_range:
            tech.record_block(state, i, out, state.block_in.pop(i))
        if i == tech.mid_end - 1 and not state.skip and not tech.per_block:
            tech.record_stack(state, out, state.mid_in)
            state.mid_in = None
        return output


# -- the technique -------------------------------------------------------------------------------------
@register_technique(CacheConfig)
class CacheTechnique(Technique):
    name = "cache"

    @classmethod
    def noop_config(cls) -> CacheConfig:
        # whole-call policy: fits any model, a single-block one included (block policies need a block to skip)
        return CacheConfig(threshold=0.0, policy="call")

    @classmethod
    def example_config(cls) -> CacheConfig:
        # a fixed whole-call schedule acts on any model, random weights included
        return CacheConfig(threshold=float("inf"), policy="call", interval=2, warmup_steps=2, final_steps=0)

    def attach(self) -> None:
        cfg = self.config
        blocks = self.family.blocks(self.model)
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
        carry_positions = {name: params.index(name) for name in self.family.block_carries}
        self.timestep_position = list(inspect.signature(type(self.model).forward).parameters)[1:].index("timestep")
        self.current: BranchState | None = None
        self._controller = _ControllerHook(self)
        HookRegistry.check_if_exists_or_initialize(self.model).register_hook(self._controller, _CONTROLLER_HOOK)
        # the timestep (and the latent's shape) as the caller passed it: a torch pre-hook runs before every diffusers hook, so it sees
        # Wan 2.2 TI2V's per-token timestep whole even where context parallelism splits it
        self.call_timestep = None
        self.call_input_shape = None
        self._timestep_handle = self.model.register_forward_pre_hook(self._capture_timestep, with_kwargs=True)
        for i, block in enumerate(blocks if not self.whole_call else ()):  # "call" skips whole calls
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                _BlockHook(self, i, carry_positions), _BLOCK_HOOK
            )
            # under context parallelism the block hooks work on this rank's shard: inside diffusers' split
            keep_split_hooks_outermost(block)
        self._warned_steps = False
        self.bypass = False
        self.cfg_active = cfg.cfg_interval > 0 and self.family.cfg_style == "sequential"
        if cfg.cfg_interval and not self.cfg_active:
            logger.warning("CacheConfig.cfg_interval=%d has no effect on %s: its pipelines run both CFG branches in "
                           "one batched call (cfg_style=%r); only the per-call caching applies",
                           cfg.cfg_interval, type(self.model).__name__, self.family.cfg_style)
        self.reset()

    def _capture_timestep(self, module, args, kwargs):
        pos = self.timestep_position
        self.call_timestep = kwargs.get("timestep", args[pos] if len(args) > pos else None)
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        self.call_input_shape = getattr(hidden_states, "shape", None)

    def _group(self):
        """Ranks sharing this model's sequence (context parallelism): every indicator is summed over them."""
        return cp_group(self.model)

    def detach(self) -> None:
        self._timestep_handle.remove()
        HookRegistry.check_if_exists_or_initialize(self.model).remove_hook(_CONTROLLER_HOOK, recurse=False)
        for block in self.family.blocks(self.model) if not self.whole_call else ():
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
        self._runs: dict[int | None, RunSettings] = {}
        self._warned_run = False
        self.run = run_settings(self.config, None)

    # -- bookkeeping --------------------------------------------------------------------------------
    @torch.compiler.disable
    def begin_call(self, states: ContextStates, timestep, input_shape=None) -> None:
        state = states.get_state()
        ctx = states.context
        t = float(timestep.flatten()[0].item()) if isinstance(timestep, torch.Tensor) else float(timestep or 0.0)
        if state.last_t is not None and t > state.last_t and ctx.step_index in (None, 0):
            state.reset()  # a new denoising run on a bare model (timesteps go down within a run)
        if input_shape is not None and state.input_shape is not None and tuple(input_shape) != state.input_shape:
            state.forget_tensors()  # frames merged or split back (FrameMergeConfig): nothing stored fits this call
        state.input_shape = None if input_shape is None else tuple(input_shape)
        state.t = t
        state.step = ctx.step_index if ctx.step_index is not None else state.calls
        state.skip = False
        state.cfg_reuse = False
        state.indicator = None
        state.context_name = ctx.name
        state.total_steps = ctx.num_inference_steps or getattr(self.pipeline, "_num_timesteps", None) or \
            self.config.num_inference_steps
        self.run = self._run_settings(state.total_steps)
        self.current = state

    def _run_settings(self, total_steps: int | None) -> RunSettings:
        run = self._runs.get(total_steps)
        if run is None:
            run = self._runs[total_steps] = run_settings(self.config, total_steps)
            # one warning per pipeline call (the high-noise expert speaks for both Wan 2.2 experts)
            if run.note is not None and not self._warned_run and self.role == "transformer":
                logger.warning("CacheConfig(policy=%r): %s", self.config.policy, run.note)
            self._warned_run = self._warned_run or run.note is not None
        return run

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

    def skippable(self, state: BranchState, i: int) -> bool:
        if i not in self.mid_range:
            return False
        return not self.per_block or i in (state.cached_blocks or ())

    def _guarded(self, state: BranchState, skip_cap: bool = True) -> bool:
        """True when a guard forces this call to compute (``skip_cap=False``: all but the cap on consecutive
        skips, which ``cfg_interval`` replaces for CFG reuse and ``interval`` for the ``"call"`` policy)."""
        cfg = self.config
        if cfg.threshold <= 0 or self.run.off or state.calls < self.run.warmup_steps:
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
    def decide_front(self, state: BranchState, front_res: tuple) -> None:
        """``"block"`` / ``"profiled"``: compare the front residual with the last computed call's."""
        if self.per_block and state.cached_blocks is None and state.calls >= self.run.warmup_steps:
            self._choose_cached_blocks(state)
        ready = state.stack.ready() if not self.per_block else bool(state.cached_blocks)
        if same_shapes(state.ref_front, front_res) and ready:
            state.indicator = rel_l1(front_res, state.ref_front, self._group())
            state.skip = not self._guarded(state) and state.indicator < self.config.threshold
        if not state.skip and self._cfg_reusable(state):
            state.skip = state.cfg_reuse = True
        if not state.skip:
            state.ref_front = tuple(r.detach() for r in front_res)

    @torch.compiler.disable
    def decide_step(self, state: BranchState, block, args, kwargs) -> None:
        """``"step"``: accumulate the rescaled change of the first block's modulated input."""
        names = ("hidden_states", "encoder_hidden_states", "temb")
        params = dict(zip(names, args))
        params.update({k: v for k, v in kwargs.items() if k in names})
        with torch.no_grad():
            mod = self.family.modulated_input(block, params["hidden_states"], params["encoder_hidden_states"],
                                            params["temb"])
        if state.prev_mod is not None and state.prev_mod.shape == mod.shape:
            d_in = rel_l1((mod,), (state.prev_mod,), self._group())
            state.acc += d_in
            if state.ratio is not None and state.stack.ready():
                state.indicator = state.ratio * state.acc
                state.skip = not self._guarded(state) and state.indicator < self.config.threshold
        if not state.skip and self._cfg_reusable(state):
            state.skip = state.cfg_reuse = True
        state.prev_mod = mod.detach()

    @torch.compiler.disable
    def cached_call(self, state: BranchState):
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
    def record_call(self, state: BranchState, output) -> None:
        """``"call"``: measure the error of the skip this computed call ends, choose the next gap, store."""
        cfg = self.config
        sample = (output[0] if isinstance(output, tuple) else output.sample).detach()
        state.output_type = tuple if isinstance(output, tuple) else type(output)
        self._count_all(computed=True)
        state.computed_calls += 1
        if len(state.stack.items) > cfg.forecast_order and same_shapes(state.stack.items[-1][1], (sample,)):
            k = state.step - state.stack.items[-1][0]
            state.indicator = rel_l1(state.stack.predict(state.step), (sample,), self._group())
            power = cfg.forecast_order + 1
            rate = state.indicator / max(k, 1) ** power
            state.gap = self._next_gap(rate, power, state)
        state.stack.push(state.step, (sample,))

    def _next_gap(self, rate: float, power: int, state: BranchState) -> int:
        """Largest gap ``g <= interval`` (grown by ``interval_growth`` per computed call past the warm-up; no
        further than the run's last step) with ``rate * (g+1)^power`` within the threshold; at least 1."""
        limit = self.run.interval
        if self.run.interval_growth:
            grown = max(0, state.computed_calls - self.run.warmup_steps)
            limit = math.floor(limit + self.run.interval_growth * grown + 0.5)
        if state.total_steps:
            limit = max(1, min(limit, state.total_steps - state.step))
        if limit <= 1024:
            gap = 1
            while gap < limit and rate * (gap + 1) ** power <= self.config.threshold:
                gap += 1
            return gap
        if rate <= 0 or math.isinf(self.config.threshold):  # huge interval on a bare model: solve, don't count
            return limit
        return int(max(1, min(limit, math.floor((self.config.threshold / rate) ** (1 / power)) - 1)))

    def _cfg_reusable(self, state: BranchState) -> bool:
        """Uncond call of a sequential-CFG model: reuse the cond residual of this step plus the difference?"""
        if not self.cfg_active or state.context_name != "uncond" or state.cfg_delta is None:
            return False
        if self.cond_residual is None or self.cond_residual[0] != state.step:
            return False
        if not same_shapes(state.cfg_delta, self.cond_residual[1]) or state.cfg_since + 1 >= self.config.cfg_interval:
            return False
        return not self._guarded(state, skip_cap=False)

    def _choose_cached_blocks(self, state: BranchState) -> None:
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
    def record_stack(self, state: BranchState, out: tuple, inp: tuple) -> None:
        out = tuple(o.detach() for o in out)
        residual = sub_all(out, inp)
        if self.config.policy == "step" and state.stack_out_ref is not None and state.acc > 0 \
                and same_shapes(state.stack_out_ref, residual):
            observed = rel_l1(residual, state.stack_out_ref, self._group()) / state.acc
            state.ratio = observed if state.ratio is None else 0.5 * (state.ratio + observed)
        state.stack_out_ref = residual
        state.stack.push(state.step, out if self._forecasts() else residual)
        self._note_cfg(state, residual)

    def _note_cfg(self, state: BranchState, residual: tuple) -> None:
        """Keep the cond residual of this step; on a full uncond call, measure uncond − cond."""
        if not self.cfg_active:
            return
        if state.context_name == "cond":
            self.cond_residual = (state.step, residual)
        elif state.context_name == "uncond" and self.cond_residual is not None \
                and self.cond_residual[0] == state.step and same_shapes(self.cond_residual[1], residual):
            state.cfg_delta = sub_all(residual, self.cond_residual[1])

    @torch.compiler.disable
    def record_block(self, state: BranchState, i: int, out: tuple, inp: tuple) -> None:
        out = tuple(o.detach() for o in out)
        residual = sub_all(out, inp)
        history = state.blocks.setdefault(i, History(self.config.forecast_order + 1))
        if state.cached_blocks is None:  # profiling: how much does this block's residual move per call?
            if state.block_last.get(i) is not None and same_shapes(state.block_last[i], residual):
                state.block_change.setdefault(i, []).append(rel_l1(residual, state.block_last[i], self._group()))
            state.block_last[i] = residual
        if state.cached_blocks is None or i in state.cached_blocks:
            history.push(state.step, out if self._forecasts() else residual)

    def _predicted_residual(self, history: History, state: BranchState, carried: tuple) -> tuple:
        prediction = history.predict(state.step)
        return sub_all(prediction, carried) if self._forecasts() else prediction

    def skipped_output(self, state: BranchState, i: int, carried: tuple) -> tuple:
        if self.per_block:
            return add_all(carried, self._predicted_residual(state.blocks[i], state, carried))
        if i == self.mid_start:
            if state.cfg_reuse:
                return add_all(carried, add_all(self.cond_residual[1], state.cfg_delta))
            residual = self._predicted_residual(state.stack, state, carried)
            if self.cfg_active and state.context_name == "cond":
                self.cond_residual = (state.step, residual)
            return add_all(carried, residual)
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
        if self.config.threshold > 0 and calls > 0 and sum(self.skipped) == 0 and not self._warned_run:
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

