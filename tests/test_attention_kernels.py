"""Attention kernels against their spec (naive.py): every backend, awkward shapes, fp32/fp16/bf16.

The Triton kernel runs under ``TRITON_INTERPRET=1`` on CPU (set here before Triton is imported), so shapes
stay small. Seeds are fresh each run and printed on failure.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import json
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vidaccel.kernels.attention import (
    flash_attention,
    merge_attention,
    sliding_tile_attention,
    sliding_tile_density,
    sliding_tile_mask,
    tile_plan,
    window_in_tiles,
)
from vidaccel.kernels.attention import triton_kernel as tk
from vidaccel.kernels.attention import wrapper
from vidaccel.kernels.attention.layout import DEFAULT_TILE, best_tile
from vidaccel.kernels.attention.naive import attention_lse_naive, attention_naive, sliding_tile_attention_naive
from vidaccel.kernels.attention.triton_kernel import AUTOTUNE_CONFIGS, prune_configs

SPARSE_BACKENDS = ["torch", "gather", "flex", "triton"]
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@pytest.fixture
def seed():
    s = random.SystemRandom().randrange(2**31)
    torch.manual_seed(s)
    return s


def assert_rel_close(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "") -> None:
    """Relative L2 error below ``tol``; NaN or Inf anywhere fails."""
    assert torch.isfinite(out).all(), f"{what}: output has NaN/Inf"
    err = ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-12)).item()
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


def qkv(B, L, H, D, dtype=torch.float32, Lk=None):
    Lk = L if Lk is None else Lk
    return (torch.randn(B, L, H, D).to(dtype), torch.randn(B, Lk, H, D).to(dtype), torch.randn(B, Lk, H, D).to(dtype))


# (grid, window, tile, num_text_tokens, head dim); L = text + T*H*W
CASES = [
    ((3, 3, 7), (1, 2, 4), (1, 2, 4), 0, 60),      # L = 63, ragged tiles
    ((2, 4, 8), (2, 4, 8), (1, 4, 8), 0, 64),      # tiles fill the unit exactly, window = half the grid
    ((2, 5, 6), (2, 4, 4), (2, 4, 4), 7, 128),     # text prefix, ragged tiles
    ((5, 10, 20), (2, 8, 8), (1, 4, 8), 0, 64),    # L = 1000
]


@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"grid{c[0]}-win{c[1]}-tile{c[2]}-text{c[3]}-D{c[4]}")
def test_sliding_tile_matches_naive_fp32(case, backend, seed):
    grid, window, tile, ntext, D = case
    L = ntext + math.prod(grid)
    B, H = (1, 1) if L >= 1000 else (2, 2)
    q, k, v = qkv(B, L, H, D)
    ref = sliding_tile_attention_naive(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=ntext)
    out = sliding_tile_attention(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=ntext, backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_rel_close(out, ref, TOL[torch.float32], f"{backend} seed={seed}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", ["torch", "gather", "triton"])
def test_sliding_tile_half_precision(dtype, backend, seed):
    grid, window, tile, ntext = (2, 6, 6), (1, 4, 4), (1, 4, 4), 5
    L = ntext + math.prod(grid)
    q, k, v = qkv(1, L, 2, 64, dtype)
    ref = sliding_tile_attention_naive(q.float(), k.float(), v.float(), grid=grid, window=window, tile=tile,
                                       num_text_tokens=ntext)
    out = sliding_tile_attention(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=ntext, backend=backend)
    assert out.dtype == dtype
    assert_rel_close(out.float(), ref, TOL[dtype], f"{backend} {dtype} seed={seed}")


@pytest.mark.parametrize("backend", ["torch", "flex", "triton"])
@pytest.mark.parametrize("Lq,Lk,D", [(63, 100, 60), (200, 63, 128), (1000, 130, 64)])
def test_flash_attention_ragged(Lq, Lk, D, backend, seed):
    q, k, v = qkv(1, Lq, 2, D, Lk=Lk)
    out = flash_attention(q, k, v, backend=backend)
    assert out.shape == q.shape
    assert_rel_close(out, attention_naive(q, k, v), TOL[torch.float32], f"{backend} seed={seed}")


@pytest.mark.parametrize("backend", ["torch", "flex", "triton"])
@pytest.mark.parametrize("Lq,Lk,D", [(63, 100, 60), (130, 1000, 64)])
def test_flash_attention_log_sum_exp_and_merge(Lq, Lk, D, backend, seed):
    q, k, v = qkv(2, Lq, 2, D, Lk=Lk)
    ref_out, ref_lse = attention_lse_naive(q, k, v)
    out, lse = flash_attention(q, k, v, backend=backend, return_lse=True)
    assert lse.shape == (2, 2, Lq) and lse.dtype == torch.float32 and torch.isfinite(lse).all()
    assert_rel_close(out, ref_out, TOL[torch.float32], f"{backend} seed={seed}")
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5, msg=f"{backend} seed={seed}")
    # two disjoint key sets, merged by their log-sum-exps, give attention over all keys
    cut = Lk // 3
    o1, l1 = flash_attention(q, k[:, :cut], v[:, :cut], backend=backend, return_lse=True)
    o2, l2 = flash_attention(q, k[:, cut:], v[:, cut:], backend=backend, return_lse=True)
    merged, l12 = merge_attention(o1, l1, o2, l2)
    assert_rel_close(merged, ref_out, 1e-5, f"merge {backend} seed={seed}")
    torch.testing.assert_close(l12, ref_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_flash_attention_triton_half(dtype, seed):
    q, k, v = qkv(2, 70, 2, 64, dtype, Lk=90)
    out = flash_attention(q, k, v, backend="triton")
    assert out.dtype == dtype
    assert_rel_close(out.float(), attention_naive(q.float(), k.float(), v.float()), TOL[dtype], f"seed={seed}")


@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
def test_window_covering_everything_is_dense(backend, seed):
    grid, ntext = (3, 4, 5), 4
    q, k, v = qkv(1, ntext + 60, 2, 32)
    out = sliding_tile_attention(q, k, v, grid=grid, window=(3, 4, 5), tile=(1, 2, 2), num_text_tokens=ntext,
                                 backend=backend)
    big = sliding_tile_attention(q, k, v, grid=grid, window=(99, 99, 99), tile=(2, 3, 3), num_text_tokens=ntext,
                                 backend=backend)
    dense = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    assert_rel_close(out, dense, 1e-5, f"{backend} seed={seed}")
    assert_rel_close(big, dense, 1e-5, f"{backend} seed={seed}")


@pytest.mark.parametrize("backend", ["gather", "triton"])
def test_text_prefix_is_global(backend, seed):
    grid, ntext = (2, 4, 8), 6
    q, k, v = qkv(1, ntext + 64, 2, 32)
    out = sliding_tile_attention(q, k, v, grid=grid, window=(1, 4, 4), tile=(1, 4, 4), num_text_tokens=ntext,
                                 backend=backend)
    # text queries see every token
    assert_rel_close(out[:, :ntext], attention_naive(q[:, :ntext], k, v), 1e-5, "text rows")
    # every video query sees every text key: changing only text values changes every video output
    v2 = v.clone()
    v2[:, :ntext] += 1.0
    out2 = sliding_tile_attention(q, k, v2, grid=grid, window=(1, 4, 4), tile=(1, 4, 4), num_text_tokens=ntext,
                                  backend=backend)
    assert ((out2[:, ntext:] - out[:, ntext:]).abs().amax(dim=(0, 2, 3)) > 1e-6).all()
    mask = sliding_tile_mask(grid, (1, 4, 4), (1, 4, 4), ntext)
    assert mask[:ntext].all() and mask[:, :ntext].all() and not mask.all()


# -- properties of the tiling (fast: no kernels except gather) -------------------------------------
dims = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6))


@settings(max_examples=25, deadline=None)
@given(grid=dims, window=dims, tile=dims, ntext=st.integers(0, 5))
def test_plan_reproduces_spec_mask(grid, window, tile, ntext):
    """The per-unit key lists the kernels use, mapped back to sequence order, are exactly the spec's mask."""
    mask = sliding_tile_mask(grid, window, tile, ntext)
    plan = tile_plan(grid, window, tile, ntext, align=4)
    allowed = torch.zeros(plan.n_units, plan.n_units, dtype=torch.bool)
    for u, c in enumerate(plan.counts.tolist()):
        allowed[u, plan.table[u, :c].long()] = True
    unit_of = plan.dst // plan.unit
    assert torch.equal(allowed[unit_of][:, unit_of], mask)
    assert plan.key_valid.sum() == mask.shape[0]
    assert torch.equal(plan.src[plan.dst], torch.arange(mask.shape[0]))
    assert math.isclose(sliding_tile_density(grid, window, tile, ntext), mask.double().mean().item(), rel_tol=1e-9)


