"""Linear-attention kernels against their spec (naive.py): Triton (interpreter), torch, awkward shapes.

The Triton kernels run under ``TRITON_INTERPRET=1`` on CPU (set before Triton is imported), so shapes stay
small. Seeds are fresh each run and printed on failure. The Triton backend computes its MMAs on 16-bit operands
(bf16, or fp16 when every input is fp16) with fp32 accumulation and state: each Triton result is checked tightly
against :func:`emulate16` (the spec with exactly those roundings) and loosely against the fp32 spec.
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
from vidaccel.kernels.linear_attention.naive import FIXED_FEATURE_MAPS, elu_feature_map
from vidaccel.kernels.linear_attention.wrapper import rope_rotate

TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
#: Triton backend vs the fp32 spec: 16-bit MMA operands (measured 1.6e-3 .. 3.4e-3 with fp32 inputs)
TOL_MMA16 = 6e-3


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


#: Bound on the kernels' fp32 accumulation error of the state, relative to ``Σ |k| |v|`` (measured up to 2^-23
#: over 150 causal chunks of up to 1000 tokens; 8x margin).
STATE_ACC_ERR = 2.0**-20


def _bf_ulp(x: torch.Tensor, dot: torch.dtype) -> torch.Tensor:
    """One unit in the last place of ``x`` in ``dot`` (bf16 / fp16), elementwise, in float64."""
    finfo = torch.finfo(dot)
    return finfo.eps * torch.exp2(torch.floor(torch.log2(x.abs().clamp_min(finfo.tiny))))


def emulate16(qn, kn, v, qd=None, kd=None, *, causal=False, chunk=None, dot=torch.bfloat16, eps=1e-6):
    """The Triton kernels' numerics in torch: numerator features and values rounded to ``dot`` (nearest even), the
    state summed exactly (float64) and rounded to ``dot`` for the output MMA, the denominator in fp32.

    Returns ``(out, slack)``. The kernels sum the state in fp32 in their own order: where the exact state lies
    within that summation error (:data:`STATE_ACC_ERR`) of a ``dot`` rounding midpoint, the kernel may round it
    to the other neighbour. ``slack`` is the largest output change those state entries can make (one ``dot`` ulp
    each, times ``|q| / |den|``); every other difference is an error. See :func:`emu_err`."""
    def r(x):
        return x.to(dot).double()

    qd = qn if qd is None else qd
    kd = kn if kd is None else kd
    B, L, H, _ = v.shape
    chunk = L if not causal else chunk
    F, D = qn.shape[-1], v.shape[-1]
    S = torch.zeros(B, H, F, D, dtype=torch.float64)
    A = torch.zeros(B, H, F, D, dtype=torch.float64)  # Σ |k| |v|: the scale of the summation error
    z = torch.zeros(B, H, F)
    out = torch.empty(B, L, H, D)
    slack = torch.zeros(B, L, H, D, dtype=torch.float64)
    for s in range(0, L, chunk):
        sl = slice(s, min(s + chunk, L))
        kr, vr = r(kn[:, sl]), r(v[:, sl])
        S = S + torch.einsum("blhf,blhd->bhfd", kr, vr)
        A = A + torch.einsum("blhf,blhd->bhfd", kr.abs(), vr.abs())
        z = z + kd[:, sl].float().sum(1)
        delta = STATE_ACC_ERR * A
        ambiguous = (S - delta).to(dot) != (S + delta).to(dot)
        qr = r(qn[:, sl])
        num = torch.einsum("blhf,bhfd->blhd", qr, r(S)).float()
        den = torch.einsum("blhf,bhf->blh", qd[:, sl].float(), z)
        out[:, sl] = num / (den[..., None] + eps)
        flip = torch.where(ambiguous, _bf_ulp(S, dot), 0.0)
        slack[:, sl] = torch.einsum("blhf,bhfd->blhd", qr.abs(), flip) / (den[..., None].double() + eps).abs()
    return out.to(v.dtype), slack


def emu_err(out: torch.Tensor, emulated: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Relative error of ``out`` against :func:`emulate16`'s output beyond its state-rounding ``slack``."""
    emu, slack = emulated
    if not torch.isfinite(out).all():
        return float("inf")
    excess = ((out.double() - emu.double()).abs() - slack).clamp_min(0)
    return float(excess.norm() / emu.double().norm().clamp_min(1e-30))


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
    if backend == "torch":
        assert rel_err(out, ref) <= TOL[torch.float32], f"seed={seed}"
    else:  # fp32 inputs are computed with bf16 MMA operands
        assert emu_err(out, emulate16(q, k, v, causal=causal, chunk=chunk)) <= 2e-5, f"seed={seed}"
        assert rel_err(out, ref) <= TOL_MMA16, f"seed={seed}"


