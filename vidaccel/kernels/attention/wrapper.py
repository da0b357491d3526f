"""Public attention ops: validation, backend choice, and the tile reordering around the kernels.

Backends:

* ``"triton"``: vidaccel's block-sparse flash-attention kernel (a CUDA GPU, or ``TRITON_INTERPRET=1`` on CPU);
* ``"flex"``: ``torch.nn.attention.flex_attention`` with a block mask over the tile layout;
* ``"gather"``: per query tile, gather the keys of its window and run SDPA on them (real savings on CPU);
* ``"torch"``: ``F.scaled_dot_product_attention`` with a dense boolean mask (the reference; no savings);
* ``"auto"``: ``triton`` on a CUDA GPU, ``gather`` elsewhere (dense ops: ``torch``, i.e. torch's own
  SDPA flash/efficient kernels, except :func:`flash_attention` with ``return_lse`` on a CUDA GPU: ``triton``).
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F

from .. import backend_names
from .._backend import triton_available
from .layout import CUDA_ALIGN, DEFAULT_TILE, TilePlan, default_tile, gathered_unit_attention, tile_plan
from .naive import (attention_lse_masked_naive, attention_lse_naive, sliding_tile_mask, sliding_tile_mask_at,
                    window_factors)

__all__ = ["BACKENDS", "DEFAULT_TILE", "default_tile", "dense_backend", "resolve_backend", "sliding_tile_attention",
           "flash_attention", "sliding_tile_attention_at"]

BACKENDS = backend_names.ATTENTION
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Compile flex_attention on CPU too (a first call per shape compiles for ~20 s; benchmarks set this).
FLEX_COMPILE_ON_CPU = False


def _triple(name: str, value) -> tuple[int, int, int]:
    try:
        out = tuple(int(x) for x in value)
    except TypeError:
        out = ()
    if len(out) != 3 or any(x < 1 for x in out) or any(int(x) != x for x in value):
        raise ValueError(f"{name}={value!r} is not allowed: it must be three integers (t, h, w), each >= 1")
    return out


def resolve_backend(backend: str, device: torch.device | str, sparse: bool = True) -> str:
    """The backend ``backend`` means on ``device`` (``"auto"`` resolved); raises when it cannot run there."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
    device = torch.device(device)
    if backend == "auto":
        if not sparse:
            return "torch"
        return "triton" if device.type == "cuda" and triton_available(device) else "gather"
    if backend == "triton" and not triton_available(device):
        raise ValueError(f"backend='triton' cannot run on {device}: it needs a CUDA GPU or TRITON_INTERPRET=1")
    return backend


def dense_backend(backend: str, device: torch.device | str, return_lse: bool = False) -> str:
    """The backend :func:`flash_attention` runs: :func:`resolve_backend` for dense attention, except that ``"auto"``
    with ``return_lse`` on a CUDA GPU runs the Triton kernel (SDPA does not return the log-sum-exp, and the
    alternative is the O(L²) fp32 reference)."""
    device = torch.device(device)
    if backend == "auto" and return_lse and device.type == "cuda" and triton_available(device):
        return "triton"
    return resolve_backend(backend, device, sparse=False)


def _check_qkv(q, k, v, same_length: bool) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, L, H, D], got {getattr(x, 'shape', type(x))}")
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
    if same_length and q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must have the same length here, got {q.shape[1]} and {k.shape[1]}")


