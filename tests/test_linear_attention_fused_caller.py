"""The linear-attention technique calls ``linear_attention(q, k, v, feature_map=..., rope=(cos, sin))``: on the torch
path the numbers of the feature-then-rotate computation it replaced, bit for bit (CogVideoX's text tokens unrotated);
under the Triton interpreter the fused kernels (features and RoPE in registers) within the kernel tests' tolerance."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

import vidaccel
from vidaccel.accel.linear_attention import LinearAttentionConfig
from vidaccel.core.technique import attached
from vidaccel.families import Rotary
from vidaccel.kernels.linear_attention import linear_attention_features, triton_kernel

from .conftest import make_pipeline, run_pipe
from .test_linear_attention_kernels import TOL_MMA16, rel_err

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny shapes, no contention

CALL = dict(height=32, width=32, num_frames=9, num_inference_steps=1, output_type="latent")
KINDS = ["wan21", "cogvideox-1.5"]  # both with RoPE; CogVideoX's text leads the sequence, unrotated


@pytest.fixture
def seed():
    s = random.SystemRandom().randrange(2**31)
    torch.manual_seed(s)
    return s


def _previous(tech, layer, q, k, v, rotary):
    """What ``attend`` computed before: features in torch, rotated by the family's Rotary, then attention."""
    fm = tech.feature_fn(layer)
    fq, fk = fm(q), fm(k)
    cfg = tech.config
    if rotary is None or cfg.rope == "none":
        return linear_attention_features(fq, fk, v, backend=cfg.backend, eps=cfg.eps)
    return linear_attention_features(rotary(fq, torch.float32), rotary(fk, torch.float32), v, q_den=fq, k_den=fk,
                                     backend=cfg.backend, eps=cfg.eps)


def _technique_with_calls(kind, feature_map, rope, seed):
    """A tiny pipeline with linear attention on layer 0, run once; the technique and its recorded attend calls."""
    pipe = make_pipeline(kind)
    vidaccel.apply(pipe, LinearAttentionConfig(layers=[0], feature_map=feature_map, rope=rope, backend="torch"))
    tech = attached(pipe.transformer)["linear_attention"]
    with torch.no_grad():
        for p in tech.parameters():  # a Hedgehog map away from its identity start
            p.add_(torch.randn_like(p) * 0.3)
    calls = []
    attend = tech.attend

    def recording(layer, q, k, v, rotary):
        out = attend(layer, q, k, v, rotary)
        calls.append((layer, q, k, v, rotary, out))
        return out

    tech.attend = recording
    run_pipe(pipe, **CALL)
    tech.attend = attend
    assert calls
    return tech, calls


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("feature_map,rope", [("elu", "numerator"), ("relu", "numerator"), ("hedgehog", "numerator"),
                                              ("elu", "none")])
def test_torch_path_gives_the_previous_numbers(kind, feature_map, rope, seed):
    tech, calls = _technique_with_calls(kind, feature_map, rope, seed)
    for layer, q, k, v, rotary, out in calls:
        assert rotary is not None
        if kind.startswith("cogvideox"):
            assert rotary.offset > 0  # text tokens lead the sequence and stay unrotated
        before = _previous(tech, layer, q, k, v, rotary)
        assert out.dtype == before.dtype and torch.equal(out, before), f"seed={seed}"


def test_rotary_tables_rotate_like_the_rotary(seed):
    """The (cos, sin) tables of a Rotary with a text prefix: identity rows for the text, the same numbers after."""
    from vidaccel.kernels.linear_attention.wrapper import rope_rotate

    T, L, H, D = 5, 58, 2, 60
    theta = torch.rand(1, L, 1, D // 2) * 6.0
    rotary = Rotary(theta.cos(), theta.sin(), offset=T)
    cos, sin = rotary.tables()
    assert cos.shape == sin.shape == (T + L, D // 2)
    assert torch.equal(cos[:T], torch.ones(T, D // 2)) and torch.equal(sin[:T], torch.zeros(T, D // 2))
    x = torch.rand(2, T + L, H, 2 * D)  # non-negative features, two D-sized groups (Hedgehog)
    assert torch.equal(rope_rotate(x, cos, sin), rotary(x, torch.float32))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("feature_map", ["elu", "hedgehog"])
def test_fused_kernels_match_the_torch_path_under_the_interpreter(kind, feature_map, seed, monkeypatch):
    tech, calls = _technique_with_calls(kind, feature_map, "numerator", seed)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    launches = []
    real = triton_kernel.linear_attention_fused_triton

    def spy(*args, **kwargs):
        launches.append(kwargs["feature"])
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_kernel, "linear_attention_fused_triton", spy)
    tech.config = dataclasses.replace(tech.config, backend="triton")
    layer, q, k, v, rotary, ref = calls[0]
    with torch.no_grad():
        out = tech.attend(layer, q, k, v, rotary)
    assert launches == [feature_map]  # the fused kernels ran, not torch features
    assert out.dtype == ref.dtype and rel_err(out, ref) <= TOL_MMA16, f"seed={seed}"


def test_fused_kernels_on_a_ragged_text_and_video_sequence(seed, monkeypatch):
    """63 tokens (5 unrotated text + 58 video), head dim 60: the technique's fused call against its torch call."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    tech, _ = _technique_with_calls("wan21", "elu", "numerator", seed)
    T, L, H, D = 5, 58, 3, 60
    theta = torch.rand(1, L, 1, D // 2) * 6.0
    rotary = Rotary(theta.cos(), theta.sin(), offset=T)
    q, k, v = (torch.randn(2, T + L, H, D) for _ in range(3))
    ref = tech.attend(0, q, k, v, rotary)
    assert torch.equal(ref, _previous(tech, 0, q, k, v, rotary))
    tech.config = dataclasses.replace(tech.config, backend="triton")
    launches = []
    real = triton_kernel.linear_attention_fused_triton
    monkeypatch.setattr(triton_kernel, "linear_attention_fused_triton",
                        lambda *a, **kw: launches.append(1) or real(*a, **kw))
    out = tech.attend(0, q, k, v, rotary)
    assert launches == [1] and rel_err(out, ref) <= TOL_MMA16, f"seed={seed}"
