"""What one CFG branch of one transformer remembers between its calls, and the tensor helpers the policies share."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks.hooks import CacheContext, StateManager

from ...core.context_parallel import all_reduce_sum

__all__ = ["History", "BranchState", "ContextStates", "rel_l1", "sub_all", "add_all", "same_shapes"]

_DEFAULT_CONTEXT = "default"

# -- per-branch state --------------------------------------------------------------------------------
@dataclass
class History:
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


class BranchState:
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
        self.input_shape: tuple | None = None   # latent shape of the last call
        self.forget_tensors()
        self.cached_blocks: set[int] | None = None
        self.cfg_since = 0                      # uncond calls since the last full one
        self.gap = 1                            # "call": calls from the last computed one to the next
        self.computed_calls = 0                 # "call": computed calls of this run (interval_growth)
        self.output_type: Any = tuple           # "call": how the transformer returns its output

    def forget_tensors(self) -> None:
        """Drop every stored tensor, keeping the counters: for a call whose latent has another shape than the
        last one (frames merged or split back), whose residuals and outputs cannot be reused."""
        self.front_in: tuple | None = None
        self.mid_in: tuple | None = None
        self.ref_front: tuple | None = None     # front residual at the last computed call
        self.prev_mod: torch.Tensor | None = None  # "step": modulated input of the previous call
        self.acc = 0.0                          # "step": accumulated input change since last compute
        self.ratio: float | None = None         # "step": online Δoutput/ΣΔinput
        self.stack_out_ref: tuple | None = None  # "step": skippable-stack residual at last compute
        self.stack = History(self.forecast_order + 1)  # residual of the whole skippable span
        self.blocks: dict[int, History] = {}   # "profiled": per-block residuals
        self.block_in: dict[int, tuple] = {}
        self.block_change: dict[int, list[float]] = {}
        self.block_last: dict[int, tuple] = {}  # "profiled": last residual of each block, while profiling
        self.cfg_reuse = False                  # this call reuses the cond residual (+ difference)
        self.cfg_delta: tuple | None = None     # uncond − cond stack residual at the last full uncond call


class ContextStates(StateManager):
    """diffusers' per-context state map, with a default context instead of the "No cache context" error."""

    @property
    def context(self) -> CacheContext:
        return self._context if self._context is not None else CacheContext(_DEFAULT_CONTEXT)


def rel_l1(new: tuple, old: tuple, group=None) -> float:
    """``Σ mean|new - old| / Σ mean|old|`` over the tensors of ``new`` / ``old``.

    With ``group`` (the ranks sharing a sequence under context parallelism, each holding a slice of every
    tensor) the sums and element counts are added over the ranks first: every rank gets the same value, the
    one a single process computes on the whole tensors (up to summation order), and so takes the same decision.
    """
    if group is None:
        num = sum((a.float() - b.float()).abs().mean() for a, b in zip(new, old))
        den = sum(b.float().abs().mean() for b in old)
        return float(num / (den + 1e-12))
    rows = [torch.stack([(a.float() - b.float()).abs().sum().double(), b.float().abs().sum().double(),
                         torch.tensor(float(b.numel()), dtype=torch.float64, device=b.device)])
            for a, b in zip(new, old)]
    sums = all_reduce_sum(torch.stack(rows), group).cpu()
    num = sum(float(r[0] / r[2]) for r in sums)
    den = sum(float(r[1] / r[2]) for r in sums)
    return float(num / (den + 1e-12))


def sub_all(a: tuple, b: tuple) -> tuple:
    return tuple(x - y for x, y in zip(a, b))


def add_all(a: tuple, b: tuple) -> tuple:
    return tuple(x + y.to(x.dtype) for x, y in zip(a, b))


def same_shapes(a: tuple | None, b: tuple) -> bool:
    return a is not None and len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))

