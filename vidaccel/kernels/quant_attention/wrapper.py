"""Public quantized-attention op: validation, backend choice, and the vectorised torch backend.

Backends (:data:`BACKENDS`):

* ``"triton"``: vidaccel's kernels (:mod:`.triton_kernel`): INT8 Q·Kᵀ and FP8 / bf16 P·V on the tensor cores of
  a CUDA GPU, or the Triton interpreter on CPU (``TRITON_INTERPRET=1``, for tests);
* ``"torch"``: the same quantized numerics in plain torch, chunked over query blocks (dense) or over query tiles
  with their gathered window keys (sliding-tile): what runs on CPU;
* ``"auto"``: ``triton`` on a CUDA GPU, ``torch`` elsewhere.

Both follow :mod:`.naive` (the spec) and agree with it up to fp32 rounding (which, where an element of P sits on
an e4m3 rounding tie, can move it by one e4m3 step).
"""

from __future__ import annotations

import math
import os

import torch

from .. import backend_names
from .._backend import kernel_module, triton_available, triton_interpreting
from ..attention.layout import TilePlan, tile_plan
from ..attention.wrapper import default_tile
from . import naive
from .naive import FP8_MAX, KEY_BLOCK, LOG2_FP8_MAX, M_FLOOR

__all__ = ["BACKENDS", "PV_MODES", "quant_attention", "resolve_backend", "resolve_pv"]

BACKENDS = backend_names.QUANT_ATTENTION
#: ``"fp8"``: P and V in e4m3 (sm89+ tensor cores; emulated exactly elsewhere); ``"bf16"``: P and V in bf16;
#: ``"auto"``: ``"bf16"`` on a CUDA GPU without FP8 MMA (before sm_89), else ``"fp8"``.
PV_MODES = ("auto", "fp8", "bf16")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Largest head dim (the kernel keeps a ``[BLOCK_M, D]`` fp32 accumulator in registers).
MAX_HEAD_DIM = 256
#: fp32 elements of one score chunk in the torch backend (several temporaries of this size are live).
_TORCH_BUDGET = 1 << 22


def _kernels():
    return kernel_module(os.path.join(os.path.dirname(__file__), "triton_kernel.py"),
                         "vidaccel.kernels.quant_attention.triton_kernel")


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend ``backend`` means on ``device`` (``"auto"`` resolved); raises when it cannot run there."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
    device = torch.device(device)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available(device) else "torch"
    if backend == "triton" and not triton_available(device):
        raise ValueError(f"backend='triton' cannot run on {device}: it needs a CUDA GPU or TRITON_INTERPRET=1")
    return backend


def _has_fp8_mma(device: torch.device) -> bool:
    return device.type != "cuda" or triton_interpreting() or torch.cuda.get_device_capability(device) >= (8, 9)


def resolve_pv(pv: str, device: torch.device | str, backend: str) -> str:
    """``"fp8"`` or ``"bf16"`` for ``pv`` on ``device`` with the resolved ``backend``."""
    if pv not in PV_MODES:
        raise ValueError(f"pv={pv!r} is not allowed; allowed: {', '.join(PV_MODES)}")
    device = torch.device(device)
    if pv == "auto":
        return "fp8" if _has_fp8_mma(device) else "bf16"
    if pv == "fp8" and backend == "triton" and not _has_fp8_mma(device):
        cap = torch.cuda.get_device_capability(device)
        raise ValueError(f"pv='fp8' needs FP8 tensor cores (sm_89+) for backend='triton', but {device} is "
                         f"sm_{cap[0]}{cap[1]}; allowed here: 'bf16', 'auto'")
    return pv


def _triple(name: str, value) -> tuple[int, int, int]:
    try:
        items = list(value)
        ok = len(items) == 3 and all(not isinstance(x, bool) and int(x) == x and x >= 1 for x in items)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: it must be three integers (t, h, w), each >= 1")
    return tuple(int(x) for x in items)


