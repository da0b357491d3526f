"""QuantAttentionConfig on every family, its opt-outs, and its composition with the other techniques
(no-op, repeat and remove on every pipeline kind: tests/test_contract.py)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel import CacheConfig, LinearAttentionConfig, QuantAttentionConfig, QuantConfig, SlidingWindowConfig
from vidaccel.accel.quant_attention.technique import QuantAttentionTechnique, quant_attention_backend
from vidaccel.core.attention_kernel import attention_kernel, clear_attention_kernel, set_attention_kernel
from vidaccel.core.technique import technique_for_type
from vidaccel.kernels.quant_attention import quant_attention

from .conftest import PIPELINE_KINDS, make_pipeline, run_pipe

pytestmark = pytest.mark.usefixtures("one_thread")

# Latent outputs (no VAE decode), as tests/test_sliding_window.py: Wan and CogVideoX 1.0 see 3×4×4 tokens
# (+16 text tokens for CogVideoX); the tiny CogVideoX 1.5's rotary table fits 32×32 (a 2×2×2 token grid).
SIZE = dict(height=64, width=64, output_type="latent", num_inference_steps=3)
SIZES = {"cogvideox-1.5": dict(SIZE, height=32, width=32)}
WINDOW = SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2))


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_registered_with_a_preset():
    assert technique_for_type(QuantAttentionConfig) is QuantAttentionTechnique
    assert "quant-attention" in vidaccel.available_presets()
    from vidaccel.accel import preset_configs

    assert preset_configs("quant-attention") == [QuantAttentionConfig()]


@pytest.mark.parametrize("kind", PIPELINE_KINDS)
def test_quantized_attention_is_close_to_exact_and_composes_with_windows_in_either_order(kind):
    pipe = make_pipeline(kind)
    size = SIZES.get(kind, SIZE)
    base = run_pipe(pipe, **size)
    vidaccel.apply(pipe, QuantAttentionConfig())
    quant = run_pipe(pipe, **size)
    stats = vidaccel.stats(pipe)["quant_attention"]
    vidaccel.remove(pipe)
    n_layers = pipe.transformer.config.num_layers
    for role, s in stats.items():
        assert s["quantized_calls"] > 0 and s["quantized_calls"] % n_layers == 0, (role, s)
        assert s["exact_calls"] == s["sparse_calls"] == s["fallback_calls"] == 0
    # INT8 QK / FP8 PV on 3 steps of a random-weight model: a small, non-zero change
    assert 0 < rel(quant, base) < 0.05
    vidaccel.apply(pipe, WINDOW)
    windowed = run_pipe(pipe, **size)
    vidaccel.remove(pipe)
    vidaccel.apply(pipe, WINDOW, QuantAttentionConfig())
    both = run_pipe(pipe, **size)
    stats = vidaccel.stats(pipe)
    vidaccel.remove(pipe)
    vidaccel.apply(pipe, QuantAttentionConfig(), WINDOW)
    np.testing.assert_array_equal(run_pipe(pipe, **size), both, err_msg="the order of application matters")
    vidaccel.remove(pipe)
    for role, s in stats["quant_attention"].items():
        # every windowed call ran the block-sparse quantized kernel
        assert s["sparse_calls"] == stats["sliding_window"][role]["sparse_calls"] > 0, (role, s)
        assert s["quantized_calls"] == s["sparse_calls"]
    assert 0 < rel(both, windowed) < 0.05
    np.testing.assert_array_equal(run_pipe(pipe, **size), base)


def test_dense_steps_and_dense_layers_run_the_original_processor():
    pipe = make_pipeline("wan21")  # 4 layers; CFG: 2 transformer calls per step
    base = run_pipe(pipe, **SIZE)
    vidaccel.apply(pipe, QuantAttentionConfig(dense_steps=1, dense_layers=[0, 3]))
    run_pipe(pipe, **SIZE)
    s = vidaccel.stats(pipe)["quant_attention"]["transformer"]
    vidaccel.remove(pipe)
    # step 0: every layer exact (2 calls); steps 1-2: layers 0 and 3 exact, 1 and 2 quantized (4 calls)
    assert s["per_layer"]["exact"] == [6, 2, 2, 6]
    assert s["per_layer"]["dense"] == [0, 4, 4, 0]
    vidaccel.apply(pipe, QuantAttentionConfig(dense_layers=[0, 1, 2, 3]))
    np.testing.assert_array_equal(run_pipe(pipe, **SIZE), base)
    vidaccel.remove(pipe)


def test_window_dense_layers_and_steps_are_quantized_dense_and_quant_opt_outs_keep_windows_exact():
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2), dense_steps=1, dense_layers=[0]),
                   QuantAttentionConfig(dense_layers=[3]))
    run_pipe(pipe, **SIZE)
    q = vidaccel.stats(pipe)["quant_attention"]["transformer"]["per_layer"]
    w = vidaccel.stats(pipe)["sliding_window"]["transformer"]
    vidaccel.remove(pipe)
    # layer 0 (window-dense): quantized dense every call; layers 1-2: quantized dense at step 0, quantized
    # windowed after; layer 3 (quant-exact): exact at step 0, then windowed by the exact sliding-tile kernel
    assert q["dense"] == [6, 2, 2, 0] and q["sparse"] == [0, 4, 4, 0] and q["exact"] == [0, 0, 0, 6]
    assert w["sparse_calls"] == 4 * 3 and w["dense_calls"] == 2 * 4 + 4


def test_composes_with_caching_weight_quantization_and_linear_attention():
    pipe = make_pipeline("wan21")
    base = run_pipe(pipe, **SIZE)
    base4 = run_pipe(pipe, **dict(SIZE, num_inference_steps=4))
    vidaccel.apply(pipe, CacheConfig(threshold=math.inf, policy="call", interval=2, warmup_steps=2, final_steps=0),
                   QuantConfig(format="fp8"), QuantAttentionConfig())
    out = run_pipe(pipe, **dict(SIZE, num_inference_steps=4))
    stats = vidaccel.stats(pipe)
    assert stats["cache"]["transformer"]["skipped_calls"] > 0
    assert stats["quant_attention"]["transformer"]["quantized_calls"] > 0
    assert 0 < rel(out, base4) < 0.5
    vidaccel.remove(pipe)
    # a layer swapped to linear attention never reaches softmax attention: it is not quantized
    vidaccel.apply(pipe, QuantAttentionConfig(), LinearAttentionConfig(layers=[1], feature_map="elu"))
    run_pipe(pipe, **SIZE)
    per_layer = vidaccel.stats(pipe)["quant_attention"]["transformer"]["per_layer"]
    vidaccel.remove(pipe)
    assert per_layer["dense"] == [6, 0, 6, 6]
    np.testing.assert_array_equal(run_pipe(pipe, **SIZE), base)


def test_attention_kernel_slot_has_one_owner():
    model = torch.nn.Linear(1, 1)
    set_attention_kernel(model, "a", lambda *a, **k: None)
    with pytest.raises(ValueError, match="already set by 'a'"):
        set_attention_kernel(model, "b", lambda *a, **k: None)
    clear_attention_kernel(model, "b")  # not the owner: nothing happens
    assert attention_kernel(model) is not None
    clear_attention_kernel(model, "a")
    assert attention_kernel(model) is None
    assert "_vidaccel_attention_kernel" not in model.state_dict()


def test_diffusers_backend_signature_returns_lse_in_diffusers_layout():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 63, 2, 60) for _ in range(3))
    out, lse = quant_attention_backend(q, k, v, return_lse=True)
    ref, ref_lse = quant_attention(q, k, v, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert lse.shape == (1, 63, 2)
    torch.testing.assert_close(lse, ref_lse.permute(0, 2, 1), rtol=0, atol=0)
    exact = torch.logsumexp(torch.einsum("blhd,bshd->bhls", q, k) / math.sqrt(60), dim=-1)
    assert float((lse.permute(0, 2, 1) - exact).abs().max()) < 0.05
    with pytest.raises(ValueError, match="is_causal=True"):
        quant_attention_backend(q, k, v, is_causal=True)


@pytest.mark.parametrize("field,value,allowed", [
    ("dense_steps", -1, "integer >= 0"), ("dense_layers", [-2], "block indices \(integers >= 0\)"), ("smooth_q", 1, "True or False"),
    ("pv", "int4", "auto, fp8, bf16"), ("backend", "flex", "auto, triton, torch"),
])
def test_config_errors_name_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError, match=f"QuantAttentionConfig.{field}=.*{allowed}"):
        QuantAttentionConfig(**{field: value})


def test_dense_layers_out_of_range_names_the_model():
    pipe = make_pipeline("wan21")
    with pytest.raises(ValueError, match="dense_layers=\\[7\\] is out of range.*4 layers"):
        vidaccel.apply(pipe, QuantAttentionConfig(dense_layers=[7]))
    assert vidaccel.applied(pipe) == []
