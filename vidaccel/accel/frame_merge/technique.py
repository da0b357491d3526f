"""The frame-merging hooks and :class:`FrameMergeTechnique` (see :mod:`vidaccel.accel.frame_merge`)."""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass

import torch

from ...core.steps import StepTracker
from ...core.technique import Technique, attached, register_technique
from ...families import pipeline_transformers
from .config import FrameMergeConfig

logger = logging.getLogger(__name__)

__all__ = ["FrameMergeTechnique", "merge_groups", "Prediction"]


# -- what the model predicts ------------------------------------------------------------------------
class Prediction:
    """The scheduler's parameterization of the model output, at one step.

    ``x0(x_t, out)`` is the predicted clean latent; ``gain`` is ∂out/∂x_t at a fixed clean latent: a frame whose
    clean latent is its group's, but whose noisy latent differs from the group's anchor by ``d``, has the output
    ``out_anchor + gain · d`` (flow matching: ``v = (x_t − x0) / σ``, gain ``1/σ``; v-prediction:
    ``v = √ᾱ/√(1−ᾱ) · x_t − x0/√(1−ᾱ)``; ε-prediction: ``ε = (x_t − √ᾱ·x0)/√(1−ᾱ)``).
    """

    def __init__(self, scheduler, step: int, timestep):
        config = getattr(scheduler, "config", {})
        kind = config.get("prediction_type")
        alphas = getattr(scheduler, "alphas_cumprod", None)
        sigmas = getattr(scheduler, "sigmas", None)
        if kind == "flow_prediction" or (kind is None and alphas is None and isinstance(sigmas, torch.Tensor)):
            self.kind = "flow"
            self.sigma = float(sigmas[step]) if isinstance(sigmas, torch.Tensor) and step < len(sigmas) else \
                float(_scalar(timestep)) / config.get("num_train_timesteps", 1000)
            self.gain = 1.0 / max(self.sigma, 1e-6)
        elif kind in ("v_prediction", "epsilon") and isinstance(alphas, torch.Tensor):
            self.kind = kind
            t = int(round(_scalar(timestep)))
            a = float(alphas[min(max(t, 0), len(alphas) - 1)])
            self.sqrt_a, self.sqrt_1ma = math.sqrt(a), math.sqrt(max(1.0 - a, 1e-12))
            self.gain = self.sqrt_a / self.sqrt_1ma if kind == "v_prediction" else 1.0 / self.sqrt_1ma
        else:
            raise ValueError(f"FrameMergeConfig needs a flow-matching, v-prediction or epsilon-prediction scheduler; "
                             f"{type(scheduler).__name__} (prediction_type={kind!r}) is none of them")

    def x0(self, x_t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.kind == "flow":
            return x_t - self.sigma * out
        if self.kind == "v_prediction":
            return self.sqrt_a * x_t - self.sqrt_1ma * out
        return (x_t - self.sqrt_1ma * out) / self.sqrt_a


def _scalar(timestep) -> float:
    return float(timestep.detach().float().flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)


# -- the merge plan ------------------------------------------------------------------------------------
def merge_groups(distance: torch.Tensor, threshold: float, max_group: int, keep_first: bool) -> list[list[int]]:
    """Consecutive groups of token frames, left to right: a group grows while it has fewer than ``max_group``
    frames and the next frame is closer than ``threshold`` to every frame in it (``distance [T, T]``)."""
    total = distance.shape[0]
    groups: list[list[int]] = []
    start = 0
    if keep_first and total:
        groups.append([0])
        start = 1
    while start < total:
        group = [start]
        nxt = start + 1
        while nxt < total and len(group) < max_group and all(float(distance[i, nxt]) < threshold for i in group):
            group.append(nxt)
            nxt += 1
        groups.append(group)
        start = nxt
    return groups


@dataclass
class _Plan:
    """The merge plan of one pipeline call, shared by the experts of a Wan 2.2 pipeline."""

    distance: torch.Tensor | None = None   # [T, T] token-frame motion, at the last full-rate step
    distance_step: int | None = None
    groups: list[list[int]] | None = None

    def reset(self) -> None:
        self.distance = self.distance_step = self.groups = None


@dataclass
class _Call:
    """What the forward hook needs of the call the pre-hook merged (or measured)."""

    x_t: torch.Tensor                    # the noisy latent of the full grid (with any conditioning channels)
    prediction: Prediction
    step: int
    source: torch.Tensor | None = None   # per full latent frame: its frame in the merged latent
    anchor: torch.Tensor | None = None   # per full latent frame: its group anchor's latent frame
    measure: bool = False


# -- the technique ---------------------------------------------------------------------------------------
@register_technique(FrameMergeConfig)
class FrameMergeTechnique(Technique):
    name = "frame_merge"
    needs_pipeline = True

    @classmethod
    def noop_config(cls) -> FrameMergeConfig:
        return FrameMergeConfig(threshold=0.0)

    @classmethod
    def example_config(cls) -> FrameMergeConfig:
        # merges every pair of token frames in the middle steps: acts on any model, random weights included
        return FrameMergeConfig(threshold=math.inf, max_group=2, merge_at=0.2, split_at=0.8, keep_first=False)

    def attach(self) -> None:
        if self.pipeline is None:
            raise ValueError("FrameMergeConfig needs a pipeline, not a bare transformer: its scheduler gives each "
                             "step's noise level, which splitting merged frames back depends on")
        Prediction(self.pipeline.scheduler, 0, 0)  # raises for a scheduler whose parameterization is unknown
        self._forward_params = list(inspect.signature(type(self.model).forward).parameters)[1:]
        self.frame_axis = self.family.latent_axes[0]
        self.channel_axis = ({1, 2, 3, 4} - set(self.family.latent_axes)).pop()
        self.patch_t = self.family.patch_size(self.model)[0]
        self.plan = self._shared_plan()
        self._steps = StepTracker(self.pipeline)
        self._chosen: tuple[torch.Tensor, int] | None = None
        self.reset()
        self._handles = self.family.frame_position_hooks(self.model, lambda: self._chosen)
        # prepend: merge before any other technique's pre-hook sees the latent (sliding windows read its grid),
        # and split back before any other forward hook sees the output
        self._handles += [
            self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True, prepend=True),
            self.model.register_forward_hook(self._post_forward, prepend=True),
        ]

    @classmethod
    def parallel_refusal(cls, config, *, ring: int, ulysses: int, techniques) -> str | None:
        if config.threshold <= 0:
            return None  # merges nothing
        return (f"merged steps change the token count by whole frames, chosen from the video's motion during the "
                f"run, so the merged sequence need not divide by the {ring * ulysses} ranks (and its position "
                f"hooks give whole-sequence tables where diffusers has split them per rank); use frame "
                f"merging on one GPU, or threshold=0")

    def _shared_plan(self) -> _Plan:
        for _, model in pipeline_transformers(self.pipeline):
            other = attached(model).get(self.name)
            if other is not None and other is not self:
                return other.plan
        return _Plan()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.reset()

    def reset(self) -> None:
        self.plan.reset()
        self._steps.reset()
        self._calls: list[_Call | None] = []   # one entry per call in flight (nested calls are left alone)
        self._chosen = None
        self.merged_calls = 0
        self.full_calls = 0
        self.token_frames: int | None = None
        self.window: tuple[int, int] | None = None

    # -- per transformer call ---------------------------------------------------------------------------
    def _arg(self, name, args, kwargs):
        if name in kwargs:
            return kwargs[name]
        pos = self._forward_params.index(name)
        return args[pos] if pos < len(args) else None

    def _steps_window(self, total: int) -> tuple[int, int]:
        start = max(1, round(self.config.merge_at * total))
        return start, max(start, round(self.config.split_at * total))

    def _pre_forward(self, module, args, kwargs):
        if self._calls:  # a call inside a call (a technique's extra branch): left alone
            self._calls.append(None)
            return None
        self._calls.append(None)
        hidden_states = self._arg("hidden_states", args, kwargs)
        timestep = self._arg("timestep", args, kwargs)
        if isinstance(timestep, torch.Tensor) and timestep.ndim > 1:
            raise ValueError("FrameMergeConfig does not support per-token timesteps (Wan 2.2 TI2V)")
        step = self._steps.step(timestep)
        total_steps = self._steps.total() or 0
        start, stop = self.window = self._steps_window(total_steps)
        frames = hidden_states.shape[self.frame_axis]
        if frames % self.patch_t:
            raise ValueError(f"the latent has {frames} frames, not a multiple of the temporal patch {self.patch_t}")
        self.token_frames = frames // self.patch_t
        if step < start - 1 or step >= stop or self.config.threshold <= 0:
            self.full_calls += 1
            return None
        prediction = Prediction(self.pipeline.scheduler, step, timestep)
        if step == start - 1:  # the last full-rate step: measure the motion on its prediction
            self.full_calls += 1
            self._calls[-1] = _Call(hidden_states, prediction, step, measure=True)
            return None
        groups = self._groups()
        if len(groups) == self.token_frames:
            self.full_calls += 1
            return None
        self.merged_calls += 1
        call = _Call(hidden_states, prediction, step)
        anchors = [g[(len(g) - 1) // 2] for g in groups]
        kept = torch.tensor([a * self.patch_t + o for a in anchors for o in range(self.patch_t)])
        source, anchor = [], []
        for gi, (g, a) in enumerate(zip(groups, anchors)):
            for _ in g:
                source += [gi * self.patch_t + o for o in range(self.patch_t)]
                anchor += [a * self.patch_t + o for o in range(self.patch_t)]
        device = hidden_states.device
        call.source, call.anchor = torch.tensor(source, device=device), torch.tensor(anchor, device=device)
        self._calls[-1] = call
        self._chosen = (torch.tensor(anchors), self.token_frames)
        merged = hidden_states.index_select(self.frame_axis, kept.to(device))
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": merged}
        return (merged,) + tuple(args[1:]), kwargs

    def _groups(self) -> list[list[int]]:
        plan = self.plan
        if plan.groups is None:
            if plan.distance is None or plan.distance.shape[0] != self.token_frames:
                logger.warning("FrameMergeConfig: no full-rate prediction to measure motion on before step %s; "
                               "frames stay unmerged", self.window[0])
                plan.groups = [[i] for i in range(self.token_frames)]
            else:
                cfg = self.config
                plan.groups = merge_groups(plan.distance, cfg.threshold, cfg.max_group, cfg.keep_first)
        return plan.groups

    def _post_forward(self, module, args, output):
        call = self._calls.pop() if self._calls else None
        if self._calls or call is None:
            return None
        self._chosen = None
        sample = output[0] if isinstance(output, tuple) else output.sample
        x_t = call.x_t.narrow(self.channel_axis, 0, sample.shape[self.channel_axis]).float()
        if call.measure:
            self._measure(call, x_t, sample)
            return None
        ax = self.frame_axis
        full = sample.float().index_select(ax, call.source)
        full = full + call.prediction.gain * (x_t - x_t.index_select(ax, call.anchor))
        full = full.to(sample.dtype)
        if isinstance(output, tuple):
            return (full,) + tuple(output[1:])
        output.sample = full
        return output

    @torch.no_grad()
    def _measure(self, call: _Call, x_t: torch.Tensor, sample: torch.Tensor) -> None:
        """Token-frame motion of this call's predicted clean latent; the largest over the step's calls."""
        x0 = call.prediction.x0(x_t, sample.float())
        frames = x0.movedim(self.frame_axis, 1)  # [B, F, ...]
        frames = frames.reshape(frames.shape[0], self.token_frames, -1)  # [B, T, patch_t · C · h · w]
        scale = frames.abs().mean(dim=(1, 2)).clamp_min(1e-12)  # [B]
        distance = torch.cdist(frames, frames, p=1) / frames.shape[-1] / scale[:, None, None]
        distance = distance.amax(dim=0).cpu()
        plan = self.plan
        if plan.distance_step == call.step and plan.distance is not None and plan.distance.shape == distance.shape:
            distance = torch.maximum(plan.distance, distance)
        plan.distance, plan.distance_step, plan.groups = distance, call.step, None

    # -- reporting -----------------------------------------------------------------------------------------
    def stats(self) -> dict:
        groups = self.plan.groups
        merged = len(groups) if groups is not None else self.token_frames
        return {
            "token_frames": self.token_frames,
            "merged_token_frames": merged,
            "groups": groups,
            "merged_steps": list(self.window) if self.window else None,
            "merged_calls": self.merged_calls,
            "full_calls": self.full_calls,
            "motion": None if self.plan.distance is None else
            [round(float(self.plan.distance[i, i + 1]), 6) for i in range(self.plan.distance.shape[0] - 1)],
        }

    def finish_run(self) -> None:
        if self.config.threshold > 0 and self.full_calls and not self.merged_calls:
            logger.warning("FrameMergeConfig(threshold=%g, max_group=%d) merged no frames in the %d calls of the %s "
                           "(adjacent token-frame motion: %s)", self.config.threshold, self.config.max_group,
                           self.full_calls, self.role, self.stats()["motion"])
