"""The spec of linear attention: plain fp32 torch, loops allowed. Every other backend is tested against it.

Shapes (diffusers' layout): features ``q, k: [B, L, H, F]`` (already passed through a feature map φ),
values ``v: [B, L, H, D]``. ``F`` may differ from ``D`` (Hedgehog maps ``D`` to ``2D`` features).

Bidirectional (Katharopoulos et al. 2020, https://arxiv.org/abs/2006.16236)::

    S = Σ_l φ(k_l)ᵀ v_l  ∈ R^{F×D},   z = Σ_l φ_d(k_l) ∈ R^F
    out_i = φ(q_i) S / (φ_d(q_i) · z + eps)

Block-causal over chunks (SANA-Video, https://arxiv.org/abs/2509.24695): the sequence is cut into chunks of
``chunk`` tokens (the last one may be shorter); a query in chunk ``c`` sees every key of chunks ``0..c`` (its
own chunk bidirectionally), through a constant-size running state ``(S, z)``.

Numerator and denominator may use different features (``q_den``, ``k_den``): that is how RoPE is applied
to the numerator only (rotated features there, the plain non-negative ones in the denominator), which
keeps the denominator positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["FIXED_FEATURE_MAPS", "linear_attention_naive", "elu_feature_map", "relu_feature_map",
           "softmax_attention_naive"]


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = elu(x) + 1 (> 0); ``F = D``."""
    return F.elu(x.float()) + 1.0


def relu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = relu(x) (≥ 0); ``F = D``."""
    return F.relu(x.float())


#: Fixed (parameter-free) feature maps by name.
FIXED_FEATURE_MAPS = {"elu": elu_feature_map, "relu": relu_feature_map}


def linear_attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                           chunk: int | None = None, q_den: torch.Tensor | None = None,
                           k_den: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention on features; returns ``[B, L, H, D]`` in ``v``'s dtype (fp32 inside).

    Args:
        q, k: numerator features ``[B, L, H, F]``.
        v: values ``[B, L, H, D]``.
        causal: block-causal over chunks of ``chunk`` tokens (required then).
        q_den, k_den: denominator features (default: ``q``, ``k``), non-negative.
        eps: added to the denominator.
    """
    qn, kn, vf = q.float(), k.float(), v.float()
    qd = qn if q_den is None else q_den.float()
    kd = kn if k_den is None else k_den.float()
    L = q.shape[1]
    if not causal:
        chunk = L
    out = torch.empty_like(vf)
    S = torch.zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3], dtype=torch.float32, device=q.device)
    z = torch.zeros(q.shape[0], q.shape[2], q.shape[3], dtype=torch.float32, device=q.device)
    for start in range(0, L, chunk):
        sl = slice(start, min(start + chunk, L))
        S = S + torch.einsum("blhf,blhd->bhfd", kn[:, sl], vf[:, sl])
        z = z + kd[:, sl].sum(1)
        num = torch.einsum("blhf,bhfd->blhd", qn[:, sl], S)
        den = torch.einsum("blhf,bhf->blh", qd[:, sl], z)
        out[:, sl] = num / (den[..., None] + eps)
    return out.to(v.dtype)


def softmax_attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention ``[B, L, H, D]`` in fp32 (what linear attention approximates)."""
    s = torch.einsum("blhd,bmhd->bhlm", q.float(), k.float()) * q.shape[-1] ** -0.5
    return torch.einsum("bhlm,bmhd->blhd", s.softmax(-1), v.float()).to(v.dtype)
