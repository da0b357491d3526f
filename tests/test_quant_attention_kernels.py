"""Quantized attention (INT8 Q·Kᵀ, FP8 / bf16 P·V) against its spec (naive.py) and against exact attention.

The Triton kernels run under ``TRITON_INTERPRET=1`` on CPU (set before Triton is imported), the torch backend
natively. Seeds are fresh each run and printed on failure.

Comparing with the spec: the score path (Q/K quantization, the INT8 dot, the bias) is exact up to fp32 rounding,
so the log-sum-exp must agree to 1e-4. The output goes through FP8 (or bf16) rounding of P: a 1-ulp difference in
a score (fp32 summation order, numpy's vs torch's exp2) moves a value that sits on an e4m3 rounding tie to the
other side, which changes that one query row by up to a few percent. So rows are compared one by one: at least
97 % of them within 1e-5 relative (one rounding step of the output dtype for fp16 / bf16 outputs), every one
within 10 %. A wrong scale, block or bias moves every row of a block (or the log-sum-exp) and fails.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math
import random
import re

import pytest
import torch
import triton
import triton.language as tl

import vidaccel.kernels
from vidaccel.kernels.attention import merge_attention
from vidaccel.kernels.attention.naive import attention_lse_naive, sliding_tile_mask
from vidaccel.kernels.quant_attention import (
    KEY_BLOCK,
    Q_BLOCK,
    naive,
    quant_attention,
    quant_attention_naive,
)
from vidaccel.kernels.quant_attention.wrapper import _kernels


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


@pytest.fixture
def seed():
    s = random.SystemRandom().randrange(2**31)
    torch.manual_seed(s)
    return s


def qkv(B, L, H, D, dtype=torch.float32, Lk=None, offset=1.0):
    """Random q, k, v with a per-channel offset (real Q/K carry one; smoothing removes it)."""
    Lk = L if Lk is None else Lk
    q = torch.randn(B, L, H, D) + offset * torch.randn(D)
    k = torch.randn(B, Lk, H, D) + offset * torch.randn(D)
    v = torch.randn(B, Lk, H, D)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def assert_matches_spec(out, lse, ref, ref_lse, what: str) -> None:
    assert torch.isfinite(out).all() and torch.isfinite(lse).all(), f"{what}: NaN/Inf in the output"
    lse_err = (lse - ref_lse).abs().max().item()
    assert lse_err <= 1e-4, f"{what}: log-sum-exp differs by {lse_err:.2e}"
    o, r = out.double(), ref.double()
    row_err = (o - r).norm(dim=-1) / r.norm(dim=-1).clamp_min(1e-6 * r.abs().max().item())
    # half-precision outputs: one rounding step of the output dtype may flip too
    tol = max(1e-5, torch.finfo(out.dtype).eps)
    off = (row_err > tol).double().mean().item()
    assert off <= 0.03, f"{what}: {off:.1%} of rows differ by more than {tol:.0e} (max {row_err.max().item():.2e})"
    assert row_err.max().item() <= 0.1, f"{what}: a row differs by {row_err.max().item():.2e}"


def rel_l2(out, ref) -> float:
    assert torch.isfinite(out).all(), "NaN/Inf in the output"
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


# -- against the spec ----------------------------------------------------------------------------------------
# (Lq, Lk, H, D, num_text_tokens, pv, smooth_q, dtype)
DENSE = [
    (63, 63, 2, 60, 0, "fp8", True, torch.float32),
    (63, 63, 2, 64, 7, "bf16", True, torch.bfloat16),
    (63, 63, 1, 128, 0, "fp8", False, torch.float16),
    (150, 300, 1, 128, 140, "fp8", True, torch.float32),  # Lq != Lk, text prefix longer than a key block
    (1000, 1000, 1, 64, 0, "fp8", True, torch.bfloat16),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", DENSE, ids=lambda c: f"{c[0]}x{c[1]}-h{c[2]}-d{c[3]}-t{c[4]}-{c[5]}-sq{int(c[6])}")
def test_dense_matches_spec(case, backend, seed):
    Lq, Lk, H, D, nt, pv, smooth_q, dtype = case
    if backend == "triton" and Lq >= 1000 and pv == "bf16":
        pytest.skip("one long interpreter run is enough")
    q, k, v = qkv(1, Lq, H, D, dtype, Lk=Lk)
    ref, ref_lse = quant_attention_naive(q, k, v, num_text_tokens=nt, pv=pv, smooth_q=smooth_q)
    out, lse = quant_attention(q, k, v, num_text_tokens=nt, pv=pv, smooth_q=smooth_q, backend=backend,
                               return_lse=True)
    assert out.dtype == dtype and out.shape == q.shape and lse.shape == (1, H, Lq)
    assert_matches_spec(out, lse, ref, ref_lse, f"{backend} {case} seed={seed}")


# (grid, window, tile, num_text_tokens, D, pv); L = text + T*H*W
SPARSE = [
    ((3, 3, 7), (2, 3, 4), (2, 3, 4), 0, 60, "fp8"),       # L = 63, ragged tiles
    ((2, 5, 6), (2, 4, 4), (2, 4, 4), 7, 128, "bf16"),     # text prefix, ragged tiles
    ((3, 8, 41), (2, 8, 32), (1, 8, 16), 16, 64, "fp8"),   # L = 1000, text prefix, ragged tiles
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", SPARSE, ids=lambda c: f"g{'x'.join(map(str, c[0]))}-t{c[3]}-d{c[4]}-{c[5]}")
def test_sliding_tile_matches_spec(case, backend, seed):
    grid, window, tile, nt, D, pv = case
    L = nt + math.prod(grid)
    q, k, v = qkv(1, L, 1 if L >= 1000 else 2, D)
    kw = dict(grid=grid, window=window, tile=tile, num_text_tokens=nt, pv=pv)
    ref, ref_lse = quant_attention_naive(q, k, v, **kw)
    out, lse = quant_attention(q, k, v, backend=backend, return_lse=True, **kw)
    assert_matches_spec(out, lse, ref, ref_lse, f"{backend} {case} seed={seed}")


def test_spec_sliding_tile_is_masked_attention(seed):
    """The sparse spec is softmax attention under the sliding-tile mask, up to the quantization error."""
    grid, window, tile, nt = (2, 4, 6), (1, 2, 3), (1, 2, 3), 3
    q, k, v = qkv(1, nt + math.prod(grid), 1, 32)
    out, _ = quant_attention_naive(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=nt)
    mask = sliding_tile_mask(grid, window, tile, nt)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(32)
    ref = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores.masked_fill(~mask, float("-inf")), -1), v)
    assert rel_l2(out, ref) < 0.05, f"seed={seed}"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_window_covering_grid_is_dense(backend, seed):
    grid, nt = (2, 3, 5), 4
    q, k, v = qkv(1, nt + 30, 1, 32)
    dense, dense_lse = quant_attention(q, k, v, num_text_tokens=nt, backend=backend, return_lse=True)
    full, full_lse = quant_attention(q, k, v, num_text_tokens=nt, grid=grid, window=(9, 9, 9), tile=(1, 2, 2),
                                     backend=backend, return_lse=True)
    assert torch.equal(dense, full) and torch.equal(dense_lse, full_lse), f"seed={seed}"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_strided_inputs(backend, seed):
    """Any strides: [B, H, L, D] storage seen as [B, L, H, D] gives the same result as contiguous inputs."""
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in qkv(1, 40, 2, 32))
    assert not q.is_contiguous()
    out = quant_attention(q, k, v, backend=backend)
    ref = quant_attention(q.contiguous(), k.contiguous(), v.contiguous(), backend=backend)
    assert torch.equal(out, ref), f"seed={seed}"


# -- the quantization rules ----------------------------------------------------------------------------------
def test_int8_blocks(seed):
    """One scale per block, the block's amax maps to ±127, every value within half a step of its input."""
    x = torch.randn(2, 100, 3, 20) * torch.rand(100)[None, :, None, None] * 10
    pos = naive.layout_positions(100, num_text_tokens=9)
    xq, s = naive.quantize_int8_blocks(x, pos // Q_BLOCK)
    err = (xq.float() * s.permute(0, 2, 1)[..., None] - x).abs()
    assert (err <= s.permute(0, 2, 1)[..., None] * 0.5 * (1 + 1e-6)).all(), f"seed={seed}"
    blocks = pos // Q_BLOCK
    for blk in blocks.unique():
        rows = blocks == blk
        assert (s[:, :, rows] == s[:, :, rows][..., :1]).all()
        assert (xq[:, rows].abs().amax(dim=(1, 3)) == 127).all()
    # the text prefix (9 tokens) forms its own block
    assert blocks[:9].unique().numel() == 1 and not (set(blocks[9:].tolist()) & set(blocks[:9].tolist()))


def test_layout_positions_keep_text_apart():
    """Dense layout: text at 0 .., video from the next whole key block on."""
    pos = naive.layout_positions(300, num_text_tokens=KEY_BLOCK + 6)
    start = 2 * KEY_BLOCK
    assert pos[: KEY_BLOCK + 6].tolist() == list(range(KEY_BLOCK + 6))
    assert pos[KEY_BLOCK + 6 :].tolist() == list(range(start, start + 300 - KEY_BLOCK - 6))


_TK = _kernels()  # the kernel module as the wrapper loads it (interpreter mode)


@triton.jit
def _round_kernel(X, Y8, Y16, n: tl.constexpr):
    r = tl.arange(0, n)
    x = tl.load(X + r)
    tl.store(Y8 + r, _TK._round_fp8(x))
    tl.store(Y16 + r, _TK._round_bf16(x))


def test_interpreter_rounding_helpers(seed):
    """The fp32 rounding the kernels use under the interpreter equals torch's e4m3 / bf16 casts (ties included)."""
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)].unique()
    ties = (grid[1:] + grid[:-1]) / 2  # exact midpoints: round to even
    x = torch.cat([grid, ties, -ties, (torch.rand(2000) * 2 - 1) * 448, torch.rand(1000) * 0.02,
                   torch.randn(1000) * 1e-3])
    n = 1 << (x.numel() - 1).bit_length()
    x = torch.cat([x, torch.zeros(n - x.numel())]).clamp(-448, 448)
    y8, y16 = torch.empty_like(x), torch.empty_like(x)
    _round_kernel[(1,)](x, y8, y16, n=n)
    assert torch.equal(y8, x.to(torch.float8_e4m3fn).float()), f"seed={seed}"
    assert torch.equal(y16, x.to(torch.bfloat16).float()), f"seed={seed}"


