"""Public linear-attention ops: validation, feature maps, RoPE-in-numerator, backend choice.

Backends:

* ``"triton"``: :mod:`.triton_kernel` (a CUDA GPU, or ``TRITON_INTERPRET=1`` on CPU); forward only. 16-bit MMA
  operands (bf16, or fp16 when every input is fp16; fp32 inputs are computed in bf16), fp32 accumulation, state
  and normaliser. :func:`linear_attention` with ``feature_map`` ``"elu"``, ``"relu"`` or a
  :class:`HedgehogFeatureMap` and ``rope`` given as cos/sin tables computes the features inside the kernels
  (no feature tensor in memory); other feature maps and RoPE callables run in torch first;
* ``"torch"``: vectorised einsum/cumsum in fp32 (differentiable; what distillation trains through);
* ``"auto"``: ``triton`` on a CUDA GPU when no gradient is needed, else ``torch``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import backend_names
from .._backend import triton_available
from .feature_maps import HedgehogFeatureMap
from .naive import FIXED_FEATURE_MAPS

__all__ = ["BACKENDS", "linear_attention", "linear_attention_features", "resolve_backend", "LinearAttentionState",
           "rope_rotate"]

BACKENDS = backend_names.LINEAR_ATTENTION
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: largest head dim the Triton kernels hold in one program (the output tile spans all of D)
MAX_TRITON_D = 256


def resolve_backend(backend: str, device: torch.device | str, needs_grad: bool = False) -> str:
    """The backend ``backend`` means on ``device``; raises ``ValueError`` when it cannot run there."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
    device = torch.device(device)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available(device) and not needs_grad else "torch"
    if backend == "triton":
        if not triton_available(device):
            raise ValueError(f"backend='triton' cannot run on {device}: it needs a CUDA GPU or TRITON_INTERPRET=1")
        if needs_grad:
            raise ValueError("backend='triton' has no backward; use backend='torch' (or 'auto') to train")
    return backend


def _check(name: str, x, B=None, L=None, H=None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor [B, L, H, D], got {getattr(x, 'shape', type(x))}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"{name}.dtype={x.dtype} is not supported; allowed: float16, bfloat16, float32")
    for axis, want, label in ((0, B, "batch"), (1, L, "length"), (2, H, "heads")):
        if want is not None and x.shape[axis] != want:
            raise ValueError(f"{name} has {label} {x.shape[axis]} but v has {want} (shape {tuple(x.shape)})")


def _torch_features(qn, kn, v, qd, kd, causal, chunk, eps):
    qn, kn, vf, qd, kd = (None if x is None else x.float() for x in (qn, kn, v, qd, kd))
    qd = qn if qd is None else qd
    kd = kn if kd is None else kd
    if not causal:
        S = torch.einsum("blhf,blhd->bhfd", kn, vf)
        z = kd.sum(1)
        num = torch.einsum("blhf,bhfd->blhd", qn, S)
        den = torch.einsum("blhf,bhf->blh", qd, z)
        return (num / (den[..., None] + eps)).to(v.dtype)
    B, L = v.shape[:2]
    C = -(-L // chunk)
    pad = C * chunk - L

    def blocks(x):
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x
        return x.reshape(B, C, chunk, *x.shape[2:])

    qn, kn, vf, qd, kd = (blocks(x) for x in (qn, kn, vf, qd, kd))
    S = torch.einsum("bclhf,bclhd->bchfd", kn, vf).cumsum(1)
    z = kd.sum(2).cumsum(1)
    num = torch.einsum("bclhf,bchfd->bclhd", qn, S)
    den = torch.einsum("bclhf,bchf->bclh", qd, z)
    out = (num / (den[..., None] + eps)).reshape(B, C * chunk, *v.shape[2:])
    return out[:, :L].to(v.dtype)


def linear_attention_features(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                              chunk: int | None = None, q_den: torch.Tensor | None = None,
                              k_den: torch.Tensor | None = None, backend: str = "auto",
                              eps: float = 1e-6, return_lse: bool = False):
    """Linear attention on feature-mapped queries and keys (see :mod:`.naive` for the formula).

    Args:
        q, k: numerator features ``[B, L, H, F]`` (any dtype of fp16/bf16/fp32).
        v: ``[B, L, H, D]``.
        causal: block-causal over chunks of ``chunk`` tokens (a query sees its own chunk and all earlier ones).
        chunk: tokens per chunk (e.g. tokens per latent frame × frames per chunk); required when causal.
        q_den, k_den: non-negative denominator features (default ``q``, ``k``).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.
        eps: added to the denominator.
        return_lse: also return ``log(denominator + eps)``, ``[B, L, H]`` fp32 (bidirectional only). It plays
            the part of softmax attention's log-sum-exp: the results over disjoint key sets ``(o_i, l_i)`` merge
            exactly into ``Σ exp(l_i) o_i / Σ exp(l_i)``, the result over their union (with ``eps`` split
            between the sets), which is how ring attention combines key chunks.

    Returns:
        ``[B, L, H, D]`` in ``v``'s dtype; fp32 state and accumulation (and the ``log`` denominator).
    """
    _check("v", v)
    B, L, H, _ = v.shape
    for name, x in (("q", q), ("k", k), ("q_den", q_den), ("k_den", k_den)):
        if x is not None:
            _check(name, x, B, L, H)
            if x.shape[-1] != q.shape[-1]:
                raise ValueError(f"{name} has {x.shape[-1]} features but q has {q.shape[-1]}")
            if x.device != v.device:
                raise ValueError(f"{name} is on {x.device} but v is on {v.device}")
    if causal:
        if chunk is None or isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk={chunk!r} is not allowed with causal=True: it must be an int >= 1 (tokens)")
    elif chunk is not None:
        raise ValueError(f"chunk={chunk!r} is only meaningful with causal=True; leave it None")
    if return_lse and causal:
        raise ValueError("return_lse=True is only available with causal=False")
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, q_den, k_den))
    backend = resolve_backend(backend, v.device, needs_grad)
    if backend == "triton" and v.shape[-1] > MAX_TRITON_D:
        raise ValueError(f"v has head dim {v.shape[-1]}; backend='triton' allows at most {MAX_TRITON_D} (use 'torch')")
    if L == 0:
        out = torch.zeros_like(v)
    elif backend == "triton":
        from .triton_kernel import linear_attention_triton

        out = linear_attention_triton(q, k, v, causal=causal, chunk=chunk, q_den=q_den, k_den=k_den, eps=eps)
    else:
        out = _torch_features(q, k, v, q_den, k_den, causal, chunk, eps)
    if not return_lse:
        return out
    qd = (q if q_den is None else q_den).float()
    kd = (k if k_den is None else k_den).float()
    den = torch.einsum("blhf,bhf->blh", qd, kd.sum(1))
    return out, torch.log(den + eps)