@settings(max_examples=25, deadline=None)
@given(grid=dims, window=dims, tile=dims)
def test_every_query_sees_a_full_window(grid, window, tile):
    """Windows shift inward at borders: every query keeps the same number of key tiles, its own among them."""
    mask = sliding_tile_mask(grid, window, tile)
    w = window_in_tiles(grid, window, tile)
    coords = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij"), -1).reshape(-1, 3)
    tiles = coords // torch.tensor(tile)
    for qi in range(0, mask.shape[0], max(1, mask.shape[0] // 7)):
        seen = {tuple(t) for t in tiles[mask[qi]].tolist()}
        assert len(seen) == math.prod(w)
        assert tuple(tiles[qi].tolist()) in seen
        for d in range(3):  # contiguous range of tiles per dimension
            span = sorted({t[d] for t in seen})
            assert span == list(range(span[0], span[0] + w[d]))
    if all(wi >= g for wi, g in zip(window, grid)):
        assert mask.all()


@settings(max_examples=15, deadline=None)
@given(grid=dims, window=dims, tile=dims, ntext=st.integers(0, 4), D=st.sampled_from([8, 12, 16]))
def test_gather_backend_property(grid, window, tile, ntext, D):
    q, k, v = qkv(1, ntext + math.prod(grid), 2, D)
    ref = sliding_tile_attention_naive(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=ntext)
    out = sliding_tile_attention(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=ntext, backend="gather")
    assert_rel_close(out, ref, 1e-5, "gather")


@settings(max_examples=6, deadline=None)
@given(grid=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
       window=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
       tile=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3)), ntext=st.integers(0, 3))
