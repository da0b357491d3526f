"""Linear-attention kernels against their spec (naive.py): Triton (interpreter), torch, awkward shapes.

The Triton kernels run under ``TRITON_INTERPRET=1`` on CPU (set before Triton is imported), so shapes stay
small. Seeds are fresh each run and printed on failure.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import random

import pytest
import torch

from vidaccel.kernels.linear_attention import (
    HedgehogFeatureMap,
    LinearAttentionState,
    linear_attention,
    linear_attention_features,
    linear_attention_naive,
    softmax_attention_naive,
)
from vidaccel.kernels.linear_attention.naive import elu_feature_map

TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny shapes, no contention


@pytest.fixture
def seed():
    s = random.SystemRandom().randrange(2**31)
    torch.manual_seed(s)
    return s


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error; NaN/Inf anywhere gives ``inf`` so every tolerance check fails."""
    out, ref = out.double(), ref.double()
    if not (torch.isfinite(out).all() and torch.isfinite(ref).all()):
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def features(B, L, H, D, dtype, hedgehog=False):
    q, k, v = (torch.randn(B, L, H, D) for _ in range(3))
    if hedgehog:
        fm = HedgehogFeatureMap(H, D)
        with torch.no_grad():
            fq, fk = fm(q), fm(k)
    else:
        fq, fk = elu_feature_map(q), elu_feature_map(k)
    return fq.to(dtype), fk.to(dtype), v.to(dtype)


# (B, L, H, D, causal, chunk, hedgehog features)
CASES = [
    (1, 63, 2, 60, False, None, False),
    (2, 63, 1, 60, True, 16, True),
    (1, 1000, 1, 16, False, None, False),
    (1, 1000, 1, 16, True, 333, False),
    (2, 100, 3, 24, True, 7, True),
]


def _case_id(c) -> str:
    return f"B{c[0]}L{c[1]}H{c[2]}D{c[3]}" + (f"c{c[5]}" if c[4] else "bi")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_backends_match_naive_fp32(case, backend, seed):
    B, L, H, D, causal, chunk, hh = case
    q, k, v = features(B, L, H, D, torch.float32, hh)
    ref = linear_attention_naive(q, k, v, causal=causal, chunk=chunk)
    out = linear_attention_features(q, k, v, causal=causal, chunk=chunk, backend=backend)
    assert out.shape == v.shape and out.dtype == v.dtype
    assert rel_err(out, ref) <= TOL[torch.float32], f"seed={seed}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_triton_half_precision(dtype, causal, seed):
    q, k, v = features(1, 70, 2, 32, dtype, hedgehog=True)
    chunk = 24 if causal else None
    ref = linear_attention_naive(q.float(), k.float(), v.float(), causal=causal, chunk=chunk)
    out = linear_attention_features(q, k, v, causal=causal, chunk=chunk, backend="triton")
    assert out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype], f"seed={seed}"


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_separate_denominator_features_rope_in_numerator(backend, seed):
    """RoPE on the numerator only: rotated features in q·S, plain ones in the normaliser."""
    B, L, H, D = 1, 45, 2, 16
    q, k, v = (torch.randn(B, L, H, D) for _ in range(3))
    theta = torch.rand(1, L, 1, D // 2) * 6.0
    cos, sin = theta.cos(), theta.sin()

    def rope(x):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)

    out = linear_attention(q, k, v, feature_map="elu", rope=rope, causal=True, chunk=10, backend=backend)
    fq, fk = elu_feature_map(q), elu_feature_map(k)
    ref = linear_attention_naive(rope(fq), rope(fk), v, q_den=fq, k_den=fk, causal=True, chunk=10)
    assert rel_err(out, ref) <= 1e-5, f"seed={seed}"
    plain = linear_attention(q, k, v, feature_map="elu", causal=True, chunk=10, backend=backend)
    assert rel_err(plain, ref) > 1e-3  # the rotation matters