def _feature_fn(feature_map) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(feature_map, str):
        if feature_map not in FIXED_FEATURE_MAPS:
            raise ValueError(f"feature_map={feature_map!r} is not allowed; allowed names: "
                             f"{', '.join(FIXED_FEATURE_MAPS)} (or a callable / nn.Module such as HedgehogFeatureMap)")
        return FIXED_FEATURE_MAPS[feature_map]
    if callable(feature_map):
        return feature_map
    raise ValueError(f"feature_map={feature_map!r} is not allowed: give a name ({', '.join(FIXED_FEATURE_MAPS)}) "
                     f"or a callable [B, L, H, D] -> [B, L, H, F]")


def rope_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved feature pairs ``(2i, 2i+1)`` of every ``2P``-sized group by the angle of pair ``i``:
    ``x [B, L, H, F]`` with ``F % 2P == 0``, ``cos, sin [L, P]``. What the fused kernels compute in registers."""
    B, L, H, F = x.shape
    P = cos.shape[-1]
    xp = x.float().reshape(B, L, H, F // (2 * P), P, 2)
    c, s = cos.float()[None, :, None, None, :], sin.float()[None, :, None, None, :]
    x1, x2 = xp[..., 0], xp[..., 1]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).reshape(B, L, H, F)


def _rope_tables(rope, L: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of any shape holding ``L × D/2`` values (``[L, D/2]``, diffusers' ``[1, L, 1, D/2]``) →
    ``[L, D/2]`` each."""
    if not (isinstance(rope, tuple) and len(rope) == 2 and all(isinstance(t, torch.Tensor) for t in rope)):
        raise ValueError(f"rope={type(rope).__name__} is not allowed: give a callable features -> features, a "
                         "(cos, sin) pair of tensors [L, D/2] (or [1, L, 1, D/2]), or None")
    out = []
    for name, t in zip(("cos", "sin"), rope):
        if t.numel() != L * (D // 2) or t.shape[-1] != D // 2 or D % 2:
            raise ValueError(f"rope {name} has shape {tuple(t.shape)}; expected L x D/2 = {L} x {D / 2:g} values "
                             f"([{L}, {D // 2}] or [1, {L}, 1, {D // 2}]) for q of length {L} and head dim {D}")
        out.append(t.reshape(L, D // 2))
    return out[0], out[1]


def _fused_feature(feature_map) -> str | None:
    """The fused kernels' name for ``feature_map``, or None when it must run in torch."""
    if isinstance(feature_map, str):
        return feature_map if feature_map in ("elu", "relu") else None
    return "hedgehog" if type(feature_map) is HedgehogFeatureMap else None


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, feature_map="elu", causal: bool = False,
                     chunk: int | None = None, rope=None, backend: str = "auto", eps: float = 1e-6) -> torch.Tensor:
    """Linear attention ``out_i = φ(q_i) Σ_l φ(k_l)ᵀ v_l / (φ(q_i) · Σ_l φ(k_l))`` in O(L·F·D).

    Args:
        q, k, v: ``[B, L, H, D]`` (diffusers' layout); fp16, bf16 or fp32.
        feature_map: ``"elu"`` (elu+1), ``"relu"``, or a callable ``[B, L, H, D] → [B, L, H, F]`` with
            non-negative output (e.g. :class:`HedgehogFeatureMap`).
        causal: block-causal over chunks of ``chunk`` tokens, with a constant-size running state (SANA-Video);
            bidirectional otherwise.
        chunk: tokens per chunk when causal.
        rope: RoPE on the query and key features of the numerator only (the denominator keeps the non-negative
            features): a callable ``features → features``, or a ``(cos, sin)`` pair of tables ``[L, D/2]`` (or
            diffusers' ``[1, L, 1, D/2]``) rotating the interleaved pairs of every ``D``-sized group of features
            (:func:`rope_rotate`); tokens that are not rotated (CogVideoX's text) take rows ``cos = 1, sin = 0``.
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere or when training), ``"triton"`` or ``"torch"``.
            On ``triton``, ``"elu"`` / ``"relu"`` / :class:`HedgehogFeatureMap` with tables (or no RoPE) run the
            fused kernels, which compute the features in registers.

    Returns:
        ``[B, L, H, D]`` in ``v``'s dtype.

    Example::

        out = linear_attention(q, k, v, feature_map="elu")
        out = linear_attention(q, k, v, feature_map="elu", causal=True, chunk=tokens_per_frame * 3)
        out = linear_attention(q, k, v, feature_map=hedgehog, rope=(cos, sin))   # fused on a GPU
    """
    _check("q", q)
    _check("k", k, q.shape[0], q.shape[1], q.shape[2])
    _check("v", v, q.shape[0], q.shape[1], q.shape[2])
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"q and k must share the head dim, got {q.shape[-1]} and {k.shape[-1]}")
    phi = _feature_fn(feature_map)
    _, L, H, D = q.shape
    tables = None
    if rope is not None and not callable(rope):
        tables = _rope_tables(rope, L, D)
    fused = _fused_feature(feature_map)
    if fused is not None and (rope is None or tables is not None):
        if causal:
            if chunk is None or isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
                raise ValueError(f"chunk={chunk!r} is not allowed with causal=True: it must be an int >= 1 (tokens)")
        elif chunk is not None:
            raise ValueError(f"chunk={chunk!r} is only meaningful with causal=True; leave it None")
        params = list(feature_map.parameters()) if isinstance(feature_map, nn.Module) else []
        needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in [q, k, v, *params])
        resolved = resolve_backend(backend, v.device, needs_grad)
        if resolved == "triton" and D % 2 == 0 and D <= MAX_TRITON_D and L > 0:
            from .triton_kernel import linear_attention_fused_triton

            w = b = None
            if fused == "hedgehog":
                if feature_map.heads != H or feature_map.head_dim != D:
                    phi(q)  # raises the feature map's own shape error
                w, b = feature_map.weight, feature_map.bias
            cos, sin = tables if tables is not None else (None, None)
            return linear_attention_fused_triton(q, k, v, feature=fused, weight=w, bias=b, cos=cos, sin=sin,
                                                 causal=causal, chunk=chunk, eps=eps)
    if tables is not None:
        cos, sin = tables

        def rope(x):
            return rope_rotate(x, cos, sin)
    fq, fk = phi(q), phi(k)
    if rope is None:
        return linear_attention_features(fq, fk, v, causal=causal, chunk=chunk, backend=backend, eps=eps)
    return linear_attention_features(rope(fq), rope(fk), v, causal=causal, chunk=chunk, q_den=fq, k_den=fk,
                                     backend=backend, eps=eps)


