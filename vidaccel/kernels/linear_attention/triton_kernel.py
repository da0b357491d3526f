"""Linear attention in Triton: a chunk-state kernel and an output kernel, fp32 state and accumulation.

1. ``_state_kernel``: for every (batch·head, chunk, split of the chunk, feature block × value block) it sums
   ``kᵀ v`` (``[BF, BD]``) and, on value block 0, ``Σ k_den`` (``[BF]``) over its tokens. Splits give a
   GPU enough programs for one long bidirectional "chunk" (75,600 tokens at Wan 720p); the wrapper sums
   the splits and, when causal, takes the inclusive prefix sum over chunks (tiny: ``C × F × D`` per head).
2. ``_output_kernel``: for every (batch·head, chunk × query block, value block) it loads the query features
   and the chunk's state and writes ``(q S) / (q_den · z + eps)``. Query blocks never straddle chunks.

Ragged lengths and any ``F``/``D`` are masked (blocks are powers of two ≥ 16); offsets are int64.
Under ``TRITON_INTERPRET=1`` ``tl.dot`` on bf16 is wrong, so operands are upcast to fp32 there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreting

__all__ = ["linear_attention_triton", "LAUNCH"]

# tl.sum is bound to the compiler or the interpreter when triton is first imported; tl.reduce with the
# standard combine function works either way (see kernels/attention/triton_kernel.py).
_sum_combine = tl.standard._sum_combine

#: Launch parameters (data): token block, max feature / value block, tokens per state split, warps.
LAUNCH = dict(BLOCK_L=64, MAX_BLOCK_F=64, MAX_BLOCK_D=64, SPLIT=4096, num_warps=4)


@triton.jit
def _state_kernel(K, V, KD, S, Z,
                  stride_kb, stride_kl, stride_kh, stride_vb, stride_vl, stride_vh,
                  stride_db, stride_dl, stride_dh,
                  H, L, F, D, CHUNK, SPLIT, N_SPLITS, N_CHUNKS,
                  UPCAST: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_cs = tl.program_id(1)
    pid_fd = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    c = pid_cs // N_SPLITS
    s = pid_cs % N_SPLITS
    n_d = (D + BLOCK_D - 1) // BLOCK_D
    fb = pid_fd // n_d
    db = pid_fd % n_d
    start = c * CHUNK + s * SPLIT
    end = tl.minimum(tl.minimum(start + SPLIT, c * CHUNK + CHUNK), L)
    offs_f = fb * BLOCK_F + tl.arange(0, BLOCK_F)
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    mf = offs_f < F
    md = offs_d < D
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    d_base = KD + b * stride_db + h * stride_dh
    acc = tl.full([BLOCK_F, BLOCK_D], 0.0, dtype=tl.float32)
    zacc = tl.full([BLOCK_F], 0.0, dtype=tl.float32)
    for l0 in range(start, end, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        ml = offs_l < end
        rows = offs_l.to(tl.int64)[:, None]
        k = tl.load(k_base + rows * stride_kl + offs_f[None, :], mask=ml[:, None] & mf[None, :], other=0.0)
        v = tl.load(v_base + rows * stride_vl + offs_d[None, :], mask=ml[:, None] & md[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        acc += tl.dot(tl.trans(k), v)
        if db == 0:
            kd = tl.load(d_base + rows * stride_dl + offs_f[None, :], mask=ml[:, None] & mf[None, :], other=0.0)
            zacc += tl.reduce(kd.to(tl.float32), 0, _sum_combine)
    # S: [B*H, N_CHUNKS, N_SPLITS, F, D] and Z: [B*H, N_CHUNKS, N_SPLITS, F], contiguous fp32
    slot = (pid_bh.to(tl.int64) * N_CHUNKS + c) * N_SPLITS + s
    tl.store(S + slot * F * D + offs_f[:, None] * D + offs_d[None, :], acc, mask=mf[:, None] & md[None, :])
    if db == 0:
        tl.store(Z + slot * F + offs_f, zacc, mask=mf)


@triton.jit
def _output_kernel(Q, QD, S, Z, O,
                   stride_qb, stride_ql, stride_qh, stride_db, stride_dl, stride_dh,
                   stride_ob, stride_ol, stride_oh,
                   H, L, F, D, CHUNK, N_CHUNKS, eps,
                   UPCAST: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_cj = tl.program_id(1)
    pid_d = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    n_sub = (CHUNK + BLOCK_L - 1) // BLOCK_L
    c = pid_cj // n_sub
    j = pid_cj % n_sub
    offs_l = c * CHUNK + j * BLOCK_L + tl.arange(0, BLOCK_L)
    ml = (offs_l < L) & (offs_l < c * CHUNK + CHUNK)
    rows = offs_l.to(tl.int64)[:, None]
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < D
    q_base = Q + b * stride_qb + h * stride_qh
    d_base = QD + b * stride_db + h * stride_dh
    slot = pid_bh.to(tl.int64) * N_CHUNKS + c
    num = tl.full([BLOCK_L, BLOCK_D], 0.0, dtype=tl.float32)
    den = tl.full([BLOCK_L], 0.0, dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        mf = offs_f < F
        q = tl.load(q_base + rows * stride_ql + offs_f[None, :], mask=ml[:, None] & mf[None, :], other=0.0)
        qd = tl.load(d_base + rows * stride_dl + offs_f[None, :], mask=ml[:, None] & mf[None, :], other=0.0)
        st = tl.load(S + slot * F * D + offs_f[:, None] * D + offs_d[None, :], mask=mf[:, None] & md[None, :],
                     other=0.0)
        z = tl.load(Z + slot * F + offs_f, mask=mf, other=0.0)
        q = q.to(tl.float32)
        num += tl.dot(q, st)
        den += tl.reduce(qd.to(tl.float32) * z[None, :], 1, _sum_combine)
    out = num / (den[:, None] + eps)
    tl.store(O + b * stride_ob + h * stride_oh + rows * stride_ol + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=ml[:, None] & md[None, :])


def _block(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(n)))


def _lastdim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def linear_attention_triton(q, k, v, *, causal: bool = False, chunk: int | None = None, q_den=None, k_den=None,
                            eps: float = 1e-6, launch: dict | None = None) -> torch.Tensor:
    """Launch both kernels. ``q, k (, q_den, k_den): [B, L, H, F]``, ``v: [B, L, H, D]`` → ``[B, L, H, D]``.

    Same semantics as :func:`~vidaccel.kernels.linear_attention.naive.linear_attention_naive`; no autograd.
    """
    p = dict(LAUNCH, **(launch or {}))
    B, L, H, Fdim = q.shape
    D = v.shape[-1]
    q, k, v = (_lastdim_contiguous(x) for x in (q, k, v))
    qd = q if q_den is None else _lastdim_contiguous(q_den)
    kd = k if k_den is None else _lastdim_contiguous(k_den)
    chunk = L if not causal else int(chunk)
    n_chunks = triton.cdiv(L, chunk)
    bl = p["BLOCK_L"]
    split = max(bl, min(p["SPLIT"], triton.cdiv(chunk, bl) * bl))
    n_splits = triton.cdiv(chunk, split)
    bf = _block(Fdim, p["MAX_BLOCK_F"])
    bd = _block(D, p["MAX_BLOCK_D"])
    upcast = triton_interpreting() or q.dtype == torch.float32
    dev = q.device
    S = torch.empty(B * H, n_chunks, n_splits, Fdim, D, dtype=torch.float32, device=dev)
    Z = torch.empty(B * H, n_chunks, n_splits, Fdim, dtype=torch.float32, device=dev)
    grid = (B * H, n_chunks * n_splits, triton.cdiv(Fdim, bf) * triton.cdiv(D, bd))
    _state_kernel[grid](k, v, kd, S, Z,
                        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
                        kd.stride(0), kd.stride(1), kd.stride(2),
                        H, L, Fdim, D, chunk, split, n_splits, n_chunks,
                        UPCAST=upcast, BLOCK_L=bl, BLOCK_F=bf, BLOCK_D=bd, num_warps=p["num_warps"])
    S = S.sum(2)
    Z = Z.sum(2)
    if causal and n_chunks > 1:
        S = S.cumsum(1)
        Z = Z.cumsum(1)
    S, Z = S.contiguous(), Z.contiguous()
    o = torch.empty(B, L, H, D, dtype=v.dtype, device=dev)
    grid = (B * H, n_chunks * triton.cdiv(chunk, bl), triton.cdiv(D, bd))
    _output_kernel[grid](q, qd, S, Z, o,
                         q.stride(0), q.stride(1), q.stride(2), qd.stride(0), qd.stride(1), qd.stride(2),
                         o.stride(0), o.stride(1), o.stride(2),
                         H, L, Fdim, D, chunk, n_chunks, eps,
                         UPCAST=upcast, BLOCK_L=bl, BLOCK_F=bf, BLOCK_D=bd, num_warps=p["num_warps"])
    return o