def test_triton_backend_property(grid, window, tile, ntext):
    q, k, v = qkv(1, ntext + math.prod(grid), 1, 16)
    ref = sliding_tile_attention_naive(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=ntext)
    out = sliding_tile_attention(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=ntext, backend="triton")
    assert_rel_close(out, ref, 1e-5, "triton")


# -- validation and config pruning ------------------------------------------------------------------
def test_errors_name_field_value_and_allowed():
    q, k, v = qkv(1, 24, 1, 16)
    kw = dict(grid=(2, 3, 4), window=(1, 2, 2))
    with pytest.raises(ValueError, match=r"window=\(0, 2, 2\).*>= 1"):
        sliding_tile_attention(q, k, v, grid=(2, 3, 4), window=(0, 2, 2))
    with pytest.raises(ValueError, match=r"tile=\(1, 2\).*three integers"):
        sliding_tile_attention(q, k, v, tile=(1, 2), **kw)
    with pytest.raises(ValueError, match="backend='cuda'.*allowed: auto, triton, flex, gather, torch"):
        sliding_tile_attention(q, k, v, backend="cuda", **kw)
    with pytest.raises(ValueError, match="q has 24 tokens.*5 \\+ 24"):
        sliding_tile_attention(q, k, v, num_text_tokens=5, **kw)
    with pytest.raises(ValueError, match="dtype"):
        sliding_tile_attention(q.double(), k.double(), v.double(), **kw)
    with pytest.raises(ValueError, match="share a dtype"):
        flash_attention(q, k.half(), v.half())
    with pytest.raises(ValueError, match="4-D"):
        flash_attention(q[0], k, v)