def _sdpa(q, k, v, mask=None):
    """SDPA in diffusers' [B, L, H, D] layout."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str = "auto",
                    return_lse: bool = False):
    """Dense softmax attention; query and key lengths may differ (a chunk's queries against cached keys).

    Args:
        q: ``[B, Lq, H, D]``; k, v: ``[B, Lk, H, D]``; float16, bfloat16 or float32; any head dim.
        backend: ``"auto"`` (torch SDPA, i.e. flash attention where torch has it; with ``return_lse`` on a CUDA
            GPU the Triton kernel, which returns the log-sum-exp), ``"triton"``, ``"flex"``, ``"torch"``
            (``"gather"`` means ``"torch"`` here).

        return_lse: also return the log-sum-exp of the scaled scores, ``[B, H, Lq]`` fp32 (natural log),
            so that attentions over disjoint key sets can be merged (see :func:`merge_attention`).

    Returns:
        ``[B, Lq, H, D]`` in ``q``'s dtype (and the log-sum-exp with ``return_lse``). Scale ``1/sqrt(D)``.

    Example::

        out = flash_attention(q, k_cache, v_cache)
    """
    _check_qkv(q, k, v, same_length=False)
    backend = dense_backend(backend, q.device, return_lse)
    if backend == "triton":
        from .triton_kernel import block_sparse_attention_triton

        return block_sparse_attention_triton(q, k, v, return_lse=return_lse)
    if return_lse:
        return _attention_lse(q, k, v, backend)
    if backend == "flex":
        return _flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return _sdpa(q, k, v)


def _attention_lse(q, k, v, backend: str):
    """Output and log-sum-exp without the Triton kernel: flex's ``return_lse``; on CPU, torch's fused flash
    kernel (which computes the log-sum-exp anyway); else the fp32 reference."""
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    if backend == "flex":
        from torch.nn.attention import flex_attention as fa

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            if hasattr(fa, "AuxRequest"):  # torch >= 2.9
                out, aux = fa.flex_attention(qt, kt, vt, return_aux=fa.AuxRequest(lse=True))
                lse = aux.lse
            else:
                out, lse = fa.flex_attention(qt, kt, vt, return_lse=True)
        return out.transpose(1, 2), lse.float()
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if q.device.type == "cpu" and cpu_flash is not None:
        out, lse = cpu_flash(qt, kt, vt, 0.0, False)
        return out.transpose(1, 2), lse.float()
    return attention_lse_naive(q, k, v)


def merge_attention(o1: torch.Tensor, l1: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor):
    """Exact softmax attention over the union of two disjoint key sets from the two partial results.

    ``o: [B, L, H, D]``, ``l: [B, H, L]`` (as :func:`flash_attention` returns with ``return_lse=True``).
    Returns the merged output (``o1``'s dtype) and log-sum-exp.
    """
    lse = torch.logaddexp(l1, l2)
    w1 = torch.exp(l1 - lse).transpose(1, 2).unsqueeze(-1)
    w2 = torch.exp(l2 - lse).transpose(1, 2).unsqueeze(-1)
    return (o1.float() * w1 + o2.float() * w2).to(o1.dtype), lse


# -- sparse backends -----------------------------------------------------------------------------
def _to_layout(x: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    return x.index_select(1, plan.src)


def _from_layout(x: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    return x.index_select(1, plan.dst)


def _triton_sparse(q, k, v, plan: TilePlan):
    from .triton_kernel import block_sparse_attention_triton

    out = block_sparse_attention_triton(_to_layout(q, plan), _to_layout(k, plan), _to_layout(v, plan), plan=plan)
    return _from_layout(out, plan)


@functools.lru_cache(maxsize=16)
def _flex_block_mask(plan: TilePlan):
    from torch.nn.attention.flex_attention import create_block_mask

    allowed = torch.zeros(plan.n_units, plan.n_units, dtype=torch.bool, device=plan.table.device)
    rows = torch.arange(plan.n_units, device=plan.table.device).repeat_interleave(plan.counts.long())
    cols = torch.cat([plan.table[u, : int(c)] for u, c in enumerate(plan.counts.tolist())]).long()
    allowed[rows, cols] = True
    valid, unit = plan.key_valid, plan.unit

    def mask_mod(b, h, qi, ki):
        return allowed[qi // unit, ki // unit] & valid[ki]

    block = 128 if unit % 128 == 0 or unit > 128 else unit * max(1, 128 // unit)
    return create_block_mask(mask_mod, None, None, plan.length, plan.length, device=plan.table.device,
                             BLOCK_SIZE=block)


def _flex(q, k, v, block_mask=None):
    """flex_attention on [B, H, L, D]: compiled on a GPU, eager elsewhere (slow; it materialises scores)
    unless :data:`FLEX_COMPILE_ON_CPU`."""
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cuda" or FLEX_COMPILE_ON_CPU:
        return _compiled_flex()(q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block_mask)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex_sparse(q, k, v, plan: TilePlan):
    qt, kt, vt = (_to_layout(x, plan).transpose(1, 2) for x in (q, k, v))
    out = _flex(qt, kt, vt, block_mask=_flex_block_mask(plan))
    return _from_layout(out.transpose(1, 2), plan)


def _gather_sparse(q, k, v, plan: TilePlan):
    B, L, H, D = q.shape
    P, nt, ntext = plan.unit, plan.n_text_units, plan.num_text_tokens
    out = torch.empty_like(q)
    if ntext:  # text queries attend to every real key
        out[:, :ntext] = _sdpa(q[:, :ntext], k, v)
    ql, kl, vl = (x.transpose(1, 2).index_select(2, plan.src).view(B, H, plan.n_units, P, D) for x in (q, k, v))
    ql = ql[:, :, nt:]
    rows = plan.table[nt:, : plan.video_count].long()  # [nv, count] key units of each video unit
    nv = rows.shape[0]
    valid = plan.key_valid.view(plan.n_units, P) if plan.has_padding else None
    video = gathered_unit_attention(ql, kl, vl, rows, valid)
    video = video.view(B, H, nv * P, D).index_select(2, plan.dst[ntext:] - nt * P)
    out[:, ntext:] = video.transpose(1, 2)
    return out


@functools.lru_cache(maxsize=8)
def _dense_mask(grid, window, tile, num_text_tokens, device):
    return sliding_tile_mask(grid, window, tile, num_text_tokens, device=device)


def sliding_tile_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, grid, window, tile=None,
                           num_text_tokens: int = 0, backend: str = "auto") -> torch.Tensor:
    """Sliding-tile (local window) attention over a video-token grid, with an optional global text prefix.

    A query attends to the keys in the window of tiles centred on its tile (shifted inward at the
    borders so every query sees a full window); ``num_text_tokens`` prefix tokens attend to, and are
    attended by, everything. See :mod:`vidaccel.kernels.attention.naive` for the exact definition and
    STA (https://arxiv.org/abs/2502.04507) for the tile reordering.

    Args:
        q, k, v: ``[B, L, H, D]`` (diffusers' layout), ``L = num_text_tokens + T*H*W``, video tokens
            frame-major; float16, bfloat16 or float32; any head dim.
        grid: ``(T, H, W)``, the latent token grid after patching.
        window: ``(wt, wh, ww)`` in tokens, rounded up to whole tiles; a window ≥ the grid is dense.
        tile: ``(tt, th, tw)`` tokens per tile (default :func:`default_tile` of the grid and text prefix); grid
            dimensions need not be multiples of it (partial tiles are padded and masked).
        num_text_tokens: length of the global prefix.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``[B, L, H, D]`` in ``q``'s dtype.

    Example::

        out = sliding_tile_attention(q, k, v, grid=(21, 30, 52), window=(12, 16, 24))   # tile (7, 6, 6)
    """
    _check_qkv(q, k, v, same_length=True)
    grid = _triple("grid", grid)
    window = _triple("window", window)
    if not isinstance(num_text_tokens, int) or num_text_tokens < 0:
        raise ValueError(f"num_text_tokens={num_text_tokens!r} is not allowed: it must be an int >= 0")
    # a tile larger than the grid in some dimension means the same as one equal to it (and pads less)
    tile = (default_tile(grid, num_text_tokens) if tile is None
            else tuple(min(t, g) for t, g in zip(_triple("tile", tile), grid)))
    if q.shape[1] != num_text_tokens + math.prod(grid):
        raise ValueError(f"q has {q.shape[1]} tokens but num_text_tokens + T*H*W = {num_text_tokens} + "
                         f"{math.prod(grid)} for grid={grid}")
    backend = resolve_backend(backend, q.device)
    align = 1
    if backend == "triton":
        align = CUDA_ALIGN if q.device.type == "cuda" else 32
    plan = tile_plan(grid, window, tile, num_text_tokens, align=align, device=q.device)
    if plan.covers_all:
        return flash_attention(q, k, v, backend="triton" if backend == "triton" else "torch")
    if backend == "torch":
        return _sdpa(q, k, v, _dense_mask(grid, window, tile, num_text_tokens, q.device))
    if backend == "triton":
        return _triton_sparse(q, k, v, plan)
    if backend == "flex":
        return _flex_sparse(q, k, v, plan)
    return _gather_sparse(q, k, v, plan)


def _positions(name: str, x, length: int, total: int, device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 1 or x.shape[0] != length or x.dtype != torch.long:
        raise ValueError(f"{name} must be a 1-D int64 tensor of {length} positions, got "
                         f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
    if length and (int(x.min()) < 0 or int(x.max()) >= total):
        raise ValueError(f"{name} must lie in [0, {total}) (text + T*H*W tokens)")
    return x.to(device)


def sliding_tile_attention_at(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, q_positions: torch.Tensor,
                              k_positions: torch.Tensor, grid, window, tile=None, num_text_tokens: int = 0,
                              backend: str = "auto", row_budget: int = 1 << 24):
    """Sliding-tile attention of queries at ``q_positions`` of the full sequence over the keys at
    ``k_positions``, with the log-sum-exp: one step of ring attention, where a rank holds a slice of the queries
    and sees the keys one slice at a time.

    Args:
        q: ``[B, Lq, H, D]``; k, v: ``[B, Lk, H, D]``.
        q_positions, k_positions: int64 ``[Lq]`` / ``[Lk]``, indices into the full sequence
            ``[text (num_text_tokens) | video (T*H*W, frame-major)]`` that :func:`sliding_tile_attention` takes.
        grid, window, tile, num_text_tokens: as :func:`sliding_tile_attention`.
        backend: ``"flex"`` (flex_attention with a block mask computed from the positions: compiled on a GPU,
            eager elsewhere), ``"torch"`` (the masked fp32 reference, ``row_budget`` score elements at a time);
            ``"auto"``, ``"triton"`` and ``"gather"`` mean ``"flex"`` on a CUDA device and ``"torch"`` elsewhere.

    Returns:
        ``([B, Lq, H, D]`` in ``q``'s dtype, log-sum-exp ``[B, H, Lq]`` fp32). A query row that sees none of the
        keys gets output 0 and log-sum-exp ``-inf``. Scale ``1/sqrt(D)``.
    """
    _check_qkv(q, k, v, same_length=False)
    grid = _triple("grid", grid)
    window = _triple("window", window)
    tile = default_tile(grid) if tile is None else tuple(min(t, g) for t, g in zip(_triple("tile", tile), grid))
    if not isinstance(num_text_tokens, int) or num_text_tokens < 0:
        raise ValueError(f"num_text_tokens={num_text_tokens!r} is not allowed: it must be an int >= 0")
    total = num_text_tokens + math.prod(grid)
    qp = _positions("q_positions", q_positions, q.shape[1], total, q.device)
    kp = _positions("k_positions", k_positions, k.shape[1], total, q.device)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
    if backend != "torch":
        backend = "flex" if backend == "flex" or q.device.type == "cuda" else "torch"
    if backend == "flex":
        return _flex_at(q, k, v, qp, kp, grid, window, tile, num_text_tokens)
    B, Lq, H, D = q.shape
    rows = max(1, row_budget // max(1, B * H * k.shape[1]))
    outs, lses = [], []
    for r0 in range(0, Lq, rows):
        mask = sliding_tile_mask_at(qp[r0:r0 + rows], kp, grid, window, tile, num_text_tokens)
        o, l = attention_lse_masked_naive(q[:, r0:r0 + rows], k, v, mask)
        outs.append(o)
        lses.append(l)
    return torch.cat(outs, 1), torch.cat(lses, 2)


def _flex_at(q, k, v, qp, kp, grid, window, tile, num_text_tokens):
    from torch.nn.attention import flex_attention as fa
    from torch.nn.attention.flex_attention import create_block_mask

    q_text, _, q_starts, w_tiles = window_factors(qp, grid, window, tile, num_text_tokens)
    k_text, k_tiles, _, _ = window_factors(kp, grid, window, tile, num_text_tokens)
    (s0, s1, s2), (t0, t1, t2), (w0, w1, w2) = q_starts, k_tiles, w_tiles

    def mask_mod(b, h, qi, ki):
        video = ((t0[ki] >= s0[qi]) & (t0[ki] < s0[qi] + w0) & (t1[ki] >= s1[qi]) & (t1[ki] < s1[qi] + w1)
                 & (t2[ki] >= s2[qi]) & (t2[ki] < s2[qi] + w2))
        return q_text[qi] | k_text[ki] | video

    block_mask = create_block_mask(mask_mod, None, None, q.shape[1], k.shape[1], device=q.device)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    run = _compiled_flex() if q.device.type == "cuda" or FLEX_COMPILE_ON_CPU else fa.flex_attention
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        if hasattr(fa, "AuxRequest"):  # torch >= 2.9
            out, aux = run(qt, kt, vt, block_mask=block_mask, return_aux=fa.AuxRequest(lse=True))
            lse = aux.lse
        else:
            out, lse = run(qt, kt, vt, block_mask=block_mask, return_lse=True)
    lse = lse.float()
    out = out.transpose(1, 2).masked_fill(torch.isinf(lse).transpose(1, 2).unsqueeze(-1), 0.0)
    return out, lse
