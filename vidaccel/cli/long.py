"""``vidaccel long``: a long video, chunk by chunk, with a rolling KV cache."""

from __future__ import annotations

from .common import CliError, choice, int_at_least, non_negative_float, positive_float


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
    length.add_argument("--seconds", type=positive_float("--seconds"), default=None, help="length in seconds (default 10)")
    length.add_argument("--frames", type=int_at_least("--frames", 1), default=None, help="length in pixel frames")
    lg.add_argument("--switch", action="append", default=[], metavar="SECONDS:PROMPT",
                    help="switch to PROMPT at SECONDS (repeatable, increasing)")
    lg.add_argument("-o", "--output", default="long.mp4")
    lg.add_argument("--model", default="embedded-ar", help="embedded-ar | DIR (a folder with causal_config.json)")
    lg.add_argument("--chunk", type=int_at_least("--chunk", 1), default=None, help="latent frames per chunk")
    lg.add_argument("--window", type=int_at_least("--window", 1), default=None, help="latent frames visible (history + chunk)")
    lg.add_argument("--sink", type=int_at_least("--sink", 0), default=0, help="latent frames kept forever")
    lg.add_argument("--ema", type=non_negative_float("--ema"), default=None, help="EMA-sink decay in [0, 1)")
    lg.add_argument("--steps", type=int_at_least("--steps", 1), default=None)
    lg.add_argument("--guidance", type=non_negative_float("--guidance"), default=None)
    lg.add_argument("--seed", type=int_at_least("--seed", 0), default=0)
    lg.add_argument("--fps", type=positive_float("--fps"), default=16.0)
    lg.add_argument("--positions", default="relative", type=choice("--positions", lambda: ["relative", "absolute"]))
    lg.add_argument("--no-kv-cache", action="store_true", help="recompute the history every chunk (reference)")
    lg.add_argument("--reuse-context", action="store_true", help="reuse cached-context attention across steps")
    lg.add_argument("--device", default=None)
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
            raise CliError(f"--switch={item!r} is not allowed: use SECONDS:PROMPT, e.g. 4:a blue square") from None
        if not sep or not text.strip():
            raise CliError(f"--switch={item!r} is not allowed: the prompt after ':' is empty")
        if seconds <= 0:
            raise CliError(f"--switch={item!r} is not allowed: the time must be > 0 s")
        if seconds <= schedule[-1][0]:
            raise CliError(f"--switch={item!r} is not allowed: switch times must be in increasing order")
        schedule.append((seconds, text.strip()))
    return schedule


def run(args) -> int:
    import torch

    from ..pipelines.long_video import LongVideoPipeline

    seconds = args.seconds if args.frames is None and args.seconds is not None else (None if args.frames else 10.0)
    total_s = seconds if seconds is not None else args.frames / args.fps
    schedule = _parse_switches(args.switch, args.prompt)
    if schedule[-1][0] >= total_s:
        raise CliError(f"--switch at {schedule[-1][0]:g} s is not allowed: the video is {total_s:g} s long")
    if not args.output.lower().endswith(".mp4"):
        raise CliError(f"--output={args.output!r} is not allowed: the file name must end in .mp4")
    if args.ema is not None and args.ema >= 1:
        raise CliError(f"--ema={args.ema:g} is not allowed: it must be in [0, 1)")
    try:
        if args.model == "embedded-ar":
            pipe = LongVideoPipeline.from_embedded(device=args.device)
        else:
            pipe = LongVideoPipeline.from_pretrained(args.model).to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (FileNotFoundError, OSError, ValueError) as e:
        raise CliError(f"--model={args.model!r} could not be loaded: {str(e).splitlines()[0]}") from None
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
    try:
        out = pipe(schedule, seconds=seconds, num_frames=None if seconds is not None else args.frames, fps=args.fps,
                   chunk_frames=chunk, window_frames=window, sink_frames=args.sink, ema_decay=args.ema,
                   num_inference_steps=args.steps or defaults.get("num_inference_steps"),
                   guidance_scale=args.guidance if args.guidance is not None else defaults.get("guidance_scale"),
                   height=defaults.get("height"), width=defaults.get("width"), seed=args.seed,
                   use_kv_cache=not args.no_kv_cache, positions=args.positions,
                   reuse_context_attention=args.reuse_context, output=args.output, return_frames=False)
    except ValueError as e:
        raise CliError(str(e)) from None
    times = out.chunk_seconds
    video_s = out.num_frames / args.fps
    wall = sum(times)
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
