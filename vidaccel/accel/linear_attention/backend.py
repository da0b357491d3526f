"""Linear attention as the diffusers attention backend ``vidaccel_linear`` (context parallelism).

The processor maps q and k to features on its own tokens (all heads; learned Hedgehog maps are per head) and
rotates the numerator's features with the layer's RoPE, then hands diffusers packed tensors:
``query = [φ(q) rotated | φ(q)]``, ``key = [φ(k) rotated | φ(k)]`` along the last dim (just ``φ(q)``, ``φ(k)``
without RoPE), and ``value`` (zero-padded to the query's width under Ulysses, whose all-to-all reshapes every
tensor with the query's last dim). Every token and head is then self-contained, so:

* Ulysses: the op sees the whole sequence and a slice of heads: plain linear attention;
* ring: the op sees this rank's queries and one rank's keys at a time and returns ``log(denominator)`` as its
  log-sum-exp; diffusers' merge ``o1 + sigmoid(l2 - l1) (o2 - o1)`` then gives ``(n1 + n2) / (d1 + d2)``, exactly
  the linear attention over both chunks. Each chunk adds ``eps / ring`` so the merged denominator carries
  ``eps`` once, as in one process.

Traffic per layer under context parallelism is that of the packed features: with RoPE, ``2F`` wide (``F = D``
for elu/relu, ``2D`` for Hedgehog) instead of the ``D`` of q and k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ...core.attention_backend import SequenceLayout, register_backend
from ...kernels.linear_attention import linear_attention_features

__all__ = ["LINEAR_BACKEND", "LinearParams"]

LINEAR_BACKEND = "vidaccel_linear"


@dataclass(frozen=True)
class LinearParams:
    """How ``vidaccel_linear`` unpacks its inputs.

    Attributes:
        features: feature dim ``F`` of the maps.
        head_dim: ``D`` of the values (the rest of ``value``'s last dim is padding).
        rotated: ``query`` / ``key`` hold ``[rotated features | plain features]`` (numerator | denominator).
        eps: the layer's denominator epsilon (whole sequence).
        backend: linear-attention kernel backend.
    """

    features: int
    head_dim: int
    rotated: bool
    eps: float
    backend: str


def _linear_op(query, key, value, *, params: LinearParams, scale, return_lse: bool, layout: SequenceLayout):
    p = params
    f = p.features
    qn, kn = query[..., :f], key[..., :f]
    qd, kd = (query[..., f:2 * f], key[..., f:2 * f]) if p.rotated else (None, None)
    v = value[..., :p.head_dim]
    result = linear_attention_features(qn, kn, v, q_den=qd, k_den=kd, backend=p.backend, eps=p.eps / layout.ring,
                                       return_lse=return_lse)
    out, lse = result if return_lse else (result, None)
    if value.shape[-1] != p.head_dim:
        out = F.pad(out, (0, value.shape[-1] - p.head_dim))
    return (out, lse) if return_lse else out


register_backend(LINEAR_BACKEND, _linear_op)