class LinearAttentionState(nn.Module):
    """Constant-size running state of block-causal linear attention: a drop-in for a KV cache.

    Holds ``S = Σ φ(k)ᵀ v`` (``[B, H, F, D]``) and ``z = Σ φ_d(k)`` (``[B, H, F]``) in fp32 buffers, whatever
    the number of chunks seen. :meth:`update` adds one chunk and returns its queries' output over every key so
    far, equal to :func:`linear_attention_features` with ``causal=True`` on the concatenated sequence.

    Example::

        state = LinearAttentionState(batch=1, heads=12, features=128, head_dim=128, device="cuda")
        for q_c, k_c, v_c in chunks:                 # each [B, chunk_tokens, H, ·]
            out_c = state.update(q_c, k_c, v_c)
    """

    def __init__(self, batch: int, heads: int, features: int, head_dim: int, device=None, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.register_buffer("S", torch.zeros(batch, heads, features, head_dim, device=device), persistent=False)
        self.register_buffer("z", torch.zeros(batch, heads, features, device=device), persistent=False)
        self.tokens = 0

    def reset(self) -> None:
        self.S.zero_()
        self.z.zero_()
        self.tokens = 0

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_den: torch.Tensor | None = None,
               k_den: torch.Tensor | None = None) -> torch.Tensor:
        """Add the chunk's keys/values to the state and return ``[B, Lc, H, D]`` for its queries."""
        qd = q if q_den is None else q_den
        kd = k if k_den is None else k_den
        self.S += torch.einsum("blhf,blhd->bhfd", k.float(), v.float())
        self.z += kd.float().sum(1)
        self.tokens += k.shape[1]
        num = torch.einsum("blhf,bhfd->blhd", q.float(), self.S)
        den = torch.einsum("blhf,bhf->blh", qd.float(), self.z)
        return (num / (den[..., None] + self.eps)).to(v.dtype)
