"""The model families: RoPE, q/k/v and geometry computed exactly as diffusers computes them."""

from __future__ import annotations

import random

import pytest
import torch

from vidaccel.core.processors import ProcessorWrapper
from vidaccel.families import FAMILIES, Rotary, family_for, pipeline_transformers

from .conftest import PIPELINE_KINDS, make_pipeline, run_pipe


@pytest.fixture
def seed():
    s = random.SystemRandom().randrange(2**31)
    torch.manual_seed(s)
    return s


def _diffusers_rope(x, cos, sin):
    from diffusers.models.embeddings import apply_rotary_emb

    return apply_rotary_emb(x, (cos, sin), sequence_dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_is_diffusers_rope_on_every_d_sized_group(dtype, seed):
    """Linear attention rotates 2D-sized Hedgehog features as two D-sized groups, each as diffusers rotates q."""
    B, L, H, D = 1, 12, 2, 16
    theta = torch.rand(L, D // 2) * 6.0
    cos, sin = theta.cos().repeat_interleave(2, -1), theta.sin().repeat_interleave(2, -1)  # diffusers' layout
    rotary = Rotary(cos[None, :, None, 0::2], sin[None, :, None, 1::2])
    x, y = torch.randn(B, L, H, D, dtype=dtype), torch.randn(B, L, H, D, dtype=dtype)
    ref = _diffusers_rope(x, cos, sin)
    assert torch.equal(rotary(x), ref)
    two = rotary(torch.cat([x, y], -1))
    assert torch.equal(two, torch.cat([ref, _diffusers_rope(y, cos, sin)], -1))
    assert rotary(x, torch.float32).dtype == torch.float32


def test_rotary_leaves_the_text_prefix_alone(seed):
    B, T, L, H, D = 2, 5, 12, 2, 16
    theta = torch.rand(L, D // 2)
    cos, sin = theta.cos().repeat_interleave(2, -1), theta.sin().repeat_interleave(2, -1)
    x = torch.randn(B, T + L, H, D)
    out = Rotary(cos[None, :, None, 0::2], sin[None, :, None, 1::2], offset=T)(x)
    assert torch.equal(out[:, :T], x[:, :T])
    assert torch.equal(out[:, T:], _diffusers_rope(x[:, T:], cos, sin))


@pytest.mark.parametrize("kind", PIPELINE_KINDS)
def test_self_attention_inputs_reproduce_the_models_own_attention(kind, seed):
    """q/k/v + RoPE from the family, attended with SDPA and finished by the family, equal the model's processor."""
    pipe = make_pipeline(kind)
    model = pipeline_transformers(pipe)[0][1]
    family = family_for(model)
    _, attn = next(family.self_attentions(model))
    captured = {}

    def hook(module, args, kwargs, output):
        captured.update(args=args, kwargs=kwargs, output=output)

    handle = attn.register_forward_hook(hook, with_kwargs=True)
    run_pipe(pipe, num_inference_steps=1)
    handle.remove()
    call = ProcessorWrapper(attn.processor, 0).bind(attn, *captured["args"], **captured["kwargs"])
    inputs = family.self_attention_inputs(attn, call)
    assert inputs is not None
    q, k = inputs.rotated()
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                           inputs.v.transpose(1, 2)).transpose(1, 2)
    mine = family.attention_output(attn, out, inputs)
    theirs = captured["output"]
    mine, theirs = (mine if isinstance(mine, tuple) else (mine,)), (theirs if isinstance(theirs, tuple) else (theirs,))
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_every_family_names_its_fragile_layers_and_geometry():
    for family in FAMILIES.values():
        assert {f.kind for f in family.fragile_layers} >= {"patch", "time", "output"}
        assert family.latent_frames(81) == 21 and family.first_pixel_frame(1) == 1 and family.first_pixel_frame(2) == 5


def test_an_unknown_model_class_is_refused_by_name():
    with pytest.raises(ValueError, match="'Linear' is not supported by vidaccel; supported transformer classes: "
                                         "CogVideoXTransformer3DModel, WanTransformer3DModel"):
        family_for(torch.nn.Linear(2, 2))