def test_smoothing_k_is_exact_and_lse_keeps_true_scores(seed):
    """A per-channel offset on K (20 σ) leaves softmax unchanged and smoothing removes it before quantization, so
    the output stays put; the returned log-sum-exp still includes ``scale · q·offset``.

    Not bit-exact: ``k + offset`` is rounded in fp32 (ulp 4e-6 at 40), which flips an INT8 rounding here and there
    (~1e-4 of the values); unsmoothed, the offset would set the INT8 step to ~0.5 σ and move the output by tens of
    percent."""
    q, k, v = qkv(1, 63, 2, 64)
    shift = torch.randn(64) * 20
    out, lse = quant_attention(q, k, v, backend="torch", return_lse=True)
    out2, lse2 = quant_attention(q, k + shift, v, backend="torch", return_lse=True)
    expected = lse + torch.einsum("blhd,d->bhl", q, shift) / math.sqrt(64)
    assert (lse2 - expected).abs().max().item() < 0.01, f"seed={seed}"
    assert rel_l2(out2, out) < 0.01, f"seed={seed}"


def test_smooth_q_removes_a_query_offset(seed):
    """A large per-channel Q offset (a shared bias of the projection) costs INT8 resolution; smooth_q removes it.

    K has no component along the offset, so the offset adds the same score to every key (exact attention does
    not change) and only the quantization of Q sees it."""
    q, k, v = qkv(1, 200, 2, 64, offset=0.0)
    offset = 30 * torch.randn(64)
    u = offset / offset.norm()
    k = k - torch.einsum("blhd,d->blh", k, u)[..., None] * u
    q = q + offset
    exact, _ = attention_lse_naive(q, k, v)
    with_sq = rel_l2(quant_attention(q, k, v, backend="torch", smooth_q=True, pv="bf16"), exact)
    without = rel_l2(quant_attention(q, k, v, backend="torch", smooth_q=False, pv="bf16"), exact)
    assert with_sq < 0.5 * without, f"smooth_q error {with_sq:.3e} vs {without:.3e}, seed={seed}"