def test_emulation_slack_covers_only_rounding_ties(seed):
    """The state-rounding slack of :func:`emulate16` does not hide real differences: the unrounded fp32 spec and
    a neighbouring chunking both fail the tight bound the kernels are held to."""
    q, k, v = features(1, 1000, 1, 16, torch.float32)
    emulated = emulate16(q, k, v, causal=True, chunk=333)
    emu, slack = emulated
    assert float(slack.norm() / emu.norm()) <= 1e-3, f"seed={seed}"
    assert emu_err(linear_attention_naive(q, k, v, causal=True, chunk=333), emulated) > 20 * 2e-5, f"seed={seed}"
    assert emu_err(emulate16(q, k, v, causal=True, chunk=334)[0], emulated) > 20 * 2e-5, f"seed={seed}"
    assert emu_err(emu, emulated) == 0.0
    assert emu_err(torch.full_like(emu, float("nan")), emulated) == float("inf")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_triton_half_precision(dtype, causal, seed):
    q, k, v = features(1, 70, 2, 32, dtype, hedgehog=True)
    chunk = 24 if causal else None
    ref = linear_attention_naive(q.float(), k.float(), v.float(), causal=causal, chunk=chunk)
    out = linear_attention_features(q, k, v, causal=causal, chunk=chunk, backend="triton")
    assert out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype], f"seed={seed}"
    assert emu_err(out, emulate16(q, k, v, causal=causal, chunk=chunk, dot=dtype)) <= TOL[dtype] / 4, f"seed={seed}"


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
    if backend == "torch":
        assert rel_err(out, ref) <= 1e-5, f"seed={seed}"
    else:
        emu = emulate16(rope(fq), rope(fk), v, fq, fk, causal=True, chunk=10)
        assert emu_err(out, emu) <= 2e-5, f"seed={seed}"
        assert rel_err(out, ref) <= TOL_MMA16, f"seed={seed}"
    plain = linear_attention(q, k, v, feature_map="elu", causal=True, chunk=10, backend=backend)
    assert rel_err(plain, ref) > 1e-3  # the rotation matters
    # the same rotation given as cos/sin tables (diffusers' [1, L, 1, D/2] or [L, D/2]): the fused path on triton
    for tables in ((cos, sin), (cos.reshape(L, D // 2), sin.reshape(L, D // 2))):
        out_t = linear_attention(q, k, v, feature_map="elu", rope=tables, causal=True, chunk=10, backend=backend)
        assert rel_err(out_t, ref) <= (1e-5 if backend == "torch" else TOL_MMA16), f"seed={seed}"


def _hedgehog(H, D):
    fm = HedgehogFeatureMap(H, D)
    with torch.no_grad():  # away from the identity initialisation: a generic trained map
        fm.weight.add_(torch.randn_like(fm.weight) * 0.2)
        fm.bias.add_(torch.randn_like(fm.bias) * 0.3)
    return fm.requires_grad_(False)


# (B, L, H, D, causal, chunk): ragged L, head dims not a power of two, chunks not dividing L
FUSED_CASES = [(1, 63, 2, 60, False, None), (2, 50, 1, 24, True, 16), (1, 300, 1, 16, True, 128)]


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: f"B{c[0]}L{c[1]}H{c[2]}D{c[3]}" + (f"c{c[5]}" if c[4] else "bi"))
@pytest.mark.parametrize("feature", ["elu", "relu", "hedgehog"])
@pytest.mark.parametrize("rope", [False, True])
def test_fused_feature_map_kernels_match_spec(case, feature, rope, seed):
    """Features (and the numerator's RoPE) computed inside the kernels: against the spec with the kernels'
    16-bit roundings (tight) and the fp32 spec (loose). fp32 inputs holding bf16 values, so the output is not
    rounded (the interpreter's fp32 -> bf16 store truncates)."""
    B, L, H, D, causal, chunk = case
    q, k, v = (torch.randn(B, L, H, D).bfloat16().float() for _ in range(3))
    fm = _hedgehog(H, D) if feature == "hedgehog" else feature
    phi = fm if feature == "hedgehog" else FIXED_FEATURE_MAPS[feature]
    theta = torch.rand(L, D // 2) * 6.0
    # tables holding fp16 values: the kernels read cos/sin in fp16
    tables = (theta.cos().half().float(), theta.sin().half().float()) if rope else None
    out = linear_attention(q, k, v, feature_map=fm, rope=tables, causal=causal, chunk=chunk, backend="triton")
    assert out.shape == v.shape and out.dtype == v.dtype
    fq, fk = phi(q), phi(k)
    nq, nk = (rope_rotate(fq, *tables), rope_rotate(fk, *tables)) if rope else (fq, fk)
    emu = emulate16(nq, nk, v, fq, fk, causal=causal, chunk=chunk)
    # the kernels compute the features themselves (Hedgehog: W as two bf16 parts, exp; elu: exp(x) where torch
    # takes expm1(x) + 1), equal to torch's to ~1e-6: a few round to the neighbouring bf16 value (one step, 2^-8
    # relative) as MMA operands
    assert emu_err(out, emu) <= 1e-3, f"seed={seed}"
    ref = linear_attention_naive(nq, nk, v, q_den=fq, k_den=fk, causal=causal, chunk=chunk)
    assert rel_err(out, ref) <= TOL_MMA16, f"seed={seed}"
    torch_out = linear_attention(q, k, v, feature_map=fm, rope=tables, causal=causal, chunk=chunk, backend="torch")
    assert rel_err(torch_out, ref) <= 1e-5, f"seed={seed}"


@pytest.mark.parametrize("feature", ["elu", "hedgehog"])
def test_fused_kernels_bf16_inputs(feature, seed):
    B, L, H, D = 1, 63, 2, 60
    q, k, v = (torch.randn(B, L, H, D).bfloat16() for _ in range(3))
    fm = _hedgehog(H, D) if feature == "hedgehog" else feature
    theta = torch.rand(L, D // 2) * 6.0
    tables = (theta.cos(), theta.sin())
    out = linear_attention(q, k, v, feature_map=fm, rope=tables, causal=True, chunk=21, backend="triton")
    assert out.dtype == torch.bfloat16
    ref = linear_attention(q.float(), k.float(), v.float(), feature_map=fm, rope=tables, causal=True, chunk=21,
                           backend="torch")
    assert rel_err(out, ref) <= TOL_MMA16 + 2**-8, f"seed={seed}"  # + the bf16 output (truncated here)


def test_fused_kernels_fp32_and_fp16_inputs(seed):
    B, L, H, D = 1, 40, 2, 32
    q, k, v = (torch.randn(B, L, H, D) for _ in range(3))
    fm = _hedgehog(H, D)
    theta = torch.rand(L, D // 2) * 6.0
    tables = (theta.cos(), theta.sin())
    ref = linear_attention(q, k, v, feature_map=fm, rope=tables, backend="torch")
    out = linear_attention(q, k, v, feature_map=fm, rope=tables, backend="triton")
    assert out.dtype == torch.float32 and rel_err(out, ref) <= TOL_MMA16, f"seed={seed}"
    h = [t.half() for t in (q, k, v)]
    out = linear_attention(*h, feature_map=fm, rope=tables, backend="triton")
    ref = linear_attention(*(t.float() for t in h), feature_map=fm, rope=tables, backend="torch")
    assert out.dtype == torch.float16 and rel_err(out, ref) <= TOL[torch.float16], f"seed={seed}"


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
    with pytest.raises(ValueError, match=r"rope cos has shape \(10, 3\); expected L x D/2 = 10 x 4"):
        linear_attention(q, q, q, rope=(torch.ones(10, 3), torch.ones(10, 3)))
    with pytest.raises(ValueError, match="rope=list is not allowed"):
        linear_attention(q, q, q, rope=[torch.ones(10, 4), torch.ones(10, 4)])
    big = torch.randn(1, 4, 1, 260)
    with pytest.raises(ValueError, match="head dim 260; backend='triton' allows at most 256"):
        linear_attention_features(big, big, big, backend="triton")
