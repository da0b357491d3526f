"""LongVideoPipeline: KV cache vs recompute, frame counts, schedules, interruption, streaming decode, convert."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from vidaccel.pipelines.long_video import CausalConfig
from vidaccel.families.wan import WanStreamingDecoder
from vidaccel.pipelines.long_video import LongVideoPipeline, parse_schedule
from vidaccel.video import read_video

KW = dict(height=32, width=32, num_inference_steps=3, seed=0, progress=False)


@pytest.fixture(scope="module")
def pipe():
    from vidaccel.testing import tiny_wan_pipeline

    p = LongVideoPipeline(**tiny_wan_pipeline(seed=3).components)
    p.causal_config = CausalConfig(chunk_frames=2, window_frames=6, context_noise=0.02, max_sequence_length=16)
    return p


def test_kv_cache_equals_recompute_when_window_covers_everything(pipe):
    kw = dict(KW, num_frames=37, window_frames=20)  # 10 latent frames, 5 chunks, all visible
    a = pipe("a red circle", use_kv_cache=True, **kw)
    b = pipe("a red circle", use_kv_cache=False, **kw)
    assert a.frames.shape == b.frames.shape == (37, 32, 32, 3) and np.isfinite(a.frames).all()
    rel = np.abs(a.frames - b.frames).max() / np.abs(b.frames).max()
    assert rel <= 1e-4, rel
    assert a.stats["context_tokens_attended"] > 0 and b.stats["context_tokens_attended"] is None


def test_sliding_window_sink_and_ema_run_bounded(pipe):
    kw = dict(KW, num_frames=61, window_frames=5, sink_frames=1)
    plain = pipe("a red circle", **kw)
    ema = pipe("a red circle", ema_decay=0.8, **kw)
    absolute = pipe("a red circle", positions="absolute", **kw)
    ref = pipe("a red circle", use_kv_cache=False, **kw)
    for out in (plain, ema, absolute, ref):
        assert out.frames.shape[0] == 61 and np.isfinite(out.frames).all()
    assert not np.array_equal(plain.frames, ema.frames)
    assert plain.stats["kv_cache_mib"] == ema.stats["kv_cache_mib"] > 0  # fixed size, whatever the length
    # same seed, same settings: identical
    np.testing.assert_array_equal(pipe("a red circle", **kw).frames, plain.frames)


@pytest.mark.parametrize("num_frames", [1, 5, 9, 12, 17, 30])
def test_exact_frame_counts(pipe, num_frames):
    out = pipe("a red circle", num_frames=num_frames, **KW)
    assert out.num_frames == out.frames.shape[0] == num_frames


def test_seconds_and_fps(pipe):
    out = pipe("a red circle", seconds=1.5, fps=8, **KW)
    assert out.num_frames == 12


@pytest.mark.parametrize("schedule,needle", [
    ([(0, "a"), (2, "b"), (1, "c")], "strictly increasing"),
    ([(0, "a"), (5, "b")], "past the end"),
    ([(0, "a"), (1, "  ")], "empty prompt"),
    ([(1, "a")], "must start at 0"),
    ([(0, "a"), (-1, "b")], "time=-1"),
    ([], "empty"),
])
def test_invalid_schedules_raise(schedule, needle):
    with pytest.raises(ValueError, match=needle):
        parse_schedule(schedule, total_frames=48, fps=16)


def test_schedule_switch_recaches(pipe):
    out = pipe([(0, "a red circle"), (1.0, "a blue square")], num_frames=41, fps=16, **KW)
    assert out.chunk_prompts[0] == "a red circle" and out.chunk_prompts[-1] == "a blue square"
    assert out.stats["prompt_switches_recached"] == 1


@pytest.mark.parametrize("kwargs,needle", [
    (dict(window_frames=2), "window_frames=2 is not allowed"),
    (dict(chunk_frames=0), "chunk_frames=0"),
    (dict(positions="wild"), "positions='wild'"),
    (dict(num_frames=None), "exactly one of"),
])
def test_invalid_arguments(pipe, kwargs, needle):
    args = dict(KW, num_frames=9)
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        pipe("a red circle", **args)


def test_absolute_positions_past_rope_table_raise(pipe):
    # rope_max_seq_len=32 in the tiny model: 40 latent frames cannot have absolute positions
    with pytest.raises(ValueError, match="use positions='relative'"):
        pipe("a", num_frames=157, positions="absolute", **KW)


def test_context_attention_reuse_is_close_and_exact_with_one_step(pipe):
    kw = dict(KW, num_frames=29, window_frames=8)
    exact = pipe("a red circle", **kw)
    reuse = pipe("a red circle", reuse_context_attention=True, **kw)
    assert np.isfinite(reuse.frames).all() and not np.array_equal(reuse.frames, exact.frames)
    one = dict(kw, num_inference_steps=1)
    np.testing.assert_allclose(pipe("a", reuse_context_attention=True, **one).frames, pipe("a", **one).frames,
                               atol=1e-5)


def test_streaming_decode_equals_full_decode(pipe):
    torch.manual_seed(0)
    lat = torch.randn(1, 16, 5, 4, 4)
    dec = WanStreamingDecoder(pipe.vae)
    streamed = torch.cat([dec.decode(lat[:, :, :2]), dec.decode(lat[:, :, 2:3]), dec.decode(lat[:, :, 3:])], dim=2)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    full = pipe.vae.decode(lat * std + mean, return_dict=False)[0]
    assert streamed.shape == full.shape == (1, 3, 17, 32, 32)
    torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5)


def test_sigterm_keeps_a_playable_file_of_whole_chunks(pipe, tmp_path):
    path = tmp_path / "long.mp4"
    before = signal.getsignal(signal.SIGTERM)
    seen = []
    for i, frames in enumerate(pipe.stream("a red circle", num_frames=45, output=path, **KW)):
        seen.append(frames.shape[0])
        if i == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: stop after this chunk
    assert len(seen) == 2 and seen == [5, 8]  # chunk 0: 1 + 4 px frames, later chunks 8
    assert read_video(path).shape[0] == 13
    assert signal.getsignal(signal.SIGTERM) is before  # the pipeline's handler is removed again


def test_keyboard_interrupt_finalizes_file(pipe, tmp_path, monkeypatch):
    path = tmp_path / "ki.mp4"
    real = WanStreamingDecoder.decode
    calls = {"n": 0}

    def decode(self, latents):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, latents)

    monkeypatch.setattr(WanStreamingDecoder, "decode", decode)
    out = pipe("a red circle", num_frames=45, output=path, **KW)
    assert out.interrupted and len(out.chunk_seconds) == 2
    assert read_video(path).shape[0] == out.num_frames == 13


def _to_original_names(sd: dict) -> dict:
    """diffusers → original Wan names (test-only inverse of diffusers' converter, for a T2V model)."""
    pairs = [
        ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
        ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
        ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
        ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
        ("condition_embedder.time_proj", "time_projection.1"),
        ("attn2", "cross_attn"), ("attn1", "self_attn"), (".to_out.0.", ".o."), (".to_q.", ".q."),
        (".to_k.", ".k."), (".to_v.", ".v."), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
        ("norm2", "norm__x"), ("norm3", "norm2"), ("norm__x", "norm3"), ("proj_out", "head.head"),
    ]
    out = {}
    for key, value in sd.items():
        new = key
        for a, b in pairs:
            new = new.replace(a, b)
        new = "head.modulation" if new == "scale_shift_table" else new.replace("scale_shift_table", "modulation")
        out["model." + new] = value.clone()  # Self-Forcing style prefix
    return out


def test_convert_wan_original_roundtrip(tmp_path):
    from safetensors.torch import save_file

    from vidaccel.cli import main
    from vidaccel.testing import tiny_wan_pipeline

    base = tiny_wan_pipeline(seed=5, attention_head_dim=16)
    base.save_pretrained(tmp_path / "base")
    ckpt = tmp_path / "causal.safetensors"
    save_file(_to_original_names(base.transformer.state_dict()), str(ckpt))
    code = main(["convert", "wan-original", str(ckpt), str(tmp_path / "out"), "--base", str(tmp_path / "base"),
                 "--chunk-frames", "2", "--window-frames", "6", "--head-dim", "16"])
    assert code == 0
    loaded = LongVideoPipeline.from_pretrained(str(tmp_path / "out"))
    assert loaded.causal_config.chunk_frames == 2 and loaded.causal_config.window_frames == 6
    ref = base.transformer.state_dict()
    got = loaded.transformer.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert dict(loaded.transformer.config)["num_layers"] == base.transformer.config.num_layers
    # a torch .pt inside a trainer container loads weights-only too
    torch.save({"generator_ema": _to_original_names(base.transformer.state_dict())}, tmp_path / "c.pt")
    assert main(["convert", "wan-original", str(tmp_path / "c.pt"), str(tmp_path / "out2"), "--head-dim", "16"]) == 0
    assert (tmp_path / "out2" / "causal_config.json").is_file()
    assert main(["convert", "wan-original", str(tmp_path / "missing.pt"), str(tmp_path / "o3")]) == 2


@pytest.mark.parametrize("args,needle", [
    (["--switch", "3:b", "--switch", "2:c"], "increasing order"),
    (["--seconds", "2", "--switch", "3:b"], "the video is 2 s long"),
    (["--switch=-1:b"], "must be > 0"),
    (["--switch", "1:"], "prompt after ':' is empty"),
    (["--seconds", "0"], "--seconds=0"),
    (["-o", "x.avi"], "--output='x.avi'"),
    (["--preset", "warp"], "--preset='warp'"),
    (["--window", "2", "--chunk", "2"], "--window=2"),
])
def test_long_cli_bad_arguments_exit_2(args, needle, capsys):
    from vidaccel.cli import main

    assert main(["long", "a red circle", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_composes_with_quantization(pipe):
    import vidaccel
    from vidaccel import QuantConfig

    kw = dict(KW, num_frames=21)
    base = pipe("a red circle", **kw)
    vidaccel.apply(pipe, QuantConfig(format="fp8"))
    try:
        quant = pipe("a red circle", **kw)
        assert vidaccel.stats(pipe)["quant"]["transformer"]["layers"]
        assert quant.frames.shape == base.frames.shape and np.isfinite(quant.frames).all()
        assert not np.array_equal(quant.frames, base.frames)
    finally:
        vidaccel.remove(pipe)
    np.testing.assert_array_equal(pipe("a red circle", **kw).frames, base.frames)


@pytest.fixture(scope="module")
def embedded_ar():
    return LongVideoPipeline.from_embedded()


@pytest.mark.parametrize("old,new,aspect", [
    ("a red circle moving right on a black background", "a red circle moving right on a gray background", "background"),
    # a colour switch of the object already on screen does not take hold yet (measured 2026-11-21: the
    # object keeps its old colour; see benchmarks/RESULTS.md), so only the background case is asserted
], ids=["background"])
def test_prompt_switch_content_follows_the_new_prompt(embedded_ar, old, new, aspect):
    """On the trained shapes-ar model: after a switch (re-cached window) the video scores higher against the
    new prompt than against the old one, while before the switch it is the other way round."""
    from vidaccel.eval import shapes_score_segments

    out = embedded_ar([(0, old), (21, new)], schedule_unit="frames", num_frames=45, seed=1, num_inference_steps=8,
                      progress=False)
    assert out.stats["prompt_switches_recached"] == 1 and out.frames.shape[0] == 45
    before, after = (0, 21), (29, 45)  # chunks 0-2; the last two chunks (one chunk to settle)
    s_old = shapes_score_segments(out.frames, old, [before, after])
    s_new = shapes_score_segments(out.frames, new, [before, after])
    assert s_old[0][aspect] > s_new[0][aspect] + 0.2, (s_old, s_new)
    assert s_new[1][aspect] > s_old[1][aspect] + 0.2, (s_old, s_new)


def test_explicit_few_step_timesteps_are_used_exactly(pipe):
    seen = []
    forward = pipe.transformer.forward

    def record(*args, **kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        seen.append(round(float(t.flatten()[0]), 3))
        return forward(*args, **kwargs)

    kw = dict(KW, num_frames=9)
    kw.pop("num_inference_steps")
    pipe.transformer.forward = record
    try:
        out = pipe("a red circle", timesteps=[1000, 750, 500, 250], **kw)
    finally:
        pipe.transformer.forward = forward
    assert out.frames.shape[0] == 9 and np.isfinite(out.frames).all()
    # 2 chunks; each: the 4 requested timesteps, then the commit pass at the context-noise timestep
    denoise = [t for t in seen if t > pipe.causal_config.context_noise * 1000 + 1]
    assert denoise == [1000.0, 750.0, 500.0, 250.0] * 2
    again = pipe("a red circle", timesteps=[1000, 750, 500, 250], **kw)
    np.testing.assert_array_equal(again.frames, out.frames)


@pytest.mark.parametrize("bad", [[], [500, 750], [1200, 500], [500, 0]])
def test_invalid_timesteps_raise(pipe, bad):
    kw = dict(KW, num_frames=5)
    kw.pop("num_inference_steps")
    with pytest.raises(ValueError, match="timesteps="):
        pipe("a red circle", timesteps=bad, **kw)


@pytest.mark.parametrize("policy", ["call", "block"])
def test_feature_cache_composes_and_never_skips_a_kv_write(pipe, policy):
    import vidaccel
    from vidaccel import CacheConfig

    kw = dict(KW, num_frames=17, num_inference_steps=8)  # 3 chunks of 8 steps + 1 KV-writing pass each
    base = pipe("a red circle", **kw).frames
    vidaccel.apply(pipe, CacheConfig(threshold=10.0, policy=policy, interval=3, warmup_steps=2))
    try:
        out = pipe("a red circle", **kw).frames
        stats = vidaccel.stats(pipe)["cache"]["transformer"]
    finally:
        vidaccel.remove(pipe)
    assert np.isfinite(out).all() and not np.array_equal(out, base)
    # only denoising calls are seen by the cache: 3 chunks x 8 steps, each chunk a new run with its warm-up
    # and its final step computed; the KV-writing passes always run (bypass_cache)
    assert stats["calls"] == 24 and stats["skipped_calls"] > 0
    steps = stats["per_step"]
    for c in range(3):
        mine = steps[8 * c: 8 * (c + 1)]
        assert [s["step"] for s in mine] == list(range(8))
        assert mine[0]["computed"] and mine[1]["computed"] and mine[-1]["computed"]
    np.testing.assert_array_equal(pipe("a red circle", **kw).frames, base)  # remove restores


def test_long_cli_with_a_caching_preset(tmp_path, capsys):
    from vidaccel.cli import main

    out = tmp_path / "long.mp4"
    assert main(["long", "a red circle moving right on a black background", "--frames", "17", "--steps", "6",
                 "--preset", "fast", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accelerated preset fast" in printed and "17 frames" in printed
    assert read_video(str(out)).shape[0] == 17
