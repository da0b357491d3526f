"""Feature maps φ for linear attention: fixed (``"elu"``, ``"relu"``) and learnable (Hedgehog).

Hedgehog (Zhang et al. 2024, https://arxiv.org/abs/2402.04347): a per-head linear map followed by a
softmax over features of ``[y, -y]``, ``y = x W_h + b_h``; ``F = 2D`` features, all positive and summing to
2 per token. ``W`` starts as ``D^-1/4 · I`` (so ``φ(q)·φ(k)`` grows with ``q·k/√D`` like softmax's kernel, a
spiky, positive, monotone similarity) and distillation (:func:`vidaccel.linearize`) fits the rest.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import backend_names

__all__ = ["HedgehogFeatureMap", "FEATURE_MAP_NAMES", "feature_dim"]

#: Names accepted by :class:`vidaccel.LinearAttentionConfig` (``feature_map=``).
FEATURE_MAP_NAMES = backend_names.LINEAR_ATTENTION_FEATURE_MAPS


def feature_dim(name: str, head_dim: int) -> int:
    """Number of features ``F`` a named map gives for head dim ``D``."""
    return 2 * head_dim if name == "hedgehog" else head_dim


class HedgehogFeatureMap(nn.Module):
    """Learnable per-head feature map ``[B, L, H, D] → [B, L, H, 2D]`` (fp32 out).

    Args:
        heads: number of attention heads ``H``.
        head_dim: head dim ``D``.
    """

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.weight = nn.Parameter(torch.eye(head_dim).repeat(heads, 1, 1) * head_dim**-0.25)
        self.bias = nn.Parameter(torch.zeros(heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.heads, self.head_dim):
            raise ValueError(f"HedgehogFeatureMap(heads={self.heads}, head_dim={self.head_dim}) got input of shape "
                             f"{tuple(x.shape)}; expected [B, L, {self.heads}, {self.head_dim}]")
        y = torch.einsum("blhd,hde->blhe", x.float(), self.weight.float()) + self.bias.float()
        return torch.cat([y.softmax(-1), (-y).softmax(-1)], dim=-1)
