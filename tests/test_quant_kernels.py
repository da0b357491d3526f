"""FP8 and NVFP4 kernels against their ``naive.py`` specs (Triton kernels run under TRITON_INTERPRET=1)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from vidaccel.kernels.fp8 import (
    Fp8Activation,
    Fp8ActivationCache,
    Fp8Weight,
    fp8_linear,
    quantize_activation,
    quantize_per_token,
)
from vidaccel.kernels.fp8 import naive as fp8_naive
from vidaccel.kernels.nvfp4 import NVFP4Weight, nvfp4_dequantize, nvfp4_linear
from vidaccel.kernels.nvfp4 import naive as nv_naive

SHAPES = [(1, 100, 72), (63, 100, 72), (1000, 40, 24)]  # (M, K, N): K not a multiple of 64 (the interpreter block)
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny shapes, no contention


@pytest.fixture
def interpret(monkeypatch):
    """Run Triton kernels on CPU through the interpreter (kernels are compiled per mode, on first use)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|; inf when either holds NaN/Inf (so a NaN can never pass)."""
    out, ref = out.double(), ref.double()
    if not (torch.isfinite(out).all() and torch.isfinite(ref).all()):
        return float("inf")
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))


def _data(m, k, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g) * 2, torch.randn(n, k, generator=g) * 0.05, torch.randn(n, generator=g)


# -- FP8 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,k,n", SHAPES + [(300, 192, 40)])
def test_fp8_per_token_quant_kernel_bit_exact(interpret, m, k, n):
    x, _, _ = _data(m, k, n, seed=m * k)
    x[0, :] = 0.0  # an all-zero token
    q, s = quantize_per_token(x, backend="triton")
    q_ref, s_ref = fp8_naive.quantize_per_token(x)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert torch.equal(s, s_ref)


@pytest.mark.parametrize("m,k,n", SHAPES + [(70, 192, 40)])  # K % 64 == 0: the GEMM's EVEN_K path
@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_backends_match_spec(interpret, m, k, n, bias):
    x, w, b = _data(m, k, n)
    qw = Fp8Weight.from_float(w)
    b = b if bias else None
    ref = fp8_naive.fp8_linear_ref(x, qw.data, qw.scale, b)
    for backend in ("triton", "scaled_mm", "torch"):
        out = fp8_linear(x, qw, b, backend=backend)
        assert out.shape == (m, n) and out.dtype == x.dtype
        assert rel_err(out, ref) < 1e-5, backend


def test_fp8_linear_keeps_leading_dims_and_dtype():
    x, w, b = _data(2 * 7, 48, 16)
    qw = Fp8Weight.from_float(w)
    out = fp8_linear(x.reshape(2, 7, 48).bfloat16(), qw, b.bfloat16())
    assert out.shape == (2, 7, 16) and out.dtype == torch.bfloat16
    ref = fp8_naive.fp8_linear_ref(x.bfloat16(), qw.data, qw.scale, b.bfloat16())
    assert rel_err(out.reshape(14, 16), ref) < 1e-2


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fp8_quantized_activation_is_reused_exactly(interpret, backend):
    x, w, b = _data(2 * 31, 72, 40, seed=11)
    x = x.reshape(2, 31, 72)
    weights = [Fp8Weight.from_float(w * s) for s in (1.0, 0.5, 2.0)]
    xq = quantize_activation(x, backend=backend)
    assert xq.shape == x.shape and xq.dtype == x.dtype and xq.data.shape == (62, 72)
    for qw in weights:
        once = fp8_linear(xq, qw, b, backend=backend)
        each = fp8_linear(x, qw, b, backend=backend)
        assert once.shape == (2, 31, 40) and once.dtype == x.dtype
        assert torch.equal(once, each)
    # one GEMM over the concatenated weight: the same numbers as the three apart (per-channel scales)
    qkv = fp8_linear(xq, Fp8Weight.concat(weights), torch.cat([b, b, b]), backend=backend)
    assert torch.equal(qkv, torch.cat([fp8_linear(xq, qw, b, backend=backend) for qw in weights], dim=-1))


def test_fp8_activation_cache_quantizes_once_per_tensor(interpret):
    x, w, b = _data(9, 48, 16, seed=5)
    qw = Fp8Weight.from_float(w)
    cache = Fp8ActivationCache(backend="triton")
    outs = [fp8_linear(cache(x), qw, b, backend="triton") for _ in range(3)]
    assert cache.quantizations == 1
    assert all(torch.equal(o, fp8_linear(x, qw, b, backend="triton")) for o in outs)
    x.mul_(2.0)  # modified in place: quantized again
    assert torch.equal(fp8_linear(cache(x), qw, b, backend="triton"), fp8_linear(x, qw, b, backend="triton"))
    assert cache.quantizations == 2
    cache(x.clone())  # another tensor
    assert cache.quantizations == 3
    cache.reset()
    assert cache.quantizations == 0


def test_fp8_activation_cache_quantizes_inference_tensors_every_call():
    """Inference-mode tensors have no version counter: an in-place change is invisible, so no reuse."""
    x, w, b = _data(9, 48, 16, seed=6)
    qw = Fp8Weight.from_float(w)
    cache = Fp8ActivationCache(backend="torch")
    with torch.inference_mode():
        xi = x.clone()
        first = fp8_linear(cache(xi), qw, b, backend="torch")
        xi.mul_(2.0)
        second = fp8_linear(cache(xi), qw, b, backend="torch")
        assert torch.equal(second, fp8_linear(xi, qw, b, backend="torch")) and not torch.equal(first, second)
    assert cache.quantizations == 2 and cache._x is None


def test_fp8_activation_api_rejects_bad_inputs():
    qw = Fp8Weight.from_float(torch.randn(8, 16))
    xq = quantize_activation(torch.randn(3, 16), backend="torch")
    with pytest.raises(ValueError, match="activations='none' is not allowed with an Fp8Activation"):
        fp8_linear(xq, qw, activations="none")
    with pytest.raises(ValueError, match="expects 32"):
        fp8_linear(xq, Fp8Weight.from_float(torch.randn(8, 32)))
    with pytest.raises(ValueError, match="Fp8Activation.shape"):
        Fp8Activation(xq.data, xq.scale, (4, 16), torch.float32)
    with pytest.raises(ValueError, match="Fp8Activation.data"):
        Fp8Activation(xq.data.float(), xq.scale, (3, 16), torch.float32)
    with pytest.raises(ValueError, match="Fp8Activation.scale"):
        Fp8Activation(xq.data, xq.scale[:2], (3, 16), torch.float32)
    with pytest.raises(ValueError, match="x must be a floating-point"):
        quantize_activation(torch.ones(3, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="same in_features"):
        Fp8Weight.concat([qw, Fp8Weight.from_float(torch.randn(8, 32))])
    with pytest.raises(ValueError, match="at least one"):
        Fp8Weight.concat([])
    with pytest.raises(ValueError, match="backend='cuda'"):
        Fp8ActivationCache(backend="cuda")


def test_fp8_pinned_config_runs_and_is_validated(interpret, monkeypatch):
    from vidaccel.kernels.fp8 import wrapper

    x, w, b = _data(40, 100, 72, seed=2)
    qw = Fp8Weight.from_float(w)
    ref = fp8_naive.fp8_linear_ref(x, qw.data, qw.scale, b)
    monkeypatch.setenv(wrapper.CONFIG_ENV, "16,32,32,4,2")
    assert rel_err(fp8_linear(x, qw, b, backend="triton"), ref) < 1e-5
    monkeypatch.setenv(wrapper.CONFIG_ENV, "16,32,24,4,2")
    with pytest.raises(ValueError, match="VIDACCEL_FP8_CONFIG='16,32,24,4,2' is not allowed"):
        fp8_linear(x, qw, b, backend="triton")


def test_fp8_sqnr_floors():
    x, w, _ = _data(256, 512, 256, seed=1)
    qw = Fp8Weight.from_float(w)
    exact = x @ w.t()
    assert sqnr_db(exact, fp8_linear(x, qw)) >= 28.0  # W8A8, measured 28.5 dB: e4m3's 3 mantissa bits, twice
    assert sqnr_db(exact, fp8_linear(x, qw, activations="none")) >= 31.0  # W8A16, measured 31.6 dB


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("backend", ["triton", "scaled_mm", "torch"])
def test_fp8_nonfinite_inputs_propagate(interpret, backend):
    x, w, b = _data(6, 40, 24)
    x[1, 3] = float("nan")
    x[3, 0] = float("inf")
    x[4, 5] = float("-inf")
    qw = Fp8Weight.from_float(w)
    out = fp8_linear(x, qw, b, backend=backend)
    bad_rows = torch.tensor([False, True, False, True, True, False])
    assert torch.isnan(out[bad_rows]).all(), "a token holding NaN/Inf must give a NaN row, never zeros"
    assert torch.isfinite(out[~bad_rows]).all()
    _, s = quantize_per_token(x, backend="triton" if backend == "triton" else "torch")
    assert torch.isnan(s[bad_rows]).all() and torch.isfinite(s[~bad_rows]).all()


def test_fp8_auto_falls_back_when_scaled_mm_fails(monkeypatch):
    from vidaccel.kernels.fp8 import wrapper as ops

    def broken(*args, **kwargs):
        raise RuntimeError("row-wise scaling is not supported")

    monkeypatch.setattr(ops, "_SCALED_MM_FAILED", set())
    monkeypatch.setattr(torch, "_scaled_mm", broken)
    x, w, b = _data(7, 40, 24)
    qw = Fp8Weight.from_float(w)
    ref = fp8_naive.fp8_linear_ref(x, qw.data, qw.scale, b)
    assert rel_err(fp8_linear(x, qw, b), ref) < 1e-5  # auto: falls back, same numbers
    assert ops._SCALED_MM_FAILED == {("cpu", None)}
    with pytest.raises(RuntimeError, match="row-wise"):
        fp8_linear(x, qw, b, backend="scaled_mm")  # asked for explicitly: the error surfaces


def test_fp8_rejects_bad_inputs():
    with pytest.raises(ValueError, match="NaN or Inf"):
        Fp8Weight.from_float(torch.tensor([[1.0, float("nan")]]))
    qw = Fp8Weight.from_float(torch.randn(8, 16))
    with pytest.raises(ValueError, match="expects 16"):
        fp8_linear(torch.randn(3, 15), qw)
    with pytest.raises(ValueError, match="backend='cuda'.*allowed"):
        fp8_linear(torch.randn(3, 16), qw, backend="cuda")
    with pytest.raises(ValueError, match="activations='int8'"):
        fp8_linear(torch.randn(3, 16), qw, activations="int8")
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        Fp8Weight(torch.zeros(2, 2), torch.ones(2))


def test_fp8_triton_needs_a_launcher(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        fp8_linear(torch.randn(2, 16), Fp8Weight.from_float(torch.randn(4, 16)), backend="triton")


# -- NVFP4 -------------------------------------------------------------------------------------------
def test_e2m1_every_code_round_trips():
    codes = torch.arange(16, dtype=torch.uint8)
    values = nv_naive.e2m1_decode(codes)
    assert values[:8].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert torch.equal(values[8:], -values[:8]) and torch.signbit(values[8])  # code 8 is -0.0
    assert torch.equal(nv_naive.e2m1_encode(values), codes)


def test_pack_unpack_every_byte_exact():
    every_byte = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    codes = nv_naive.unpack(every_byte)
    assert codes.shape == (16, 32) and int(codes.max()) == 15
    assert torch.equal(nv_naive.pack(codes), every_byte)
    # low nibble = even index (torchao's pack_uint4 convention)
    assert nv_naive.pack(torch.tensor([[3, 12]], dtype=torch.uint8)).item() == 3 | (12 << 4)
    # every pair of codes survives value → code → pack → unpack → value
    pairs = torch.cartesian_prod(torch.arange(16), torch.arange(16)).to(torch.uint8).reshape(1, -1)
    back = nv_naive.e2m1_decode(nv_naive.unpack(nv_naive.pack(nv_naive.e2m1_encode(nv_naive.e2m1_decode(pairs)))))
    assert torch.equal(back.view(torch.int32), nv_naive.e2m1_decode(pairs).view(torch.int32))


def test_e2m1_rounds_to_nearest_even():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.2501, 4.99, 5.01, -0.1, 6.0])
    expect = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 0.5, 4.0, 6.0, -0.0, 6.0])
    assert torch.equal(nv_naive.e2m1_decode(nv_naive.e2m1_encode(x)), expect)


def test_nvfp4_weight_format():
    w = torch.randn(24, 40)
    qw = NVFP4Weight.from_float(w)
    assert qw.data.shape == (24, 24) and qw.data.dtype == torch.uint8  # K=40 padded to 48, two per byte
    assert qw.block_scale.shape == (24, 3) and qw.block_scale.dtype == torch.float8_e4m3fn
    assert torch.allclose(qw.global_scale, w.abs().max() / (6 * 448))
    deq = qw.dequantize()
    assert deq.shape == (24, 40)
    assert sqnr_db(w, deq) > 18.0
    # the padding holds code 0
    assert torch.equal(nv_naive.unpack(qw.data)[:, 40:], torch.zeros(24, 8, dtype=torch.uint8))
    assert torch.equal(NVFP4Weight.from_float(torch.zeros(4, 16)).dequantize(), torch.zeros(4, 16))


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao not installed")
def test_nvfp4_bit_exact_with_torchao():
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, nvfp4_quantize, per_tensor_amax_to_scale

    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 128, generator=g) * 0.02
    w[0, :16] *= 1e-6  # a block whose scale clamps at the smallest normal e4m3
    w[1, 3] = 0.37  # the tensor amax
    data, block_scale, gs = nv_naive.quantize_weight(w)
    pts = per_tensor_amax_to_scale(w.abs().amax())
    ao_scale, ao_data = nvfp4_quantize(w, 16, pts)
    assert torch.equal(data, ao_data.view(torch.uint8))
    assert torch.equal(block_scale.view(torch.uint8), ao_scale.view(torch.uint8))
    assert gs.item() == pts.item()
    t = NVFP4Tensor.to_nvfp4(w, per_tensor_scale=pts)
    assert torch.equal(nv_naive.dequantize(data, block_scale, gs), t.dequantize(torch.float32))


NVFP4_SHAPES = SHAPES + [(70, 192, 40), (5, 16, 130)]  # K % 64 == 0 (no K masks, EVEN_K) and the smallest K


@pytest.mark.parametrize("m,k,n", NVFP4_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_nvfp4_w4a16_kernel_matches_spec(interpret, m, k, n, bias):
    x, w, b = _data(m, k, n, seed=m + k + n)
    qw = NVFP4Weight.from_float(w)
    b = b if bias else None
    out = nvfp4_linear(x, qw, b, backend="triton")
    assert out.shape == (m, n) and out.dtype == x.dtype
    # the kernel's MMA takes 16-bit operands: fp32 activations are rounded to bf16, then everything is exact
    # up to fp32 accumulation order
    ref_bf16 = nv_naive.nvfp4_linear_ref(x.bfloat16().float(), qw.data, qw.block_scale, qw.global_scale, k, b)
    assert rel_err(out, ref_bf16) < 1e-5
    ref = nv_naive.nvfp4_linear_ref(x, qw.data, qw.block_scale, qw.global_scale, k, b)
    assert rel_err(out, ref) < 1e-2
    assert rel_err(nvfp4_linear(x, qw, b, backend="torch"), ref) < 1e-6


def _random_nvfp4(n, k, seed):
    """An NVFP4 weight with uniformly random codes and every finite e4m3 block scale (subnormals, 0, 448)."""
    g = torch.Generator().manual_seed(seed)
    kp = nv_naive.padded_k(k)
    data = torch.randint(0, 256, (n, kp // 2), generator=g, dtype=torch.uint8)
    codes = nv_naive.unpack(data)
    codes[:, k:] = 0  # the format's zero padding
    data = nv_naive.pack(codes)
    scale_bits = torch.randint(0, 0x7F, (n, kp // 16), generator=g, dtype=torch.uint8)  # 0x7F is NaN
    scale_bits.view(-1)[: 0x7F] = torch.arange(0x7F, dtype=torch.uint8)[: scale_bits.numel()]
    return NVFP4Weight(data, scale_bits.view(torch.float8_e4m3fn), torch.tensor(0.0123, dtype=torch.float32), k)


@pytest.mark.parametrize("k", [128, 100])
def test_nvfp4_kernel_decodes_every_code_and_scale_exactly(interpret, k):
    """x = identity: the output is the decoded weight, value · s · g rounded once (float64 reference)."""
    qw = _random_nvfp4(72, k, seed=k)
    values = nv_naive.e2m1_decode(nv_naive.unpack(qw.data)).double().reshape(72, -1, 16)
    exact = (values * qw.block_scale.double()[..., None] * qw.global_scale.double()).reshape(72, -1)[:, :k]
    out = nvfp4_linear(torch.eye(k), qw, backend="triton")  # fp32 out: no rounding but the one of the product
    assert torch.equal(out, exact.t().float())
    out = nvfp4_linear(torch.eye(k, dtype=torch.float16), qw, backend="triton")
    assert torch.equal(out, exact.t().to(torch.float16))
    # bf16 out: the interpreter's fp32 -> bf16 cast truncates (GPUs round): within one bf16 step
    out = nvfp4_linear(torch.eye(k, dtype=torch.bfloat16), qw, backend="triton")
    assert bool(((out.double() - exact.t()).abs() <= exact.t().abs() * 2.0**-7).all())


@pytest.mark.parametrize("n,k", [(72, 100), (24, 40), (130, 16), (40, 192)])
def test_nvfp4_dequant_kernel_bit_exact(interpret, n, k):
    _, w, _ = _data(1, k, n)
    for qw in (NVFP4Weight.from_float(w), _random_nvfp4(n, k, seed=n)):
        out = nvfp4_dequantize(qw, torch.float32, backend="triton")
        assert torch.equal(out, qw.dequantize())
    x = torch.randn(5, k)
    ref = nv_naive.nvfp4_linear_ref(x, qw.data, qw.block_scale, qw.global_scale, k)
    assert rel_err(nvfp4_linear(x, qw, backend="dequant"), ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nvfp4_kernel_16bit_activations(interpret, dtype):
    x, w, b = _data(33, 80, 40, seed=7)
    qw = NVFP4Weight.from_float(w)
    out = nvfp4_linear(x.to(dtype), qw, b.to(dtype), backend="triton")
    assert out.dtype == dtype
    ref = nv_naive.nvfp4_linear_ref(x.to(dtype), qw.data, qw.block_scale, qw.global_scale, 80, b.to(dtype))
    assert rel_err(out, ref) < 1e-2  # the output is rounded to 16 bits
    assert rel_err(out, ref.to(dtype)) < 1e-2


def test_nvfp4_launch_configs():
    from vidaccel.kernels.nvfp4 import wrapper

    for m in (1, 16, 17, 64, 65, 256, 1023, 32760):
        for arch in (90, 100):
            c = wrapper.launch_config(m, arch)
            assert c["BLOCK_K"] % 64 == 0, (m, arch, c)  # block scales load as int32 words at model shapes
            assert c["num_stages"] >= 3, (m, arch, c)  # loads issued at least one iteration ahead
            assert c["BLOCK_M"] >= min(m, 64) or c["BLOCK_M"] >= 128
    assert wrapper.launch_config(32760, 100)["BLOCK_M"] == 256 and wrapper.launch_config(32760, 90)["BLOCK_M"] == 128


def test_nvfp4_pinned_config_is_validated(interpret, monkeypatch):
    from vidaccel.kernels.nvfp4 import wrapper

    x, w, b = _data(40, 100, 72, seed=4)
    qw = NVFP4Weight.from_float(w)
    ref = nv_naive.nvfp4_linear_ref(x.bfloat16().float(), qw.data, qw.block_scale, qw.global_scale, 100, b)
    monkeypatch.setenv(wrapper.CONFIG_ENV, "16,32,16,4,2")  # one scale block per step, 16-token tiles
    assert rel_err(nvfp4_linear(x, qw, b, backend="triton"), ref) < 1e-5

    monkeypatch.setenv(wrapper.CONFIG_ENV, "128,128,64,4,4")
    assert wrapper.pinned_config(wrapper.CONFIG_ENV) == dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4,
                                            num_stages=4)
    for bad in ("128,128,64", "128,128,48,4,4", "a,b,c,d,e", "128,128,64,3,4", "128,128,64,4,0"):
        monkeypatch.setenv(wrapper.CONFIG_ENV, bad)
        with pytest.raises(ValueError, match=f"{wrapper.CONFIG_ENV}=.*allowed"):
            wrapper.pinned_config(wrapper.CONFIG_ENV)


def test_nvfp4_sqnr_floor():
    x, w, _ = _data(256, 512, 256, seed=1)
    qw = NVFP4Weight.from_float(w)
    assert sqnr_db(x @ w.t(), nvfp4_linear(x, qw)) >= 19.0  # issue floor 15 dB; measured 20.2 dB


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_nvfp4_nonfinite_inputs_propagate(interpret, backend):
    x, w, b = _data(5, 40, 24)
    x[1, 3] = float("nan")
    x[3, 0] = float("inf")
    out = nvfp4_linear(x, NVFP4Weight.from_float(w), b, backend=backend)
    assert torch.isnan(out[1]).all()
    assert not torch.isfinite(out[3]).any()
    assert torch.isfinite(out[[0, 2, 4]]).all()


def test_nvfp4_rejects_bad_inputs():
    with pytest.raises(ValueError, match="NaN or Inf"):
        NVFP4Weight.from_float(torch.tensor([[float("inf")] * 16]))
    qw = NVFP4Weight.from_float(torch.randn(8, 32))
    with pytest.raises(ValueError, match="expects 32"):
        nvfp4_linear(torch.randn(3, 31), qw)
    with pytest.raises(ValueError, match="backend='scaled_mm'.*allowed"):
        nvfp4_linear(torch.randn(3, 32), qw, backend="scaled_mm")
    with pytest.raises(ValueError, match="uint8 of shape"):
        NVFP4Weight(qw.data[:, :8], qw.block_scale, qw.global_scale, 32)


# -- on a GPU (skipped here; run by a GPU session: pytest -m gpu tests/test_quant_kernels.py) -------------
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("m,k,n", SHAPES + [(4096, 1536, 8960)])
def test_gpu_kernels_match_spec(m, k, n):
    from vidaccel.kernels.fp8.wrapper import triton_fp8_supported

    x, w, b = (t.cuda() for t in _data(m, k, n))
    dev = x.device
    nw = NVFP4Weight.from_float(w)
    ref = nv_naive.nvfp4_linear_ref(x, nw.data, nw.block_scale, nw.global_scale, k, b)
    assert rel_err(nvfp4_linear(x, nw, b, backend="triton"), ref) < 1e-4  # GPU fp32 dot (ieee)
    assert rel_err(nvfp4_linear(x.bfloat16(), nw, b.bfloat16(), backend="triton"), ref) < 2e-2
    assert rel_err(nvfp4_linear(x.bfloat16(), nw, b.bfloat16(), backend="dequant"), ref) < 2e-2
    assert torch.equal(nvfp4_dequantize(nw, torch.float32, backend="triton"), nw.dequantize())
    if not triton_fp8_supported(dev):
        pytest.skip("FP8 kernels need sm89+")
    fw = Fp8Weight.from_float(w)
    q, s = quantize_per_token(x, backend="triton")
    q_ref, s_ref = fp8_naive.quantize_per_token(x)
    assert torch.allclose(s, s_ref, rtol=1e-6, atol=0)
    # GPU fp32 division may differ by an ulp: allow a few codes one e4m3 step apart
    diff = (q.float() - q_ref.float()).abs()
    assert (diff > 0).float().mean() < 1e-3 and bool((diff <= q_ref.float().abs() / 8 + 2 ** -9).all())
    ref8 = fp8_naive.fp8_linear_ref(x, fw.data, fw.scale, b)
    for backend in ("triton", "scaled_mm") if k % 16 == 0 and n % 16 == 0 else ("triton",):
        assert rel_err(fp8_linear(x, fw, b, backend=backend), ref8) < 1e-2, backend