def test_autotune_configs_are_pruned_by_unit():
    assert all(c["BLOCK_M"] <= 32 and c["BLOCK_N"] <= 32 for c in prune_configs(AUTOTUNE_CONFIGS, 32, 64))
    assert len(prune_configs(AUTOTUNE_CONFIGS, 256, 128)) == len(AUTOTUNE_CONFIGS)
    assert prune_configs(AUTOTUNE_CONFIGS, 0, 64)[0] == AUTOTUNE_CONFIGS[0]
    with pytest.raises(ValueError, match="unit=8"):
        prune_configs(AUTOTUNE_CONFIGS, 8, 64)


def test_configs_that_can_only_lose_are_pruned_per_architecture():
    """On sm_90 / sm_100 a warpgroup needs 64 query rows for wgmma / tcgen05: BM16 / BM32 would run mma.sync."""
    for cap in (90, 100):
        kept = prune_configs(AUTOTUNE_CONFIGS, 0, 128, cap)
        assert kept and all(c["BLOCK_M"] >= 16 * c["num_warps"] for c in kept)
        assert not any(c["BLOCK_M"] <= 32 for c in kept)
    assert any(c["BLOCK_M"] == 32 for c in prune_configs(AUTOTUNE_CONFIGS, 0, 128, 80))
    # Q plus the K/V stages must fit shared memory: head dim 256 on an sm_89 card (99 KB) keeps only small tiles
    for c in prune_configs(AUTOTUNE_CONFIGS, 0, 256, 89):
        assert (c["BLOCK_M"] + 2 * c["num_stages"] * c["BLOCK_N"]) * 256 * 2 <= 101376