# -- against exact attention ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pv, bound", [("fp8", 0.05), ("bf16", 0.025)])
@pytest.mark.parametrize("L, D", [(63, 64), (1000, 128)])
def test_error_vs_exact_attention(L, D, pv, bound, seed):
    """The error budget of the method on Gaussian data: e4m3 keeps 3 mantissa bits (≈1.8 % RMS rounding of each of
    P and V), INT8 Q·Kᵀ ≈ 1 % of a score's spread. Also the log-sum-exp (fp32 sums of INT8 scores)."""
    q, k, v = qkv(1, L, 2, D)
    exact, exact_lse = attention_lse_naive(q, k, v)
    out, lse = quant_attention(q, k, v, pv=pv, backend="torch", return_lse=True)
    assert rel_l2(out, exact) < bound, f"seed={seed}"
    assert (lse - exact_lse).abs().max().item() < 0.1, f"seed={seed}"


def test_lse_merges_disjoint_key_sets(seed):
    """Two quantized attentions over halves of the keys merge (by their log-sum-exps) into attention over all."""
    q, k, v = qkv(1, 100, 2, 64)
    exact, _ = attention_lse_naive(q, k, v)
    o1, l1 = quant_attention(q, k[:, :37], v[:, :37], backend="torch", return_lse=True)
    o2, l2 = quant_attention(q, k[:, 37:], v[:, 37:], backend="torch", return_lse=True)
    merged, _ = merge_attention(o1, l1, o2, l2)
    assert rel_l2(merged, exact) < 0.05, f"seed={seed}"


