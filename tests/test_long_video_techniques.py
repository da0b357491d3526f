"""Every technique inside LongVideoPipeline either acts (stats count it, the output changes, remove restores) or
is refused at apply with a message; I2V transformers and window/sink/chunk settings the KV path cannot run are
refused up front; the chunk-window attention op against its spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel import CacheConfig, LinearAttentionConfig, QuantConfig, SlidingWindowConfig
from vidaccel.kernels.attention.chunk_window import (chunk_window_attention, chunk_window_attention_naive,
                                                     chunk_window_density)
from vidaccel.kernels.attention.naive import sliding_tile_mask
from vidaccel.pipelines.long_video import CausalConfig, LongVideoPipeline

pytestmark = pytest.mark.usefixtures("one_thread")
KW = dict(height=64, width=64, num_inference_steps=3, seed=0, progress=False, num_frames=21)


@pytest.fixture(scope="module")
def pipe():
    from vidaccel.testing import tiny_wan_pipeline

    p = LongVideoPipeline(**tiny_wan_pipeline(seed=3).components)
    p.causal_config = CausalConfig(chunk_frames=2, window_frames=6, context_noise=0.02, max_sequence_length=16)
    return p


# technique config -> (stats key that must be > 0, ...)
ACTING = [
    (CacheConfig(threshold=float("inf"), policy="call", interval=2, warmup_steps=2, final_steps=0), "skipped_calls"),
    (QuantConfig(format="fp8"), "layers"),
    (SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2)), "sparse_calls"),
    (LinearAttentionConfig(layers=[0, 2], feature_map="elu"), "linear_calls"),
]


@pytest.mark.parametrize("use_kv_cache", [True, False], ids=["kv", "recompute"])
@pytest.mark.parametrize("config,counter", ACTING, ids=lambda v: type(v).__name__ if not isinstance(v, str) else "")
def test_every_technique_acts_inside_long_video(pipe, config, counter, use_kv_cache):
    kw = dict(KW, use_kv_cache=use_kv_cache)
    base = pipe("a red circle", **kw).frames
    vidaccel.apply(pipe, config)
    try:
        out = pipe("a red circle", **kw).frames
        (name, per_role), = vidaccel.stats(pipe).items()
        st = per_role["transformer"]
    finally:
        vidaccel.remove(pipe)
    assert np.isfinite(out).all() and not np.array_equal(out, base)
    assert st[counter], st
    if name == "sliding_window":
        assert st["density"] < 0.5 and st["dense_calls"] == 0
    np.testing.assert_array_equal(pipe("a red circle", **kw).frames, base)


@pytest.mark.parametrize("config", [SlidingWindowConfig(window=(64, 2, 2), tile=(1, 2, 2)),
                                    LinearAttentionConfig(layers=[1], feature_map="relu", rope="numerator")],
                         ids=["window", "linear"])
def test_kv_path_equals_recompute_with_a_window_covering_every_frame(pipe, config):
    vidaccel.apply(pipe, config)
    try:
        kv = pipe("a red circle", use_kv_cache=True, **KW).frames
        ref = pipe("a red circle", use_kv_cache=False, **KW).frames
    finally:
        vidaccel.remove(pipe)
    assert np.abs(kv - ref).max() <= 1e-5


def test_window_with_sink_ema_reuse_and_dense_settings(pipe):
    cfg = SlidingWindowConfig(window=(2, 2, 2), tile=(1, 2, 2), dense_steps=1, dense_layers=[3])
    vidaccel.apply(pipe, cfg)
    try:
        out = pipe("a red circle", window_frames=5, sink_frames=1, ema_decay=0.8, reuse_context_attention=True,
                   **dict(KW, num_frames=45))
        st = vidaccel.stats(pipe)["sliding_window"]["transformer"]
    finally:
        vidaccel.remove(pipe)
    assert out.frames.shape[0] == 45 and np.isfinite(out.frames).all()
    assert st["sparse_calls"] > 0 and st["dense_calls"] > 0 and st["density"] < 1.0


def test_techniques_that_cannot_act_are_refused_at_apply(pipe, test_techniques):
    scale_attn, _ = test_techniques
    for config, needle in [(scale_attn(), "'test-scale-attn'.*has no long-video form"),
                           (SlidingWindowConfig(window=(1, 2, 2), cross_attn_every=2), "cross_attn_every=2"),
                           (LinearAttentionConfig(layers="auto"), "layers='auto'")]:
        with pytest.raises(ValueError, match=needle) as info:
            vidaccel.apply(pipe, config)
        assert "sliding_window (sliding-tile attention" in str(info.value)
        assert vidaccel.applied(pipe) == []


def test_a_technique_applied_before_is_refused_at_the_call(test_techniques):
    from vidaccel.testing import tiny_wan_pipeline

    scale_attn, _ = test_techniques
    t2v = tiny_wan_pipeline(seed=3)
    vidaccel.apply(t2v.transformer, scale_attn())
    long = LongVideoPipeline(**t2v.components)
    with pytest.raises(ValueError, match="has no long-video form"):
        long("a red circle", **dict(KW, num_frames=9))
    vidaccel.remove(t2v.transformer)


def test_image_to_video_transformers_are_refused_up_front():
    from vidaccel.testing import tiny_wan_pipeline

    i2v = tiny_wan_pipeline(variant="i2v")
    long = LongVideoPipeline(transformer=i2v.transformer, vae=i2v.vae, text_encoder=i2v.text_encoder,
                             tokenizer=i2v.tokenizer, scheduler=i2v.scheduler)
    with pytest.raises(ValueError, match=r"36 input channels.*image-to-video.*Wan2\.2-TI2V-5B"):
        long("a red circle", **dict(KW, num_frames=9))
    with pytest.raises(ValueError, match="image-to-video"):
        CausalConfig.for_model(i2v.transformer)


def test_window_sink_chunk_combinations_the_kv_path_cannot_run_are_rejected(pipe):
    kw = dict(KW, num_frames=21, window_frames=4, sink_frames=1, chunk_frames=2)
    with pytest.raises(ValueError, match=r"window_frames=4 is not allowed with use_kv_cache=True: it must be >= "
                                         r"2 \* chunk_frames \+ sink_frames = 5"):
        pipe("a red circle", **kw)
    out = pipe("a red circle", use_kv_cache=False, **kw)  # the recompute path runs it
    assert out.frames.shape[0] == 21
    assert pipe("a red circle", **dict(kw, window_frames=5)).frames.shape[0] == 21


def test_causal_config_from_a_wan_config():
    from vidaccel.testing import tiny_wan_pipeline

    cc = CausalConfig.for_model(tiny_wan_pipeline().transformer, chunk_frames=2)
    assert (cc.chunk_frames, cc.window_frames, cc.max_sequence_length) == (2, 20, 512)
    with pytest.raises(ValueError, match="exceeds the 32 frame positions"):
        CausalConfig.for_model(tiny_wan_pipeline().transformer, chunk_frames=2, window_frames=40)


@pytest.mark.parametrize("grid,window,tile,num_global,query_frames", [
    ((5, 6, 7), (3, 4, 4), (1, 2, 3), 0, 2),
    ((4, 5, 9), (2, 3, 5), (1, 4, 4), 10, 1),
    ((3, 4, 4), (9, 9, 9), (1, 2, 2), 16, 3),
    ((7, 3, 5), (1, 1, 1), (1, 1, 1), 3, 2),
])
@pytest.mark.parametrize("backend", ["gather", "torch"])
def test_chunk_window_attention_matches_its_spec(grid, window, tile, num_global, query_frames, backend):
    g = torch.Generator().manual_seed(sum(grid) + num_global)
    lq, lk = query_frames * grid[1] * grid[2], num_global + grid[0] * grid[1] * grid[2]
    q, k, v = (torch.randn(2, n, 3, 60, generator=g) for n in (lq, lk, lk))
    ref = chunk_window_attention_naive(q, k, v, grid=grid, window=window, tile=tile, num_global=num_global)
    out = chunk_window_attention(q, k, v, grid=grid, window=window, tile=tile, num_global=num_global, backend=backend)
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 1e-5, err  # NaN fails too
    mask = sliding_tile_mask(grid, window, tile, num_global)[-lq:]
    assert chunk_window_density(grid, window, tile, num_global, query_frames) == pytest.approx(mask.float().mean().item())


def test_chunk_window_attention_rejects_bad_shapes():
    q = torch.randn(1, 12, 2, 8)
    k = torch.randn(1, 36, 2, 8)
    with pytest.raises(ValueError, match="temporal tiles must be single frames"):
        chunk_window_attention(q, k, k, grid=(3, 3, 4), window=(2, 2, 2), tile=(2, 2, 2))
    with pytest.raises(ValueError, match="whole frames of 12 tokens"):
        chunk_window_attention(q[:, :10], k, k, grid=(3, 3, 4), window=(2, 2, 2), tile=(1, 2, 2))