def _check(q, k, v, num_text_tokens, grid, window, tile, smooth_q, return_lse, scale):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, L, H, D], got {getattr(x, 'shape', type(x))}")
        if x.layout != torch.strided:
            raise ValueError(f"{name}.layout={x.layout} is not supported; allowed: torch.strided")
        if x.dtype not in _DTYPES:
            raise ValueError(f"{name}.dtype={x.dtype} is not supported; allowed: float16, bfloat16, float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch, heads and head dim")
    if not 1 <= q.shape[3] <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {q.shape[3]} is not supported; allowed: 1 .. {MAX_HEAD_DIM}")
    for name, flag in (("smooth_q", smooth_q), ("return_lse", return_lse)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name}={flag!r} is not allowed: it must be True or False")
    if scale is not None and (not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale={scale!r} is not allowed: it must be a finite number > 0 (or None: 1/sqrt(D))")
    if isinstance(num_text_tokens, bool) or not isinstance(num_text_tokens, int) or num_text_tokens < 0:
        raise ValueError(f"num_text_tokens={num_text_tokens!r} is not allowed: it must be an int >= 0")
    if num_text_tokens > min(q.shape[1], k.shape[1]):
        raise ValueError(f"num_text_tokens={num_text_tokens} is not allowed: it exceeds the sequence length "
                         f"(q {q.shape[1]}, k {k.shape[1]} tokens)")
    if grid is None:
        for name, val in (("window", window), ("tile", tile)):
            if val is not None:
                raise ValueError(f"{name}={val!r} needs grid= (sliding-tile attention); dense attention takes neither")
        return None
    grid = _triple("grid", grid)
    if window is None:
        raise ValueError("window=None is not allowed with grid=: give the window (t, h, w) in tokens")
    window = _triple("window", window)
    tile = default_tile(grid) if tile is None else tuple(min(t, g) for t, g in zip(_triple("tile", tile), grid))
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"sliding-tile attention needs q and k of one length, got {q.shape[1]} and {k.shape[1]}")
    if q.shape[1] != num_text_tokens + math.prod(grid):
        raise ValueError(f"q has {q.shape[1]} tokens but num_text_tokens + T*H*W = {num_text_tokens} + "
                         f"{math.prod(grid)} for grid={grid}")
    return grid, window, tile


def quant_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, num_text_tokens: int = 0, grid=None,
                    window=None, tile=None, smooth_q: bool = True, pv: str = "auto", return_lse: bool = False,
                    backend: str = "auto", scale: float | None = None):
    """Quantized attention (SageAttention2-style): INT8 Q·Kᵀ, FP8 (or bf16) P·V, fp32 softmax.

    Dense, or sliding-tile (block-sparse) when ``grid`` and ``window`` are given: the same windows, tile layout
    and text prefix as :func:`vidaccel.kernels.attention.sliding_tile_attention`. The exact numerics are those of
    :mod:`vidaccel.kernels.quant_attention.naive` (SageAttention2: https://arxiv.org/abs/2411.10958).

    Args:
        q: ``[B, Lq, H, D]``; k, v: ``[B, Lk, H, D]`` (diffusers' layout, any strides); float16, bfloat16 or
            float32; head dim 1 .. 256 (padded internally to a power of two >= 32).
        num_text_tokens: length of a text prefix (CogVideoX): quantization blocks restart after it; with a
            sliding-tile window the prefix attends to, and is attended by, every token.
        grid, window, tile: ``(T, H, W)`` token grid, window and tile in tokens (see
            :func:`~vidaccel.kernels.attention.sliding_tile_attention`); ``Lq == Lk == num_text_tokens + T*H*W``.
            A window covering the grid is dense attention.
        smooth_q: also subtract the mean of Q (its ``q̄·k`` term returns as a per-key bias in fp32).
        pv: one of :data:`PV_MODES`.
        return_lse: also return the log-sum-exp of the scaled scores, ``[B, H, Lq]`` fp32 (natural log), which
            :func:`vidaccel.kernels.attention.merge_attention` (and ring attention) combine.
        backend: one of :data:`BACKENDS`.
        scale: softmax scale, default ``1/sqrt(D)``.

    Returns:
        ``[B, Lq, H, D]`` in ``q``'s dtype (and the log-sum-exp with ``return_lse``).

    Example::

        out = quant_attention(q, k, v)                                           # dense
        out = quant_attention(q, k, v, grid=(21, 30, 52), window=(12, 16, 24))   # sliding-tile
    """
    sparse_args = _check(q, k, v, num_text_tokens, grid, window, tile, smooth_q, return_lse, scale)
    backend = resolve_backend(backend, q.device)
    pv = resolve_pv(pv, q.device, backend)
    B, Lq, H, D = q.shape
    scale = float(D**-0.5 if scale is None else scale)
    if q.numel() == 0 or k.shape[1] == 0:
        out = torch.zeros_like(q)
        lse = torch.full((B, H, Lq), float("-inf"), dtype=torch.float32, device=q.device)
        return (out, lse) if return_lse else out
    plan = None
    if sparse_args is not None and not naive.is_dense_window(*sparse_args):
        grid, window, tile = sparse_args
        plan = tile_plan(grid, window, tile, num_text_tokens, align=KEY_BLOCK, device=q.device)
    if backend == "triton":
        return _kernels().quant_attention_triton(
            q, k, v, scale=scale, smooth_q=smooth_q, pv_fp8=pv == "fp8", num_text_tokens=num_text_tokens, plan=plan,
            return_lse=return_lse, interpret=triton_interpreting())
    out, lse = _torch_quant_attention(q, k, v, scale=scale, smooth_q=smooth_q, pv=pv,
                                      num_text_tokens=num_text_tokens, plan=plan)
    return (out, lse) if return_lse else out