class _LaunchSpy:
    """Stands in for the jitted kernel: records each launch's config and runs the real kernel."""

    def __init__(self, kernel):
        self.kernel, self.configs = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.configs.append({k: kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")})
            return self.kernel[grid](*args, **kwargs)
        return launch


def test_pinned_config_from_environment(monkeypatch, seed):
    spy = _LaunchSpy(tk._attn_fwd)
    monkeypatch.setattr(tk, "_attn_fwd", spy)
    monkeypatch.setenv(tk.CONFIG_ENV, "BLOCK_M=16, BLOCK_N=32,num_warps=2,num_stages=2")
    q, k, v = qkv(1, 45, 2, 24, Lk=70)
    assert_rel_close(flash_attention(q, k, v, backend="triton"), attention_naive(q, k, v), 1e-5, f"seed={seed}")
    assert spy.configs == [dict(BLOCK_M=16, BLOCK_N=32, num_warps=2, num_stages=2)]
    # a pinned config whose blocks do not divide the tile unit cannot run a sparse launch
    monkeypatch.setenv(tk.CONFIG_ENV, "BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=2")
    q, k, v = qkv(1, 64, 1, 16)
    with pytest.raises(ValueError, match=r"VIDACCEL_ATTENTION_CONFIG=.*must divide the tile unit 32"):
        sliding_tile_attention(q, k, v, grid=(2, 4, 8), window=(1, 4, 4), tile=(1, 4, 4), backend="triton")


@pytest.mark.parametrize("text,match", [
    ("BLOCK_M=128,BLOCK_N=64,num_warps=8", "missing num_stages"),
    ("BLOCK_M=100,BLOCK_N=64,num_warps=8,num_stages=3", "BLOCK_M=100 is not allowed: a power of two >= 16"),
    ("BLOCK_M=128,BLOCK_N=64,num_warps=8,num_stages=3,GROUP=2", "'GROUP=2' is not allowed"),
    ("BLOCK_M=big,BLOCK_N=64,num_warps=8,num_stages=3", "BLOCK_M='big' is not an integer"),
    ("BLOCK_M=128,BLOCK_N=64,num_warps=3,num_stages=3", "num_warps=3 is not allowed"),
])
def test_pinned_config_is_validated(text, match):
    with pytest.raises(ValueError, match=match) as err:
        tk.parse_config(text)
    assert "VIDACCEL_ATTENTION_CONFIG" in str(err.value)


def test_autotune_results_are_cached_on_disk_per_device(tmp_path, monkeypatch):
    monkeypatch.setenv(tk.AUTOTUNE_DIR_ENV, str(tmp_path / "h100"))
    ms = {16: 3.0, 32: 1.0, 64: 2.0}
    ran = []

    def bench(fn):
        fn()
        return ms[ran[-1]["BLOCK_M"]]

    cands = [dict(BLOCK_M=m, BLOCK_N=16, num_warps=4, num_stages=2) for m in (16, 32, 64)]
    tuner = tk._Autotuner("attention", bench=bench)
    assert tuner.best("dense lq=4096", cands, ran.append, "cpu") == cands[1]
    assert len(ran) == 3
    saved = json.loads((tmp_path / "h100" / "attention.json").read_text())
    assert saved["dense lq=4096"]["config"] == cands[1]
    # a new process (a fresh tuner) reads the file instead of measuring
    assert tk._Autotuner("attention", bench=bench).best("dense lq=4096", cands, ran.append, "cpu") == cands[1]
    assert len(ran) == 3
    # a cached config that is no longer a candidate is measured again
    assert tk._Autotuner("attention", bench=bench).best("dense lq=4096", [cands[0], cands[2]], ran.append,
                                                        "cpu") == cands[2]
    assert len(ran) == 5


def test_autotune_dir_default_and_length_buckets(tmp_path, monkeypatch):
    monkeypatch.delenv(tk.AUTOTUNE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tk.autotune_dir("cpu") == str(tmp_path / "vidaccel" / "autotune" / "cpu")
    # lengths share a tuned config within a power-of-two bucket
    assert tk._bucket(32760) == tk._bucket(20000) == 32768 and tk._bucket(75600) == 131072
    assert tk._bucket(63) == 1024


def test_fp32_inputs_run_in_bf16_on_gpus(monkeypatch, seed):
    """On a GPU fp32 operands would run without tensor cores and spill: they run as bf16 with fp32 accumulation
    and an fp32 output. Under the interpreter the same launch (bf16 operands, fp32 output) is checked here."""
    monkeypatch.setattr(tk, "triton_interpreting", lambda: False)
    assert tk.compute_dtype(torch.float32, "cuda") == torch.bfloat16
    assert tk.compute_dtype(torch.float32, "cpu") == torch.float32
    assert tk.compute_dtype(torch.float16, "cuda") == torch.float16
    monkeypatch.undo()
    monkeypatch.setattr(tk, "compute_dtype", lambda dt, dev: torch.bfloat16 if dt == torch.float32 else dt)
    q, k, v = qkv(1, 70, 2, 64, Lk=90)
    out = tk.block_sparse_attention_triton(q, k, v)
    assert out.dtype == torch.float32
    ref = attention_naive(*(x.to(torch.bfloat16).float() for x in (q, k, v)))
    assert_rel_close(out, ref, TOL[torch.bfloat16], f"seed={seed}")


def test_long_video_lse_runs_the_triton_kernel_on_cuda(monkeypatch):
    monkeypatch.setattr(wrapper, "triton_available", lambda device=None: True)
    assert wrapper.dense_backend("auto", "cuda", return_lse=True) == "triton"
    assert wrapper.dense_backend("auto", "cuda", return_lse=False) == "torch"   # SDPA's flash attention
    assert wrapper.dense_backend("auto", "cpu", return_lse=True) == "torch"
    assert wrapper.dense_backend("flex", "cuda", return_lse=True) == "flex"


@pytest.mark.parametrize("Lq,Lk", [(64, 128), (130, 64), (1, 192)])
def test_flash_attention_triton_whole_key_blocks(Lq, Lk, seed):
    """Key lengths that are whole blocks: no masked tail block runs."""
    q, k, v = qkv(1, Lq, 2, 32, Lk=Lk)
    out, lse = flash_attention(q, k, v, backend="triton", return_lse=True)
    ref, ref_lse = attention_lse_naive(q, k, v)
    assert_rel_close(out, ref, 1e-5, f"seed={seed}")
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)


def test_default_tile_pads_at_most_ten_percent_at_real_grids():
    for grid, text in (((21, 30, 52), 0), ((21, 45, 80), 0), ((13, 30, 45), 226)):
        tile = wrapper.default_tile(grid, text)
        plan = tile_plan(grid, (12, 16, 24), tile, text, align=64)
        assert plan.padding <= 0.10, (grid, tile, plan.padding)
        sta = tile_plan(grid, (12, 16, 24), DEFAULT_TILE, text, align=64)
        assert plan.length < sta.length


@settings(max_examples=40, deadline=None)
@given(grid=st.tuples(st.integers(1, 24), st.integers(1, 48), st.integers(1, 64)), text=st.integers(0, 300))
def test_best_tile_never_pads_more_than_the_sta_tile(grid, text):
    tile = best_tile(grid, text)
    assert all(1 <= t <= g for t, g in zip(tile, grid))
    clipped = tuple(min(t, g) for t, g in zip(DEFAULT_TILE, grid))
    assert tile_plan(grid, grid, tile, text, align=64).length <= tile_plan(grid, grid, clipped, text, align=64).length


@pytest.mark.parametrize("backend", ["gather", "triton"])
def test_sliding_tile_with_searched_default_tile(backend, seed):
    grid, window, ntext = (4, 12, 24), (2, 6, 12), 5
    tile = wrapper.default_tile(grid, ntext)
    assert tile != tuple(min(t, g) for t, g in zip(DEFAULT_TILE, grid))  # the search, not the fallback
    q, k, v = qkv(1, ntext + math.prod(grid), 1, 16)
    ref = sliding_tile_attention_naive(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=ntext)
    out = sliding_tile_attention(q, k, v, grid=grid, window=window, num_text_tokens=ntext, backend=backend)
    assert_rel_close(out, ref, 1e-5, f"{backend} tile={tile} seed={seed}")


GPU_CHECK = """
import math, torch
from vidaccel.kernels.attention import flash_attention, sliding_tile_attention
torch.manual_seed(0)
grid, window, tile = (5, 30, 52), (4, 16, 24), (1, 8, 16)  # Wan-like: 12 heads, D=128, ragged tiles
# fp32 inputs are computed in bf16 with fp32 accumulation on a GPU (triton_kernel.compute_dtype): bf16's tolerance
for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 5e-3), (torch.float32, 3e-2)):
    q, k, v = (torch.randn(1, math.prod(grid), 12, 128, device="cuda", dtype=dtype) for _ in range(3))
    pairs = [(sliding_tile_attention(q, k, v, grid=grid, window=window, tile=tile, backend="triton"),
              sliding_tile_attention(q, k, v, grid=grid, window=window, tile=tile, backend="torch")),
             (flash_attention(q[:, :1000], k, v, backend="triton"), flash_attention(q[:, :1000], k, v, backend="torch"))]
    for out, ref in pairs:
        assert torch.isfinite(out).all()
        err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
        assert err < tol, (dtype, err)
print("ok")
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_on_gpu_matches_sdpa():
    """The compiled, autotuned kernel on a GPU (a subprocess: this module runs Triton's interpreter)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", GPU_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