def test_block_causal_semantics(seed):
    B, L, H, D, chunk = 1, 50, 2, 12, 16
    q, k, v = features(B, L, H, D, torch.float32)
    out = linear_attention_features(q, k, v, causal=True, chunk=chunk, backend="torch")
    # the first chunk sees only itself: changing later keys/values leaves it alone, and it is the
    # bidirectional result on those 16 tokens
    k2, v2 = k.clone(), v.clone()
    k2[:, chunk:] += 1.0
    v2[:, chunk:] *= -3.0
    out2 = linear_attention_features(q, k2, v2, causal=True, chunk=chunk, backend="torch")
    assert torch.equal(out[:, :chunk], out2[:, :chunk])
    assert not torch.allclose(out[:, chunk:], out2[:, chunk:])
    first = linear_attention_features(q[:, :chunk], k[:, :chunk], v[:, :chunk], backend="torch")
    assert rel_err(out[:, :chunk], first) <= 1e-6
    # one chunk covering everything is bidirectional attention
    full = linear_attention_features(q, k, v, causal=True, chunk=L + 5, backend="torch")
    assert rel_err(full, linear_attention_features(q, k, v, backend="torch")) <= 1e-6


def test_running_state_equals_block_causal(seed):
    B, L, H, D, chunk = 2, 61, 2, 20, 13
    q, k, v = features(B, L, H, D, torch.float32, hedgehog=True)
    ref = linear_attention_naive(q, k, v, causal=True, chunk=chunk)
    state = LinearAttentionState(B, H, q.shape[-1], D)
    outs = [state.update(q[:, s:s + chunk], k[:, s:s + chunk], v[:, s:s + chunk]) for s in range(0, L, chunk)]
    assert state.S.shape == (B, H, 2 * D, D) and state.tokens == L  # constant size, whatever L
    assert rel_err(torch.cat(outs, 1), ref) <= 1e-5, f"seed={seed}"
    state.reset()
    assert state.tokens == 0 and not state.S.any()


def test_torch_backend_gradients_match_naive(seed):
    H, D = 2, 8
    fm = HedgehogFeatureMap(H, D)
    q, k, v = (torch.randn(1, 30, H, D) for _ in range(3))
    grads = []
    for run in (lambda: linear_attention(q, k, v, feature_map=fm, causal=True, chunk=7, backend="torch"),
                lambda: linear_attention_naive(fm(q), fm(k), v, causal=True, chunk=7)):
        fm.zero_grad()
        run().square().sum().backward()
        grads.append(fm.weight.grad.clone())
    assert rel_err(grads[0], grads[1]) <= 1e-5, f"seed={seed}"
    with pytest.raises(ValueError, match="no backward"):
        linear_attention(q, k, v, feature_map=fm, backend="triton")


def test_hedgehog_features_and_softmax_affinity(seed):
    """Hedgehog's initial kernel ranks keys like softmax: outputs correlate better than ELU's."""
    H, D, L = 2, 16, 64
    fm = HedgehogFeatureMap(H, D)
    x = torch.randn(1, L, H, D)
    with torch.no_grad():
        f = fm(x)
        assert f.shape == (1, L, H, 2 * D) and (f > 0).all()
        torch.testing.assert_close(f.sum(-1), torch.full((1, L, H), 2.0))
        q, k, v = (torch.randn(1, L, H, D) * 2 for _ in range(3))
        ref = softmax_attention_naive(q, k, v)
        hh = linear_attention(q, k, v, feature_map=fm, backend="torch")
    assert rel_err(hh, ref) < 1.0


def test_the_package_itself_is_the_public_op(seed):
    import vidaccel.kernels.linear_attention as la

    q, k, v = (torch.randn(1, 20, 2, 8) for _ in range(3))
    torch.testing.assert_close(la(q, k, v, feature_map="elu"), linear_attention(q, k, v, feature_map="elu"))
    assert la.naive.linear_attention_naive is linear_attention_naive


def test_validation_messages():
    q = torch.randn(1, 10, 2, 8)
    with pytest.raises(ValueError, match="chunk=None is not allowed with causal=True"):
        linear_attention(q, q, q, causal=True)
    with pytest.raises(ValueError, match="only meaningful with causal=True"):
        linear_attention(q, q, q, chunk=4)
    with pytest.raises(ValueError, match="feature_map='softmax' is not allowed"):
        linear_attention(q, q, q, feature_map="softmax")
    with pytest.raises(ValueError, match=r"4-D tensor \[B, L, H, D\]"):
        linear_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="length 9 but v has 10"):
        linear_attention(q, q[:, :9], q)
    with pytest.raises(ValueError, match="backend='cuda' is not allowed"):
        linear_attention(q, q, q, backend="cuda")
    with pytest.raises(ValueError, match="dtype=torch.float64 is not supported"):
        linear_attention(q.double(), q.double(), q.double())
    empty = torch.randn(1, 0, 2, 8)
    assert linear_attention(empty, empty, empty).shape == empty.shape