# -- the torch backend ---------------------------------------------------------------------------------------
def _round_p(p: torch.Tensor, pv: str) -> torch.Tensor:
    if pv == "fp8":
        return p.clamp(max=FP8_MAX).to(torch.float8_e4m3fn).to(torch.float32)
    return p.to(torch.bfloat16).to(torch.float32)


def _attend(q8, qs, k8, ks, bias, vq, pv: str):
    """Quantized attention of a chunk. ``q8 [..., C, D]`` (fp32 holding int8), ``qs [..., C]``; ``k8, vq
    [..., S, D]``, ``ks, bias [..., S]`` with ``S`` a multiple of ``KEY_BLOCK``, in position order (masked keys:
    ``bias = -inf``). Returns ``(acc / l [..., C, D], m [..., C], l [..., C])`` (before the V scale)."""
    g = LOG2_FP8_MAX if pv == "fp8" else 0.0
    t = torch.matmul(q8, k8.transpose(-1, -2))  # integer-valued, exact in fp32 (|sum| < 2^24)
    t = t * (qs[..., :, None] * ks[..., None, :]) + bias[..., None, :]
    tb = t.unflatten(-1, (-1, KEY_BLOCK))  # [..., C, n_blocks, KEY_BLOCK]
    # running max over blocks in visiting order: the max each block's P̃ is taken against
    r = torch.cummax(tb.amax(dim=-1), dim=-1).values.clamp_min(M_FLOOR)  # [..., C, n_blocks]
    m = r[..., -1]
    p = torch.exp2(tb - (r - g)[..., None])
    w = torch.exp2(r - m[..., None])  # the product of the later blocks' rescalings
    l = (p.sum(dim=-1) * w).sum(dim=-1)
    p = (_round_p(p, pv) * w[..., None]).flatten(-2)
    return torch.matmul(p, vq) / l[..., None], m, l


def _torch_quant_attention(q, k, v, *, scale, smooth_q, pv, num_text_tokens, plan: TilePlan | None):
    Lq, Lk = q.shape[1], k.shape[1]
    if plan is None:
        q_pos = naive.layout_positions(Lq, num_text_tokens=num_text_tokens, device=q.device)
        k_pos = naive.layout_positions(Lk, num_text_tokens=num_text_tokens, device=q.device)
    else:
        q_pos = k_pos = plan.dst
    qk = naive.quantize_qk(q, k, scale=scale, smooth_q=smooth_q, q_pos=q_pos, k_pos=k_pos)
    vq, sv = naive.quantize_v(v, pv)
    g = LOG2_FP8_MAX if pv == "fp8" else 0.0
    # [B, H, L, D] float32 holding the quantized values
    q8 = qk["q8"].permute(0, 2, 1, 3).float()
    k8 = qk["k8"].permute(0, 2, 1, 3).float()
    vh = vq.permute(0, 2, 1, 3)
    qs, ks, bias = qk["q_scale"], qk["k_scale"], qk["bias"]
    if plan is None:
        out, m, l = _dense(q8, qs, k8, ks, bias, vh, pv, k_pos)
    else:
        out, m, l = _sparse_units(q8, qs, k8, ks, bias, vh, pv, plan)
    out = (out * sv[:, :, None, :]).permute(0, 2, 1, 3).to(q.dtype)
    lse = (m + torch.log2(l) - g) * math.log(2.0) + qk["lse_correction"]
    return out, lse


