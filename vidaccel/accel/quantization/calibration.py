"""``format="mixed"`` calibration: how much each layer's input moves from one denoising step to the next."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Calibrator", "plan_from_volatility"]


class Calibrator:
    """Records, per layer and CFG slot, the per-channel input amax of each denoising step, and accumulates
    its relative change between consecutive steps (the layer's *volatility*)."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model = model
        self.names = names
        self.prev: dict[tuple[str, int], torch.Tensor] = {}
        self.change: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.step_key = None
        self.slot = -1
        self.steps = 0
        self.handles = []

    def attach(self):
        self.handles.append(self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True))
        for name in self.names:
            module = self.model.get_submodule(name)
            self.handles.append(module.register_forward_pre_hook(self._layer_hook(name)))

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _on_model_call(self, module, args, kwargs):
        t = kwargs.get("timestep")
        key = float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) and t.numel() else None
        if key is None or key != self.step_key:
            self.step_key = key
            self.slot = 0
            self.steps += 1
        else:
            self.slot += 1

    def _layer_hook(self, name):
        def hook(module, args):
            x = args[0].detach()
            amax = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            prev = self.prev.get((name, self.slot))
            if prev is not None and prev.shape == amax.shape:
                self.change[name].append((amax - prev).norm() / prev.norm().clamp_min(1e-12))
            self.prev[(name, self.slot)] = amax

        return hook

    def volatility(self) -> dict[str, float]:
        return {n: (float(torch.stack(c).mean()) if c else 0.0) for n, c in self.change.items()}


def plan_from_volatility(volatility: dict[str, float], fraction: float) -> dict[str, str]:
    ranked = sorted(volatility, key=lambda n: volatility[n], reverse=True)
    n_fp8 = int(round(fraction * len(ranked)))
    fp8 = set(ranked[:n_fp8])
    return {n: ("fp8" if n in fp8 else "nvfp4") for n in volatility}

