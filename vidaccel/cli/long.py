"""``vidaccel long``: a long video, chunk by chunk, with a rolling KV cache."""

from __future__ import annotations

import math

from .common import (COUNT_MAX, FPS_MAX, CliError, RunError, check_model_name, choice, device, finite_float,
                     int_between, non_negative_float, output_file, positive_float, quiet_loading, say, seed)


def long_presets() -> list[str]:
    """Presets that compose with the long-video pipeline's own attention processors: caching and quantization
    (attention-replacing techniques would displace its KV-cache processors)."""
    from ..accel import CacheConfig, QuantConfig
    from ..accel import available_presets, preset_configs

    return [n for n in available_presets() if all(isinstance(c, (CacheConfig, QuantConfig)) for c in preset_configs(n))]


def add_parser(sub) -> None:
    lg = sub.add_parser("long", help="long video, chunk by chunk, with a rolling KV cache")
    lg.add_argument("prompt")
    length = lg.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=positive_float("--seconds", 1e7), default=None,
                        help="length in seconds (default 10)")
    length.add_argument("--frames", type=int_between("--frames", 1, 10**9), default=None, help="length in pixel frames")
    lg.add_argument("--switch", action="append", default=[], metavar="SECONDS:PROMPT",
                    help="switch to PROMPT at SECONDS (repeatable, increasing)")
    lg.add_argument("-o", "--output", default="long.mp4", type=output_file("--output", ".mp4"),
                    help="mp4 path (default: long.mp4); its folder must exist")
    lg.add_argument("--model", default="embedded-ar", help="embedded-ar | DIR (a folder with causal_config.json)")
    lg.add_argument("--chunk", type=int_between("--chunk", 1, 2**31 - 1), default=None, help="latent frames per chunk")
    lg.add_argument("--window", type=int_between("--window", 1, 2**31 - 1), default=None,
                    help="latent frames visible (history + chunk)")
    lg.add_argument("--sink", type=int_between("--sink", 0, 2**31 - 1), default=0, help="latent frames kept forever")
    lg.add_argument("--ema", type=finite_float("--ema", 0.0, 1.0, hi_open=True), default=None,
                    help="EMA-sink decay in [0, 1)")
    lg.add_argument("--steps", type=int_between("--steps", 1, COUNT_MAX), default=None)
    lg.add_argument("--guidance", type=non_negative_float("--guidance", 100.0), default=None, help="CFG scale in [0, 100]")
    lg.add_argument("--seed", type=seed(), default=0)
    lg.add_argument("--fps", type=positive_float("--fps", FPS_MAX), default=16.0)
    lg.add_argument("--positions", default="relative", type=choice("--positions", lambda: ["relative", "absolute"]))
    lg.add_argument("--no-kv-cache", action="store_true", help="recompute the history every chunk (reference)")
    lg.add_argument("--reuse-context", action="store_true", help="reuse cached-context attention across steps")
    lg.add_argument("--device", default=None, type=device())
    lg.add_argument("--preset", default="none", type=choice("--preset", long_presets),
                    help="caching or quantization preset (caching never skips the passes that write the KV cache)")
    lg.set_defaults(func=run)


def _parse_switches(switches: list[str], first_prompt: str) -> list[tuple[float, str]]:
    schedule: list[tuple[float, str]] = [(0.0, first_prompt)]
    for item in switches:
        when, sep, text = item.partition(":")
        try:
            seconds = float(when)
        except ValueError:
            raise CliError(f"--switch={item[:60]!r} is not allowed: use SECONDS:PROMPT, e.g. 4:a blue square") from None
        if not sep or not text.strip():
            raise CliError(f"--switch={item[:60]!r} is not allowed: the prompt after ':' is empty")
        if not math.isfinite(seconds) or seconds <= 0:
            raise CliError(f"--switch={item[:60]!r} is not allowed: the time must be > 0 s (and finite)")
        if seconds <= schedule[-1][0]:
            raise CliError(f"--switch={item[:60]!r} is not allowed: switch times must be in increasing order")
        schedule.append((seconds, text.strip()))
    return schedule


def _load(args):
    """The long-video pipeline of ``--model`` on ``--device``; refuses a folder that is not a block-causal Wan model
    before loading its weights where it can, and after loading (before any step) where it cannot."""
    import os

    import torch

    from ..families import family_for
    from ..pipelines.long_video import CausalConfig, LongVideoPipeline

    if args.model != "embedded-ar":
        check_model_name(args.model)
        if not os.path.isdir(args.model):
            raise CliError(f"--model={args.model!r} is not allowed: give embedded-ar or a local folder with "
                           "causal_config.json (convert one with `vidaccel convert wan-original`)")
        try:
            CausalConfig.load(args.model)
        except FileNotFoundError:
            raise CliError(f"--model={args.model!r} is not allowed: it has no causal_config.json, so it is not a "
                           "block-causal model (convert one with `vidaccel convert wan-original`)") from None
        except ValueError as e:
            raise CliError(f"--model={args.model!r} is not allowed: {e}") from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    quiet_loading()
    try:
        if args.model == "embedded-ar":
            pipe = LongVideoPipeline.from_embedded(device=device)
            pipe.vidaccel_model = {"name": "shapes-ar"}
        else:
            pipe = LongVideoPipeline.from_pretrained(args.model).to(device)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as e:  # a broken or foreign folder fails in diffusers in many ways
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CliError(f"--model={args.model!r} could not be loaded: {type(e).__name__}: {first[:300]}") from None
    try:
        transformer = getattr(pipe, "transformer", None)
        family = family_for(transformer)
        family.rope_frame_limit(transformer)
        family.streaming_decoder(pipe.vae).reset()
    except (ValueError, AttributeError, TypeError) as e:
        raise CliError(f"--model={args.model!r} is not allowed: it is not a rolling-KV long-video model ({e})") from None
    return pipe


