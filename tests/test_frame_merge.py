"""FrameMergeConfig (dynamic latent frame rate): the plan, the split-back rule, the families' frame positions,
every family, and composition (no-op, repeat and remove on every pipeline kind: tests/test_contract.py)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import logging
import math

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel import CacheConfig, FrameMergeConfig, QuantAttentionConfig, SlidingWindowConfig
from vidaccel.accel.frame_merge.technique import FrameMergeTechnique, Prediction, merge_groups
from vidaccel.core.technique import technique_for_type
from vidaccel.families import family_for

from .conftest import PIPELINE_KINDS, make_pipeline, run_pipe

pytestmark = pytest.mark.usefixtures("one_thread")

# Latent outputs, 8 steps (merged steps 2..5 with the example's merge_at=0.2 / split_at=0.8); Wan and CogVideoX
# 1.0 see 3 latent frames of 4×4 tokens; the tiny CogVideoX 1.5 (temporal patch 2) sees 2 token frames.
SIZE = dict(height=64, width=64, output_type="latent", num_inference_steps=8)
SIZES = {"cogvideox-1.5": dict(SIZE, height=32, width=32)}
MERGE_ALL = FrameMergeConfig(threshold=math.inf, max_group=2, merge_at=0.2, split_at=0.8, keep_first=False)


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_registered():
    assert technique_for_type(FrameMergeConfig) is FrameMergeTechnique


# -- the plan -----------------------------------------------------------------------------------------------
def _distance(values):
    """A symmetric [T, T] distance from positions on a line."""
    x = torch.tensor(values, dtype=torch.float32)
    return (x[:, None] - x[None, :]).abs()


def test_merge_groups_respects_threshold_every_pair_max_group_and_keep_first():
    d = _distance([0.0, 1.0, 1.05, 1.1, 1.15, 3.0, 3.02])
    assert merge_groups(d, 0.5, 4, keep_first=True) == [[0], [1, 2, 3, 4], [5, 6]]
    assert merge_groups(d, 0.5, 2, keep_first=True) == [[0], [1, 2], [3, 4], [5, 6]]
    # every pair counts: 1.0 and 1.15 are 0.15 apart, over a 0.12 threshold
    assert merge_groups(d, 0.12, 4, keep_first=True) == [[0], [1, 2, 3], [4], [5, 6]]
    assert merge_groups(d, 2.0, 2, keep_first=False) == [[0, 1], [2, 3], [4, 5], [6]]
    assert merge_groups(d, 0.0, 4, keep_first=False) == [[i] for i in range(7)]
    assert merge_groups(d, math.inf, 8, keep_first=True) == [[0], [1, 2, 3, 4, 5, 6]]


# -- the split-back rule --------------------------------------------------------------------------------------
def _schedulers():
    from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    unipc = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    euler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    v_pred = CogVideoXDDIMScheduler(prediction_type="v_prediction")
    eps = CogVideoXDDIMScheduler(prediction_type="epsilon")
    return [unipc, euler, v_pred, eps]


@pytest.mark.parametrize("index", range(4), ids=["unipc-flow", "euler-flow", "v", "epsilon"])
def test_prediction_recovers_x0_and_gain_shares_it_across_frames(index):
    scheduler = _schedulers()[index]
    scheduler.set_timesteps(10)
    step = 3
    t = scheduler.timesteps[step]
    torch.manual_seed(index)
    x0, noise = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    p = Prediction(scheduler, step, t)
    if p.kind == "flow":
        sigma = float(scheduler.sigmas[step])
        x_t, out = (1 - sigma) * x0 + sigma * noise, noise - x0
    else:
        a = float(scheduler.alphas_cumprod[int(t)])
        x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
        out = math.sqrt(a) * noise - math.sqrt(1 - a) * x0 if p.kind == "v_prediction" else noise
    torch.testing.assert_close(p.x0(x_t, out), x0, rtol=1e-5, atol=1e-5)
    # another frame with its own noisy latent, given the anchor's output plus gain·Δx_t, has the anchor's x0
    other = x_t + torch.randn_like(x_t)
    torch.testing.assert_close(p.x0(other, out + p.gain * (other - x_t)), x0, rtol=1e-4, atol=1e-4)


def test_unknown_scheduler_parameterization_is_refused():
    class Sample:
        config = {"prediction_type": "sample"}
        alphas_cumprod = torch.ones(10)

    with pytest.raises(ValueError, match="Sample \\(prediction_type='sample'\\) is none of them"):
        Prediction(Sample(), 0, 0)


# -- the families' frame positions ---------------------------------------------------------------------------
def test_wan_rope_of_kept_frames_is_their_rows_in_the_full_grid():
    model = make_pipeline("wan21").transformer
    family = family_for(model)
    full = torch.zeros(1, 16, 6, 8, 8)
    kept = torch.tensor([0, 2, 3, 5])
    cos_full, sin_full = model.rope(full)
    chosen = (kept, 6)
    handles = family.frame_position_hooks(model, lambda: chosen)
    try:
        cos, sin = model.rope(full[:, :, kept])
    finally:
        for h in handles:
            h.remove()
    rows = lambda x: x.unflatten(1, (6, -1))[:, kept].flatten(1, 2)  # noqa: E731
    torch.testing.assert_close(cos, rows(cos_full), rtol=0, atol=0)
    torch.testing.assert_close(sin, rows(sin_full), rtol=0, atol=0)
    plain_cos, _ = model.rope(full[:, :, kept])  # without the hook: positions 0..3
    assert not torch.equal(plain_cos, cos)


def test_cogvideox_2b_position_embeddings_of_kept_frames_are_their_rows_in_the_full_grid():
    model = make_pipeline("cogvideox-1.0").transformer
    family = family_for(model)
    torch.manual_seed(0)
    text = torch.randn(1, model.config.max_text_seq_length, model.config.text_embed_dim)
    latent = torch.randn(1, 5, 4, 8, 8)  # [B, F, C, H, W]
    kept = torch.tensor([0, 1, 3])
    with torch.no_grad():
        full = model.patch_embed(text, latent)
        chosen = (kept, 5)
        handles = family.frame_position_hooks(model, lambda: chosen)
        try:
            merged = model.patch_embed(text, latent[:, kept])
        finally:
            for h in handles:
                h.remove()
    n_text = text.shape[1]
    want = torch.cat([full[:, :n_text], full[:, n_text:].unflatten(1, (5, -1))[:, kept].flatten(1, 2)], dim=1)
    torch.testing.assert_close(merged, want, rtol=1e-6, atol=1e-6)


def test_cogvideox_rotary_tables_are_cut_to_the_kept_frames():
    model = make_pipeline("cogvideox-1.5").transformer
    family = family_for(model)
    seen = {}
    tables = (torch.arange(3 * 4 * 2.0).view(12, 2), -torch.arange(3 * 4 * 2.0).view(12, 2))  # 3 frames × 4 tokens
    chosen = (torch.tensor([0, 2]), 3)
    handles = family.frame_position_hooks(model, lambda: chosen)
    handles.append(model.register_forward_pre_hook(lambda m, a, k: seen.update(k) or (a, {"hidden_states": None}),
                                                   with_kwargs=True))
    try:
        with pytest.raises(Exception):  # the probe hook empties the call; only the tables it saw matter
            model(hidden_states=torch.zeros(1), image_rotary_emb=tables)
    finally:
        for h in handles:
            h.remove()
    rows = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])
    torch.testing.assert_close(seen["image_rotary_emb"][0], tables[0][rows])
    torch.testing.assert_close(seen["image_rotary_emb"][1], tables[1][rows])


def test_unsupported_models_are_refused_before_anything_changes():
    from vidaccel.testing import tiny_cogvideox_pipeline

    pipe = tiny_cogvideox_pipeline("1.0", variant="i2v")  # learned position embeddings
    with pytest.raises(ValueError, match="learned position embeddings"):
        vidaccel.apply(pipe, MERGE_ALL)
    assert vidaccel.applied(pipe) == []
    with pytest.raises(ValueError, match="needs a pipeline, not a bare transformer"):
        vidaccel.apply(make_pipeline("wan21").transformer, MERGE_ALL)


# -- in pipelines ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", PIPELINE_KINDS)
def test_every_family_merges_the_middle_steps_and_restores(kind):
    pipe = make_pipeline(kind)
    size = SIZES.get(kind, SIZE)
    base = run_pipe(pipe, **size)
    vidaccel.apply(pipe, MERGE_ALL)
    out = run_pipe(pipe, **size)
    stats = vidaccel.stats(pipe)["frame_merge"]
    vidaccel.remove(pipe)
    calls_per_step = 2 if family_for(pipe.transformer).cfg_style == "sequential" else 1
    tokens = 2 if kind == "cogvideox-1.5" else 3
    groups = [[0, 1]] if tokens == 2 else [[0, 1], [2]]
    for s in stats.values():
        assert s["token_frames"] == tokens and s["groups"] == groups and s["merged_steps"] == [2, 6]
        assert len(s["motion"]) == tokens - 1
    assert sum(s["merged_calls"] for s in stats.values()) == 4 * calls_per_step
    assert sum(s["full_calls"] for s in stats.values()) == 4 * calls_per_step
    assert np.isfinite(out).all() and rel(out, base) > 1e-3
    np.testing.assert_array_equal(run_pipe(pipe, **size), base)


def test_merged_frames_share_the_anchor_clean_latent_during_merged_steps():
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, MERGE_ALL)
    model = pipe.transformer
    seen = []
    # runs before the technique's (prepended) pre-hook: the full latent; the forward hook after it: the split output
    pre = model.register_forward_pre_hook(lambda m, a, k: seen.append([k["hidden_states"], k["timestep"]]),
                                          with_kwargs=True, prepend=True)
    post = model.register_forward_hook(lambda m, a, o: seen[-1].append(o[0] if isinstance(o, tuple) else o.sample))
    try:
        run_pipe(pipe, **SIZE)
    finally:
        pre.remove()
        post.remove()
        vidaccel.remove(pipe)
    scheduler = pipe.scheduler
    merged = 0
    for x_t, t, out in seen:
        step = int((scheduler.timesteps.float() - float(t.max())).abs().argmin())
        x0 = Prediction(scheduler, step, t).x0(x_t.float(), out.float())
        gap = float((x0[:, :, 1] - x0[:, :, 0]).abs().max())  # group [0, 1], anchor 0
        if 2 <= step < 6:
            assert gap < 1e-4, (step, gap)
            merged += 1
        else:
            assert gap > 1e-2, (step, gap)
    assert merged == 8


def test_wan22_experts_follow_one_plan():
    pipe = make_pipeline("wan22")
    vidaccel.apply(pipe, FrameMergeConfig(threshold=math.inf, max_group=2, merge_at=0.1, split_at=0.9,
                                          keep_first=False))
    run_pipe(pipe, **SIZE)
    stats = vidaccel.stats(pipe)["frame_merge"]
    vidaccel.remove(pipe)
    assert stats["transformer"]["groups"] == stats["transformer_2"]["groups"] == [[0, 1], [2]]
    # steps 1..6 merged (round(0.8) = 1, round(7.2) = 7), 2 CFG calls each, split between the experts
    assert stats["transformer"]["merged_calls"] + stats["transformer_2"]["merged_calls"] == 6 * 2
    assert stats["transformer_2"]["merged_calls"] > 0


def test_composes_with_caching_sliding_windows_and_quantized_attention():
    pipe = make_pipeline("wan21")
    base = run_pipe(pipe, **SIZE)
    for cache in (CacheConfig(threshold=math.inf, policy="call", interval=2, warmup_steps=2, final_steps=0),
                  CacheConfig(threshold=0.5, policy="block", forecast_order=1, warmup_steps=1)):
        vidaccel.apply(pipe, cache, MERGE_ALL)
        out = run_pipe(pipe, **SIZE)
        stats = vidaccel.stats(pipe)
        vidaccel.remove(pipe)
        assert stats["frame_merge"]["transformer"]["merged_calls"] == 8
        assert stats["cache"]["transformer"]["blocks_skipped"] > 0, cache.policy
        assert np.isfinite(out).all()
    # windows and quantized attention act on the merged token grid (2 token frames of 4×4) in merged steps
    vidaccel.apply(pipe, MERGE_ALL, SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2)), QuantAttentionConfig())
    run_pipe(pipe, **SIZE)
    stats = vidaccel.stats(pipe)
    vidaccel.remove(pipe)
    assert stats["frame_merge"]["transformer"]["merged_calls"] == 8
    assert stats["quant_attention"]["transformer"]["sparse_calls"] == stats["sliding_window"]["transformer"][
        "sparse_calls"] == 16 * 4
    np.testing.assert_array_equal(run_pipe(pipe, **SIZE), base)


def test_nothing_to_merge_warns_with_the_measured_motion(caplog):
    pipe = make_pipeline("wan21")
    base = run_pipe(pipe, **SIZE)
    vidaccel.apply(pipe, FrameMergeConfig(threshold=1e-6))
    with caplog.at_level(logging.WARNING, logger="vidaccel.accel.frame_merge"):
        out = run_pipe(pipe, **SIZE)
    stats = vidaccel.stats(pipe)["frame_merge"]["transformer"]
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(out, base)
    assert stats["merged_calls"] == 0 and stats["groups"] == [[0], [1], [2]]
    assert "merged no frames" in caplog.text and "motion" in caplog.text


@pytest.mark.parametrize("field,value,allowed", [
    ("threshold", -0.1, "number >= 0"), ("threshold", float("nan"), "number >= 0"), ("max_group", 1, "integer >= 2"),
    ("merge_at", 1.5, r"finite number in \[0, 1\]"), ("split_at", -0.2, r"finite number in \[0, 1\]"),
    ("keep_first", "yes", "True or False"),
])
def test_config_errors_name_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError, match=f"FrameMergeConfig.{field}=.*{allowed}"):
        FrameMergeConfig(**{field: value})


def test_split_must_come_after_merge():
    with pytest.raises(ValueError, match="split_at=0.3 is not allowed: it must be greater than merge_at=0.5"):
        FrameMergeConfig(merge_at=0.5, split_at=0.3)


def test_presets_are_bench_configs():
    from vidaccel.accel import preset_configs
    from vidaccel.bench import bench_configs_from_names

    assert preset_configs("frame-merge") == [FrameMergeConfig()]
    assert [c.name for c in bench_configs_from_names(["frame-merge", "quant-attention"])] == ["frame-merge",
                                                                                             "quant-attention"]


def test_gpu_acceptance_rows_run_in_smoke_mode():
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from gpu_acceptance_extra import issue24_e2e

    class Ctx:
        smoke, device = True, "cpu"

    names = ["none", "quant-attention", "frame-merge pairs 20-80%"]
    rows = issue24_e2e(Ctx, 3, float("inf"), names)
    assert [r["run"] for r in rows] == names
    assert all("error" not in r and r["finite"] for r in rows), rows
    merge = rows[2]["stats"]["frame_merge"]["transformer"]
    assert merge["merged_calls"] > 0 and merge["merged_token_frames"] < merge["token_frames"]
    assert rows[1]["stats"]["quant_attention"]["transformer"]["quantized_calls"] > 0