def _dense(q8, qs, k8, ks, bias, vh, pv, k_pos):
    """Dense attention: keys placed at their positions (text prefix padded to a key block), queries in chunks."""
    B, H, Lq, D = q8.shape
    length = -(-(int(k_pos[-1]) + 1) // KEY_BLOCK) * KEY_BLOCK

    def place(x, fill=0.0):
        out = x.new_full((*x.shape[:2], length, *x.shape[3:]), fill)
        out[:, :, k_pos] = x
        return out

    k8, ks, bias, vh = place(k8), place(ks), place(bias, float("-inf")), place(vh)
    chunk = max(1, _TORCH_BUDGET // max(1, B * H * length))
    out = torch.empty(B, H, Lq, D, device=q8.device)
    m = torch.empty(B, H, Lq, device=q8.device)
    l = torch.empty_like(m)
    for c0 in range(0, Lq, chunk):
        sl = slice(c0, c0 + chunk)
        out[:, :, sl], m[:, :, sl], l[:, :, sl] = _attend(q8[:, :, sl], qs[:, :, sl], k8, ks, bias, vh, pv)
    return out, m, l


def _sparse_units(q8, qs, k8, ks, bias, vh, pv, plan: TilePlan):
    """Sliding-tile attention in the tile layout: text queries against every key, each video query tile
    against the keys of its window units (gathered, in table order)."""
    B, H, _, D = q8.shape
    P, nt, n_units = plan.unit, plan.n_text_units, plan.n_units
    # [B, H, n_units * P, ...] in layout order; padding positions hold a copy of token 0, masked as keys
    q8l, qsl, k8l, ksl, vl, biasl = (x.index_select(2, plan.src) for x in (q8, qs, k8, ks, vh, bias))
    biasl = biasl.masked_fill(~plan.key_valid, float("-inf"))
    out = torch.empty(B, H, n_units * P, D, device=q8.device)
    m = torch.empty(B, H, n_units * P, device=q8.device)
    l = torch.empty_like(m)
    chunk = max(1, _TORCH_BUDGET // max(1, B * H * plan.length))
    for c0 in range(0, nt * P, chunk):  # text queries visit every unit, in layout order
        sl = slice(c0, min(c0 + chunk, nt * P))
        out[:, :, sl], m[:, :, sl], l[:, :, sl] = _attend(q8l[:, :, sl], qsl[:, :, sl], k8l, ksl, biasl, vl, pv)
    q8u, qsu, k8u, ksu, bu, vu = (x.unflatten(2, (n_units, P)) for x in (q8l, qsl, k8l, ksl, biasl, vl))
    table = plan.table[nt:, : plan.video_count].long()  # [n_video_units, count], ascending = visiting order
    nv, S = table.shape[0], plan.video_count * P
    chunk = max(1, _TORCH_BUDGET // max(1, B * H * P * S))
    for c0 in range(0, nv, chunk):
        r = table[c0 : c0 + chunk]  # [c, count]
        kk, kks, kb, vv = (x[:, :, r].flatten(3, 4) for x in (k8u, ksu, bu, vu))  # [B, H, c, S, ...]
        qu = slice(nt + c0, nt + c0 + r.shape[0])
        o_, m_, l_ = _attend(q8u[:, :, qu], qsu[:, :, qu], kk, kks, kb, vv, pv)
        rows = slice((nt + c0) * P, (nt + c0 + r.shape[0]) * P)
        out[:, :, rows], m[:, :, rows], l[:, :, rows] = o_.flatten(2, 3), m_.flatten(2, 3), l_.flatten(2, 3)
    back = plan.dst
    return out.index_select(2, back), m.index_select(2, back), l.index_select(2, back)
