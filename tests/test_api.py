"""apply / remove / stats / reset over the registry, on every supported family."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

import vidaccel
from vidaccel.pipelines import AcceleratedPipelineMixin
from vidaccel.families import family_for

from .conftest import PIPELINE_KINDS, make_pipeline, run_pipe


@pytest.mark.parametrize("kind", PIPELINE_KINDS)
@pytest.mark.parametrize("cfg_scale", [5.0, 1.0], ids=["cfg", "nocfg"])
def test_remove_restores_bit_exact(kind, cfg_scale, test_techniques):
    ScaleAttnConfig, OffsetOutputConfig = test_techniques
    pipe = make_pipeline(kind)
    prompts = ["a red circle moving right", "a blue square moving up"]  # batch 2
    base = run_pipe(pipe, prompt=prompts, guidance_scale=cfg_scale)
    assert base.shape[0] == 2

    vidaccel.apply(pipe, ScaleAttnConfig(1.5), OffsetOutputConfig(0.5))
    changed = run_pipe(pipe, prompt=prompts, guidance_scale=cfg_scale)
    assert np.abs(changed - base).max() > 1e-3, "the test techniques must change the output"

    vidaccel.remove(pipe)
    assert vidaccel.applied(pipe) == []
    restored = run_pipe(pipe, prompt=prompts, guidance_scale=cfg_scale)
    np.testing.assert_array_equal(restored, base)


def test_both_wan22_experts_get_the_technique(test_techniques):
    ScaleAttnConfig, _ = test_techniques
    pipe = make_pipeline("wan22")
    vidaccel.apply(pipe, ScaleAttnConfig())
    run_pipe(pipe, num_inference_steps=8)
    stats = vidaccel.stats(pipe)["test-scale-attn"]
    assert set(stats) == {"transformer", "transformer_2"}
    layers = pipe.transformer.config.num_layers
    # 8 steps, CFG: each expert runs some steps, two calls per step, `layers` attentions per call.
    calls = [stats[r]["attention_calls"] for r in ("transformer", "transformer_2")]
    assert all(c > 0 for c in calls)
    assert sum(calls) == 8 * 2 * layers


def test_double_apply_raises(test_techniques):
    ScaleAttnConfig, _ = test_techniques
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, ScaleAttnConfig())
    with pytest.raises(ValueError, match="already applied"):
        vidaccel.apply(pipe, ScaleAttnConfig(2.0))
    with pytest.raises(ValueError, match="more than once"):
        vidaccel.apply(make_pipeline("wan21"), ScaleAttnConfig(), ScaleAttnConfig())


def test_unknown_config_type_raises():
    class NotAConfig:
        pass

    pipe = make_pipeline("wan21")
    with pytest.raises(ValueError, match="NotAConfig"):
        vidaccel.apply(pipe, NotAConfig())
    with pytest.raises(ValueError, match="NotAConfig"):
        vidaccel.remove(pipe, NotAConfig)


def test_unknown_model_raises_with_class_name(test_techniques):
    ScaleAttnConfig, _ = test_techniques
    model = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="'Linear'.*WanTransformer3DModel"):
        vidaccel.apply(model, ScaleAttnConfig())
    with pytest.raises(ValueError, match="'Linear'"):
        family_for(model)


def test_failed_apply_leaves_target_unchanged(test_techniques):
    ScaleAttnConfig, _ = test_techniques

    class Bad:
        pass

    pipe = make_pipeline("wan21")
    with pytest.raises(ValueError):
        vidaccel.apply(pipe, ScaleAttnConfig(), Bad())
    assert vidaccel.applied(pipe) == []
    assert type(pipe) is diffusers.WanPipeline


def test_remove_one_of_two_keeps_the_other(test_techniques):
    ScaleAttnConfig, OffsetOutputConfig = test_techniques
    pipe = make_pipeline("wan21")
    base = run_pipe(pipe)
    vidaccel.apply(pipe, ScaleAttnConfig(1.5))
    only_scale = run_pipe(pipe)
    vidaccel.apply(pipe, OffsetOutputConfig(0.5))
    vidaccel.remove(pipe, OffsetOutputConfig)
    assert vidaccel.applied(pipe) == ["test-scale-attn"]
    np.testing.assert_array_equal(run_pipe(pipe), only_scale)
    # removing the first of two re-attaches the second on top of the original model
    vidaccel.apply(pipe, OffsetOutputConfig(0.5))
    vidaccel.remove(pipe, ScaleAttnConfig)
    assert vidaccel.applied(pipe) == ["test-offset-output"]
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(run_pipe(pipe), base)


def test_plain_pipeline_switches_class_and_back(test_techniques):
    ScaleAttnConfig, _ = test_techniques
    pipe = make_pipeline("wan21")
    assert type(pipe) is diffusers.WanPipeline
    vidaccel.apply(pipe, ScaleAttnConfig())
    assert isinstance(pipe, AcceleratedPipelineMixin) and isinstance(pipe, diffusers.WanPipeline)
    assert type(pipe) is vidaccel.pipelines.WanPipeline
    run_pipe(pipe)
    assert pipe.last_run["techniques"] == ["test-scale-attn"]
    vidaccel.remove(pipe)
    assert type(pipe) is diffusers.WanPipeline


def test_each_call_resets_state_and_same_seed_repeats(test_techniques):
    ScaleAttnConfig, _ = test_techniques
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, ScaleAttnConfig())
    first = run_pipe(pipe, num_inference_steps=3)
    stats_first = vidaccel.stats(pipe)["test-scale-attn"]["transformer"]
    second = run_pipe(pipe, num_inference_steps=3)
    stats_second = vidaccel.stats(pipe)["test-scale-attn"]["transformer"]
    np.testing.assert_array_equal(first, second)
    layers = pipe.transformer.config.num_layers
    assert stats_first["attention_calls"] == stats_second["attention_calls"] == 3 * 2 * layers
    assert stats_second["resets"] == stats_first["resets"] + 1


def test_bare_transformer_apply_and_remove(test_techniques):
    ScaleAttnConfig, _ = test_techniques
    pipe = make_pipeline("cogvideox-1.5")
    model = pipe.transformer
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 4, 4)  # (B, F, C, H, W) latent, 2 latent frames (patch_size_t=2)
    text = torch.randn(1, 16, 32)
    t = torch.tensor([500])
    rope = pipe._prepare_rotary_positional_embeddings(32, 32, 2, torch.device("cpu"))

    def fwd():
        with torch.no_grad():
            return model(hidden_states=x, encoder_hidden_states=text, timestep=t, image_rotary_emb=rope,
                         return_dict=False)[0]

    base = fwd()
    assert vidaccel.apply(model, ScaleAttnConfig()) is model
    assert not torch.equal(fwd(), base)
    # rotary embeddings must still reach the processor through the wrapper
    assert vidaccel.stats(model)["test-scale-attn"]["transformer"]["attention_calls"] == model.config.num_layers
    vidaccel.remove(model)
    assert torch.equal(fwd(), base)


def test_wrapper_keeps_rotary_kwargs_for_cogvideox(test_techniques):
    """diffusers drops processor kwargs not in the processor's signature; the wrapper must keep them."""
    ScaleAttnConfig, _ = test_techniques
    pipe = make_pipeline("cogvideox-1.5")
    base = run_pipe(pipe)
    vidaccel.apply(pipe, ScaleAttnConfig(1.0))  # factor 1: identical only if rotary embeddings still flow
    np.testing.assert_array_equal(run_pipe(pipe), base)


def test_last_run_records_stages():
    pipe = vidaccel.pipelines.WanPipeline(**make_pipeline("wan21").components)
    pipe.set_progress_bar_config(disable=True)
    run_pipe(pipe, num_inference_steps=3)
    run = pipe.last_run
    assert run["steps"] == 3
    for key in ("text_encoding_s", "preparation_s", "denoising_s", "decoding_s", "total_s"):
        assert run[key] >= 0.0
    parts = run["text_encoding_s"] + run["preparation_s"] + run["denoising_s"] + run["decoding_s"]
    assert abs(parts - run["total_s"]) < 1e-6 + 0.01 * run["total_s"]
    assert run["denoising_s"] > 0 and run["text_encoding_s"] > 0


def test_stats_empty_without_techniques():
    pipe = make_pipeline("wan21")
    assert vidaccel.stats(pipe) == {}
    with pytest.raises(ValueError, match="neither a supported transformer"):
        vidaccel.stats(object())


def test_presets_resolve():
    from vidaccel.accel import resolve_accel

    assert resolve_accel(None) == [] and resolve_accel("none") == []
    with pytest.raises(ValueError, match="preset='nope'.*available presets"):
        resolve_accel("nope")