# -- the public op -------------------------------------------------------------------------------------------
def test_package_is_callable_and_empty_inputs():
    q, k, v = qkv(1, 10, 1, 16)
    assert torch.equal(vidaccel.kernels.quant_attention(q, k, v, backend="torch"),
                       quant_attention(q, k, v, backend="torch"))
    empty = torch.zeros(1, 0, 1, 16)
    out, lse = quant_attention(empty, empty, empty, return_lse=True)
    assert out.shape == (1, 0, 1, 16) and lse.shape == (1, 1, 0)


def _bad_calls():
    q, k, v = qkv(1, 30, 2, 16)
    g = dict(grid=(2, 3, 5), window=(1, 2, 2))
    return [
        (dict(q=q[0]), "q must be a 4-D"),
        (dict(q=q.to(torch.int32)), "q.dtype"),
        (dict(k=k.half()), "share a dtype"),
        (dict(v=v[:, :20]), "k and v must have the same shape"),
        (dict(k=k[..., :8], v=v[..., :8]), "batch, heads and head dim"),
        (dict(q=torch.zeros(1, 30, 2, 300), k=torch.zeros(1, 30, 2, 300), v=torch.zeros(1, 30, 2, 300)),
         "head dim 300"),
        (dict(pv="fp16"), "pv='fp16'"),
        (dict(backend="flex"), "backend='flex'"),
        (dict(smooth_q=1), "smooth_q=1"),
        (dict(return_lse="yes"), "return_lse='yes'"),
        (dict(scale=-1.0), "scale=-1.0"),
        (dict(num_text_tokens=-1), "num_text_tokens=-1"),
        (dict(num_text_tokens=31), "num_text_tokens=31"),
        (dict(window=(1, 2, 2)), "needs grid="),
        (dict(grid=(2, 3, 5)), "window=None"),
        (dict(grid=(2, 3, 4), window=(1, 2, 2)), "num_text_tokens + T*H*W"),
        (dict(grid=(2, 3, 0), window=(1, 2, 2)), "grid=(2, 3, 0)"),
        (dict(tile=(1, 2), **g), "tile=(1, 2)"),
        (dict(k=k[:, :20], v=v[:, :20], **g), "one length"),
    ], (q, k, v)


def test_bad_inputs_raise_value_errors():
    calls, (q, k, v) = _bad_calls()
    for overrides, message in calls:
        args = dict(q=q, k=k, v=v)
        args.update(overrides)
        with pytest.raises(ValueError, match=re.escape(message)):
            quant_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def test_autotune_configs_and_prune():
    """The GPU autotuner's key names are kernel arguments, and its pruning keeps exactly the configs that fit."""
    tk = _TK
    at = tk.quant_attn_fwd_autotuned
    assert set(at.keys) <= set(tk.quant_attn_fwd.arg_names)
    assert [c["BLOCK_M"] for c in tk.prune_configs(tk.AUTOTUNE_CONFIGS, 192, 128)] == [64, 64]
    assert {c["BLOCK_M"] for c in tk.prune_configs(tk.AUTOTUNE_CONFIGS, 0, 128)} == {64, 128}
    assert {c["BLOCK_M"] for c in tk.prune_configs(tk.AUTOTUNE_CONFIGS, 256, 256)} == {64}
    kept = tk._early_prune(at.configs, {}, UNIT=256, BLOCK_D=64)
    assert len(kept) == len(tk.AUTOTUNE_CONFIGS)
    assert {c.kwargs["BLOCK_M"] for c in tk._early_prune(at.configs, {}, UNIT=192, BLOCK_D=64)} == {64}
    with pytest.raises(ValueError, match="unit=96"):
        tk.prune_configs(tk.AUTOTUNE_CONFIGS, 96, 64)