def run(args) -> int:
    import os
    import sys

    from ..core.technique import check_run
    from ..pipelines.long_video import LongVideoOutput
    from ..pipelines.long_video.writer import parts_folder
    from ..video import NonFiniteFramesError, VideoWriteError
    from .limits import prompt_notes

    seconds = args.seconds if args.frames is None and args.seconds is not None else (None if args.frames else 10.0)
    total_s = seconds if seconds is not None else args.frames / args.fps
    schedule = _parse_switches(args.switch, args.prompt)
    if schedule[-1][0] >= total_s:
        raise CliError(f"--switch at {schedule[-1][0]:g} s is not allowed: the video is {total_s:g} s long")
    if seconds is not None and round(seconds * args.fps) < 1:
        raise CliError(f"--seconds={seconds:g} is not allowed at --fps={args.fps:g}: it gives no frame")
    if os.path.lexists(parts_folder(args.output)):
        raise CliError(f"--output={args.output!r} is not allowed: {parts_folder(args.output)} exists (the finished "
                       "chunks of an interrupted run?); join them with `ffmpeg -f concat -safe 0 -i "
                       f"{os.path.join(parts_folder(args.output), 'parts.txt')} -c copy joined.mp4`, or remove it")
    pipe = _load(args)
    chunk = args.chunk or pipe.causal_config.chunk_frames
    window = args.window or pipe.causal_config.window_frames
    if window < chunk + args.sink + 1:
        raise CliError(f"--window={window} is not allowed: it must be >= chunk ({chunk}) + sink ({args.sink}) + 1 "
                       "latent frames")
    from ..models import EMBEDDED_DEFAULTS

    if args.preset != "none":
        from ..api import apply

        apply(pipe, args.preset)
    defaults = EMBEDDED_DEFAULTS.get("shapes-ar", {}) if args.model == "embedded-ar" else {}
    steps = args.steps or defaults.get("num_inference_steps") or 20
    try:
        check_run(pipe, num_inference_steps=steps)
    except ValueError as e:
        raise CliError(f"{e} (--steps={steps})") from None
    msl = pipe.causal_config.max_sequence_length
    for note in prompt_notes(pipe, [p for _, p in schedule], msl):
        print(say(note), file=sys.stderr)
    result = LongVideoOutput(frames=None, num_frames=0, chunk_seconds=[], chunk_prompts=[], peak_memory_mib=None)
    try:
        out = pipe(schedule, seconds=seconds, num_frames=None if seconds is not None else args.frames, fps=args.fps,
                   chunk_frames=chunk, window_frames=window, sink_frames=args.sink, ema_decay=args.ema,
                   num_inference_steps=steps,
                   guidance_scale=args.guidance if args.guidance is not None else defaults.get("guidance_scale"),
                   height=defaults.get("height"), width=defaults.get("width"), seed=args.seed,
                   use_kv_cache=not args.no_kv_cache, positions=args.positions,
                   reuse_context_attention=args.reuse_context, output=args.output, return_frames=False,
                   result=result)
    except NonFiniteFramesError as e:
        kept = (f"{args.output} holds the {result.num_frames} frames of the {len(result.chunk_seconds)} chunks "
                "finished before it" if result.num_frames else f"nothing was written ({args.output} is unchanged)")
        raise RunError(f"{e}; {kept}" + ("; lower --guidance" if (args.guidance or 0) > 20 else "")) from None
    except VideoWriteError as e:
        if "left as it was" in str(e):
            raise RunError(str(e)) from None
        kept = (f"{args.output} holds the {result.num_frames} frames of the chunks finished before it"
                if result.num_frames else f"{args.output} was left as it was")
        raise RunError(f"{e}; {kept}") from None
    except ValueError as e:
        if result.chunk_seconds:  # failed after chunks were made: not a bad argument
            raise RunError(f"{e}; {args.output} holds {result.num_frames} frames") from None
        raise CliError(str(e)) from None
    times = out.chunk_seconds
    video_s = out.num_frames / args.fps
    wall = sum(times)
    if not out.num_frames:
        print(f"no chunk finished: nothing was written ({args.output} was left as it was)")
        return 130 if out.interrupted else 1
    print("\n".join([
        f"wrote {args.output}: {out.num_frames} frames = {video_s:.2f} s of video in {len(times)} chunks"
        + ("  (INTERRUPTED: finished chunks kept)" if out.interrupted else ""),
        f"speed       {out.num_frames / wall:.1f} FPS of video, {wall:.1f} s total; chunk time first "
        f"{times[0]:.2f} s, last {times[-1]:.2f} s" if times else "speed       no chunk finished",
        f"memory      peak {out.peak_memory_mib:.0f} MiB, KV cache {out.stats['kv_cache_mib']:.1f} MiB",
        f"prompts     {len(schedule)} ({len(schedule) - 1} switches)",
        f"accelerated preset {args.preset}",
    ]))
    return 130 if out.interrupted else 0
