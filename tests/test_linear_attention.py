"""LinearAttentionConfig on every family, layer selection, data-free distillation, adapters, CLI function."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel.core.technique import technique_for_type
from vidaccel.accel.linear_attention import (
    LinearAttentionConfig,
    layer_output_error,
    linearize,
    read_adapter_metadata,
    record_trajectories,
)
from vidaccel.accel.linear_attention.technique import LinearAttentionTechnique
from vidaccel.cli import main

from .conftest import PIPELINE_KINDS, make_pipeline, run_pipe

# Latent outputs (no VAE decode); 32×32 fits every tiny model (CogVideoX 1.5's rotary table included).
SIZE = dict(height=32, width=32, output_type="latent")
CALL = dict(height=32, width=32, num_frames=9, num_inference_steps=4, max_sequence_length=16)
TRAIN = ["a red circle moving right", "a green ball moving up", "a yellow box moving left"]
HELD_OUT = ["a blue square moving down slowly"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny shapes, no contention


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_importing_the_module_registers_the_technique():
    assert technique_for_type(LinearAttentionConfig) is LinearAttentionTechnique


@pytest.mark.parametrize("kwargs,needle", [
    (dict(layers="some"), "LinearAttentionConfig.layers='some' is not allowed"),
    (dict(layers=[0, -1]), "LinearAttentionConfig.layers=[0, -1] is not allowed"),
    (dict(layers=[0], num_layers=1), "num_layers=1 is not allowed: it is only used with layers='auto' or an adapter"),
    (dict(num_layers=-2), "num_layers=-2 is not allowed"),
    (dict(feature_map="softmax"), "feature_map='softmax' is not allowed; allowed: elu, relu, hedgehog"),
    (dict(rope="both"), "rope='both' is not allowed; allowed: numerator, none"),
    (dict(backend="cuda"), "backend='cuda' is not allowed"),
    (dict(adapter="/nonexistent/a.safetensors"), "adapter='/nonexistent/a.safetensors' is not allowed: no such file"),
    (dict(eps=0), "eps=0 is not allowed"),
])
def test_config_validation_names_field_and_value(kwargs, needle):
    with pytest.raises(ValueError) as e:
        LinearAttentionConfig(**kwargs)
    assert needle in str(e.value)


@pytest.mark.parametrize("kind", PIPELINE_KINDS)
def test_swapped_layers_act_on_every_expert(kind):
    """Which layers run linear attention, per family (no-op, repeat and remove: tests/test_contract.py)."""
    pipe = make_pipeline(kind)
    base = run_pipe(pipe, **SIZE)
    vidaccel.apply(pipe, LinearAttentionConfig(layers=[0, 3], feature_map="elu"))
    swapped = run_pipe(pipe, **SIZE)
    assert 1e-4 < rel(swapped, base) < 1.0
    for role, s in vidaccel.stats(pipe)["linear_attention"].items():
        assert s["layers"] == [0, 3] and s["linear_calls"] > 0 and s["fallback_calls"] == 0, role


def test_cogvideox_text_tokens_are_part_of_the_linear_attention():
    pipe = make_pipeline("cogvideox-1.0")
    attn = pipe.transformer.transformer_blocks[0].attn1
    outs = {}

    def hook(module, args, kwargs, output):
        outs.setdefault("o", []).append(output)

    h = attn.register_forward_hook(hook, with_kwargs=True)
    try:
        run_pipe(pipe, num_inference_steps=1, **SIZE)
        vidaccel.apply(pipe, LinearAttentionConfig(layers=[0], feature_map="elu"))
        run_pipe(pipe, num_inference_steps=1, **SIZE)
    finally:
        h.remove()
        vidaccel.remove(pipe)
    (video0, text0), (video1, text1) = outs["o"]
    assert text0.shape == text1.shape and not torch.allclose(text0, text1)  # text queries go through it too
    assert not torch.allclose(video0, video1)


def test_invalid_indices_and_auto_on_a_bare_model_raise():
    pipe = make_pipeline("wan21")
    with pytest.raises(ValueError, match=r"WanTransformer3DModel \(transformer\) has 4 layers"):
        vidaccel.apply(pipe, LinearAttentionConfig(layers=[1, 4]))
    assert vidaccel.applied(pipe) == []
    with pytest.raises(ValueError, match="needs a pipeline, not a bare transformer"):
        vidaccel.apply(pipe.transformer, LinearAttentionConfig(layers="auto", num_layers=1))
    with pytest.raises(ValueError, match="num_layers=5 is out of range"):
        vidaccel.apply(pipe, LinearAttentionConfig(layers="auto", num_layers=5, calibration_kwargs=CALL))


def test_apply_auto_ranks_on_the_pipeline_and_reports_the_ranking():
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, LinearAttentionConfig(layers="auto", num_layers=1, calibration_prompts=TRAIN[:1],
                                               calibration_kwargs=dict(CALL, num_inference_steps=2)))
    run_pipe(pipe, **SIZE)
    s = vidaccel.stats(pipe)["linear_attention"]["transformer"]
    vidaccel.remove(pipe)
    assert sorted(s["ranking"]) == [0, 1, 2, 3] and s["layers"] == s["ranking"][:1]
    assert min(s["sensitivity"].values()) == s["sensitivity"][str(s["layers"][0])] > 0
    assert s["linear_calls"] > 0


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """One Wan 2.1 distillation shared by the tests below: auto selection of 2 of 4 layers, 25 steps."""
    pipe = make_pipeline("wan21")
    out = tmp_path_factory.mktemp("adapter") / "wan21.safetensors"
    torch.manual_seed(0)
    result = linearize(pipe, LinearAttentionConfig(layers="auto", num_layers=2), prompts=TRAIN[:2], steps=25,
                       output=out, call_kwargs=CALL, lr=2e-2, progress=False)
    return pipe, result


def test_auto_selection_picks_the_least_sensitive_layers_and_saves_the_ranking(distilled):
    pipe, result = distilled
    sens = result.sensitivity["transformer"]
    ranking = result.ranking["transformer"]
    assert sorted(ranking) == [0, 1, 2, 3] and len(sens) == 4
    assert [sens[i] for i in ranking] == sorted(sens.values())
    assert result.layers["transformer"] == sorted(ranking[:2])
    meta = read_adapter_metadata(result.adapter)
    assert meta["ranking"]["transformer"] == ranking
    assert meta["roles"]["transformer"] == {"layers": result.layers["transformer"], "num_model_layers": 4}
    assert meta["model_class"] == "WanTransformer3DModel" and meta["feature_map"] == "hedgehog"


def test_distillation_lowers_swapped_layer_error_on_held_out_prompts(distilled):
    pipe, result = distilled
    layers = result.layers["transformer"]
    records = record_trajectories(pipe, HELD_OUT, call_kwargs=CALL)
    before = layer_output_error(pipe, LinearAttentionConfig(layers=layers), records=records)["transformer"]
    after = layer_output_error(pipe, result.config, records=records)["transformer"]
    # measured: ~0.40 -> ~0.18 relative RMS error of the swapped layers' attention outputs
    assert after < 0.75 * before, (before, after)
    assert result.losses[-1] < 0.5 * result.losses[0]
    # and the whole model's output moves closer to the original
    base = run_pipe(pipe, prompt=HELD_OUT[0], **SIZE, num_inference_steps=4)
    vidaccel.apply(pipe, LinearAttentionConfig(layers=layers))
    init = run_pipe(pipe, prompt=HELD_OUT[0], **SIZE, num_inference_steps=4)
    vidaccel.remove(pipe)
    vidaccel.apply(pipe, result.config)
    trained = run_pipe(pipe, prompt=HELD_OUT[0], **SIZE, num_inference_steps=4)
    vidaccel.remove(pipe)
    assert rel(trained, base) < rel(init, base)


def test_adapter_save_load_gives_identical_outputs(distilled):
    pipe, result = distilled
    vidaccel.apply(pipe, result.config)
    a = run_pipe(pipe, **SIZE)
    assert vidaccel.stats(pipe)["linear_attention"]["transformer"]["ranking"] == result.ranking["transformer"]
    vidaccel.remove(pipe)
    fresh = make_pipeline("wan21")  # same weights, a new process-like start
    vidaccel.apply(fresh, LinearAttentionConfig(adapter=str(result.adapter)))
    np.testing.assert_array_equal(run_pipe(fresh, **SIZE), a)
    vidaccel.remove(fresh)


def test_adapter_loads_through_from_pretrained_accel(distilled, tmp_path):
    from vidaccel.pipelines import WanPipeline

    _, result = distilled
    make_pipeline("wan21").save_pretrained(tmp_path)
    cfg = LinearAttentionConfig(adapter=str(result.adapter))
    loaded = WanPipeline.from_pretrained(tmp_path, accel=cfg)
    loaded.set_progress_bar_config(disable=True)
    assert vidaccel.applied(loaded) == ["linear_attention"]
    got = run_pipe(loaded, **SIZE)
    assert vidaccel.stats(loaded)["linear_attention"]["transformer"]["ranking"] == result.ranking["transformer"]
    plain = WanPipeline.from_pretrained(tmp_path)
    plain.set_progress_bar_config(disable=True)
    base = run_pipe(plain, **SIZE)
    vidaccel.apply(plain, cfg)
    np.testing.assert_array_equal(run_pipe(plain, **SIZE), got)
    assert not np.array_equal(got, base)


def test_adapter_num_layers_swaps_its_least_sensitive_layers_with_their_trained_maps(distilled):
    pipe, result = distilled
    layers, ranking = result.layers["transformer"], result.ranking["transformer"]
    first = [i for i in ranking if i in layers][0]
    vidaccel.apply(pipe, LinearAttentionConfig(adapter=str(result.adapter), num_layers=1))
    sub = run_pipe(pipe, **SIZE)
    assert vidaccel.stats(pipe)["linear_attention"]["transformer"]["layers"] == [first]
    vidaccel.remove(pipe)
    # the subset keeps the adapter's trained feature map for that layer: it differs from the untrained swap
    vidaccel.apply(pipe, LinearAttentionConfig(layers=[first]))
    untrained = run_pipe(pipe, **SIZE)
    vidaccel.remove(pipe)
    assert not np.array_equal(sub, untrained)
    with pytest.raises(ValueError, match="num_layers=3 is out of range: adapter .* swaps 2 layers"):
        vidaccel.apply(pipe, LinearAttentionConfig(adapter=str(result.adapter), num_layers=3))
    assert vidaccel.applied(pipe) == []


def test_adapter_on_a_model_with_another_layer_count_raises(distilled):
    from vidaccel.testing import tiny_wan_pipeline

    _, result = distilled
    pipe = tiny_wan_pipeline(num_layers=3)
    with pytest.raises(ValueError, match="with 4 layers, but transformer has 3 layers"):
        vidaccel.apply(pipe, result.config)
    cog = make_pipeline("cogvideox-1.0")
    with pytest.raises(ValueError, match="was made for WanTransformer3DModel, not CogVideoXTransformer3DModel"):
        vidaccel.apply(cog, result.config)


def test_wan22_distils_both_experts_into_one_adapter(tmp_path):
    pipe = make_pipeline("wan22")
    out = tmp_path / "wan22.safetensors"
    result = linearize(pipe, LinearAttentionConfig(layers=[1, 2]), prompts=TRAIN[:1], steps=6, output=out,
                       call_kwargs=CALL, progress=False, final_weight=0.5)  # + the final-output loss
    assert len(result.losses) == 6 and all(np.isfinite(result.losses))
    meta = read_adapter_metadata(out)
    assert set(meta["roles"]) == {"transformer", "transformer_2"}
    from safetensors.torch import load_file

    keys = load_file(out)
    assert any(k.startswith("transformer.1.") for k in keys) and any(k.startswith("transformer_2.2.") for k in keys)
    vidaccel.apply(pipe, result.config)
    run_pipe(pipe, **SIZE)
    stats = vidaccel.stats(pipe)["linear_attention"]
    assert stats["transformer"]["linear_calls"] > 0 and stats["transformer_2"]["linear_calls"] > 0
    vidaccel.remove(pipe)


def test_linearize_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    pipe = make_pipeline("cogvideox-1.0")
    kw = dict(prompts=TRAIN[:1], call_kwargs=dict(CALL, num_inference_steps=2), progress=False, save_every=3)
    cfg = LinearAttentionConfig(layers=[0, 2])
    straight = linearize(pipe, cfg, steps=8, output=tmp_path / "a.safetensors", **kw)
    linearize(pipe, cfg, steps=4, checkpoint_dir=tmp_path / "ckpt", **kw)
    resumed = linearize(pipe, cfg, steps=8, output=tmp_path / "b.safetensors", checkpoint_dir=tmp_path / "ckpt",
                        resume=True, **kw)
    assert resumed.steps == 8 and len(resumed.losses) == 8
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("argv,needle", [
    (["embedded", "-o", "x.safetensors"], "give at least one --prompt"),
    (["--prompt", "a", "-o", "x.safetensors", "--layers", "0,x"], "--layers='0,x' is not allowed"),
    (["--prompt", "a", "-o", "x.safetensors", "--feature-map", "cosine"], "--feature-map='cosine' is not allowed"),
    (["--prompt", "a", "-o", "x.safetensors", "--steps", "-1"], "--steps=-1 is not allowed"),
    (["--prompt", "a", "-o", "x.safetensors", "--resume"], "--resume needs --checkpoint-dir"),
    (["--prompt", "a"], "the following arguments are required: --output/-o"),
    (["/nonexistent/model", "--prompt", "a", "-o", "x.safetensors"], "--model='/nonexistent/model' is not allowed: no such folder"),
])
def test_cli_bad_arguments_exit_2_with_one_line(argv, needle, capsys):
    assert main(["linearize", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and err.startswith("error:")


def test_cli_writes_an_adapter(tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    code = main(["linearize", "embedded", "--prompt", "a red circle moving right on a black background", "-o", str(out),
                           "--layers", "0", "--steps", "2", "--inference-steps", "2", "--height", "32", "--width",
                           "32", "--num-frames", "5", "--no-progress", "--device", "cpu"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["layers"] == {"transformer": [0]} and os.path.isfile(out)
    assert LinearAttentionConfig(adapter=str(out)).adapter_metadata["roles"]["transformer"]["layers"] == [0]
