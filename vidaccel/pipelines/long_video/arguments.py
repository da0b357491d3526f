"""The checks of :class:`~vidaccel.pipelines.long_video.LongVideoPipeline`'s call arguments, all made before any
work: each bad value is one ``ValueError`` naming the argument, showing the value and saying what is allowed."""

from __future__ import annotations

import math

from ...core.validation import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_str,
    shown,
)

__all__ = ["check_call_arguments", "check_model_arguments"]


def check_call_arguments(*, num_frames, seconds, fps, chunk, window, sink, positions, height, width, steps, guidance,
                         negative_prompt, seed, use_kv_cache, reuse_context_attention, progress, schedule_unit,
                         ema_decay, context_noise, max_sequence_length) -> tuple[int, int | None]:
    """Check the scalar arguments of one call; returns ``(seed, max_sequence_length)`` normalised."""
    if (num_frames is None) == (seconds is None):
        raise ValueError(f"num_frames={shown(num_frames)} with seconds={shown(seconds)} is not allowed: give exactly "
                         "one of num_frames= or seconds=")
    check_int("", "num_frames", num_frames, lo=1, optional=True)
    check_number("", "seconds", seconds, lo=0, lo_open=True, optional=True)
    check_number("", "fps", fps, lo=0, hi=1000, lo_open=True)
    check_int("", "chunk_frames", chunk, lo=1, hi=2**31 - 1)
    check_int("", "sink_frames", sink, lo=0, hi=2**31 - 1)
    check_int("", "window_frames", window, lo=1, hi=2**31 - 1)
    if window < chunk + sink + 1:
        raise ValueError(f"window_frames={window!r} is not allowed: it must be >= chunk_frames + sink_frames + 1 "
                         f"= {chunk + sink + 1} latent frames (the chunk, the sink and at least one recent frame)")
    if use_kv_cache is True and window < 2 * chunk + sink:
        raise ValueError(f"window_frames={window!r} is not allowed with use_kv_cache=True: it must be >= "
                         f"2 * chunk_frames + sink_frames = {2 * chunk + sink} latent frames (the rolling cache "
                         f"holds the sink plus whole chunks of recent frames: each chunk is written at once); "
                         f"use_kv_cache=False runs from chunk_frames + sink_frames + 1 = {chunk + sink + 1}")
    check_choice("", "positions", positions, ("relative", "absolute"))
    for name, value in (("height", height), ("width", width)):
        check_int("", name, value, lo=16, hi=2**20, optional=True)
        if value is not None and value % 16:
            raise ValueError(f"{name}={value} is not allowed: it must be a multiple of 16")
    check_int("", "num_inference_steps", steps, lo=1, hi=10_000, optional=True)
    check_number("", "guidance_scale", guidance, lo=0, optional=True)
    check_str("", "negative_prompt", negative_prompt, optional=True)
    seed = check_int("", "seed", seed, lo=0)
    for name, value in (("use_kv_cache", use_kv_cache), ("reuse_context_attention", reuse_context_attention),
                        ("progress", progress)):
        check_bool("", name, value)
    check_choice("", "schedule_unit", schedule_unit, ("seconds", "frames"))
    check_number("", "ema_decay", ema_decay, lo=0, hi=1, hi_open=True, optional=True)
    if ema_decay is not None and sink == 0:
        raise ValueError(f"ema_decay={ema_decay!r} is not allowed with sink_frames=0: it folds evicted frames into "
                         "the sink, so it needs sink_frames >= 1")
    check_number("", "context_noise", context_noise, lo=0, hi=1, hi_open=True, optional=True)
    msl = check_int("", "max_sequence_length", max_sequence_length, lo=1, hi=2**20, optional=True)
    return seed, msl


def check_model_arguments(pipeline, family, *, num_frames, seconds, fps, chunk, window, height, width, positions):
    """The checks that need the model (its channels, token grid and RoPE table): returns ``(total frames, number
    of chunks, latent (h, w), token grid (h, w))``."""
    transformer = pipeline.transformer
    cfg = transformer.config
    if cfg.in_channels != cfg.out_channels:
        raise ValueError(f"the transformer takes {cfg.in_channels} input channels for {cfg.out_channels} output "
                         "channels: an image-to-video checkpoint (image latents concatenated to the noise), which "
                         "LongVideoPipeline does not condition; it runs text-to-video Wan transformers (in_channels "
                         "== out_channels: Wan2.1-T2V-1.3B / 14B, Wan2.2-TI2V-5B, causal checkpoints made from them)")
    total = num_frames if num_frames is not None else int(round(seconds * fps))
    if total < 1:
        raise ValueError(f"seconds={seconds!r} is not allowed at fps={fps:g}: it gives no frame; it must be >= "
                         f"{1 / fps:g} s")
    _, h, w = family.latent_shape(1, height, width, pipeline=pipeline)
    _, gh, gw = family.token_grid(transformer, (1, h, w))
    limits = family.token_grid_limit(transformer)
    for name, value, tokens, limit in (("height", height, gh, limits[1]), ("width", width, gw, limits[2])):
        if limit is not None and tokens > limit:
            raise ValueError(f"{name}={value} is not allowed for this model: it is {tokens} tokens, beyond its "
                             f"position table of {limit}")
        if tokens < 1:
            raise ValueError(f"{name}={value} is not allowed for this model: it is smaller than one patch")
    num_chunks = math.ceil(family.latent_frames(total, pipeline=pipeline) / chunk)
    rope_limit = family.rope_frame_limit(transformer)
    if positions == "relative" and window > rope_limit:
        raise ValueError(f"window_frames={window} is not allowed for this model: it exceeds its RoPE table of "
                         f"{rope_limit} latent frame positions (rope_max_seq_len)")
    if positions == "absolute" and num_chunks * chunk > rope_limit:
        raise ValueError(f"positions='absolute' is not allowed for {total} frames: positions up to latent frame "
                         f"{num_chunks * chunk - 1} exceed the model's RoPE table of {rope_limit} positions "
                         "(rope_max_seq_len); use positions='relative'")
    return total, num_chunks, (h, w), (gh, gw)
