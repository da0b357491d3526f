"""The ``vidaccel`` command line: ``generate``, ``bench``, ``info`` (and the commands later issues add).

Bad arguments print one line naming the value and what is allowed, and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Callable, Sequence

__all__ = ["main", "CliError"]


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise CliError(f"{self.prog}: {message} (see `{self.prog} --help`)")


# -- validators (shared by subcommands) -------------------------------------------------------------
def _int_at_least(name: str, lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise CliError(f"{name}={text!r} is not an integer") from None
        if value < lo:
            raise CliError(f"{name}={value} is not allowed: it must be >= {lo}")
        return value

    return parse


def _frames(text: str) -> int:
    value = _int_at_least("--frames", 1)(text)
    if (value - 1) % 4:
        lo = value - (value - 1) % 4
        raise CliError(f"--frames={value} is not allowed: it must be 4k+1 (1, 5, 9, ..., 81); nearest: {lo} or {lo + 4}")
    return value


def _multiple_of_16(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _int_at_least(name, 16)(text)
        if value % 16:
            raise CliError(f"{name}={value} is not allowed: it must be a positive multiple of 16 (e.g. {value - value % 16 or 16})")
        return value

    return parse


def _non_negative_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise CliError(f"{name}={text!r} is not a number") from None
        if not value >= 0:
            raise CliError(f"{name}={value} is not allowed: it must be >= 0")
        return value

    return parse


def _positive_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _non_negative_float(name)(text)
        if value == 0:
            raise CliError(f"{name}=0 is not allowed: it must be > 0")
        return value

    return parse


def _choice(name: str, allowed: Callable[[], Sequence[str]]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        options = list(allowed())
        if text not in options:
            raise CliError(f"{name}={text!r} is not allowed; choose one of: {', '.join(options)}")
        return text

    return parse


def _long_presets() -> list[str]:
    """Presets that compose with the long-video pipeline's own attention processors: caching and quantization
    (attention-replacing techniques would displace its KV-cache processors)."""
    from .accel.caching import CacheConfig
    from .accel.quantization import QuantConfig
    from .presets import available_presets, preset_configs

    return [n for n in available_presets() if all(isinstance(c, (CacheConfig, QuantConfig)) for c in preset_configs(n))]


def _presets() -> list[str]:
    from .presets import available_presets

    return available_presets()


def _dtype_names() -> list[str]:
    return ["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded", help="embedded | HUB_ID | DIR (default: embedded, works offline)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, type=_choice("--dtype", _dtype_names), help="model dtype")


def _add_size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=_frames, default=None, help="pixel frames, 4k+1 (default: the model's)")
    p.add_argument("--height", type=_multiple_of_16("--height"), default=None, help="multiple of 16")
    p.add_argument("--width", type=_multiple_of_16("--width"), default=None, help="multiple of 16")
    p.add_argument("--steps", type=_int_at_least("--steps", 1), default=None, help="denoising steps")
    p.add_argument("--guidance", type=_non_negative_float("--guidance"), default=None, help="CFG scale (<=1 disables CFG)")
    p.add_argument("--negative", default=None, help="negative prompt")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vidaccel", description="Fast Wan / CogVideoX video generation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    g = sub.add_parser("generate", help="generate a video from a prompt")
    g.add_argument("prompt")
    g.add_argument("-o", "--output", default="out.mp4", help="mp4 path (default: out.mp4)")
    g.add_argument("--preset", default="none", type=_choice("--preset", _presets), help="acceleration preset")
    g.add_argument("--seed", type=_int_at_least("--seed", 0), default=0)
    g.add_argument("--fps", type=_int_at_least("--fps", 1), default=None, help="mp4 frame rate (default: the model's)")
    _add_model_args(g)
    _add_size_args(g)
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="versions, device, usable kernel backends")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", help="speed and fidelity of configurations against the baseline, interleaved")
    b.add_argument("--config", action="append", default=None, metavar="NAME",
                   help="a preset or peer (repeatable): " + "; ".join(_bench_config_help()))
    b.add_argument("--prompt", action="append", default=None, help="prompt (repeatable)")
    b.add_argument("--seeds", type=_int_at_least("--seeds", 1), default=1, help="seeds per prompt")
    b.add_argument("--repeats", type=_int_at_least("--repeats", 1), default=1, help="interleaved rounds")
    b.add_argument("--out", default="bench_out", help="folder for JSON, Markdown and PNG")
    _add_model_args(b)
    _add_size_args(b)
    b.set_defaults(func=cmd_bench)

    lg = sub.add_parser("long", help="long video, chunk by chunk, with a rolling KV cache")
    lg.add_argument("prompt")
    length = lg.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=_positive_float("--seconds"), default=None, help="length in seconds (default 10)")
    length.add_argument("--frames", type=_int_at_least("--frames", 1), default=None, help="length in pixel frames")
    lg.add_argument("--switch", action="append", default=[], metavar="SECONDS:PROMPT",
                    help="switch to PROMPT at SECONDS (repeatable, increasing)")
    lg.add_argument("-o", "--output", default="long.mp4")
    lg.add_argument("--model", default="embedded-ar", help="embedded-ar | DIR (a folder with causal_config.json)")
    lg.add_argument("--chunk", type=_int_at_least("--chunk", 1), default=None, help="latent frames per chunk")
    lg.add_argument("--window", type=_int_at_least("--window", 1), default=None, help="latent frames visible (history + chunk)")
    lg.add_argument("--sink", type=_int_at_least("--sink", 0), default=0, help="latent frames kept forever")
    lg.add_argument("--ema", type=_non_negative_float("--ema"), default=None, help="EMA-sink decay in [0, 1)")
    lg.add_argument("--steps", type=_int_at_least("--steps", 1), default=None)
    lg.add_argument("--guidance", type=_non_negative_float("--guidance"), default=None)
    lg.add_argument("--seed", type=_int_at_least("--seed", 0), default=0)
    lg.add_argument("--fps", type=_positive_float("--fps"), default=16.0)
    lg.add_argument("--positions", default="relative", type=_choice("--positions", lambda: ["relative", "absolute"]))
    lg.add_argument("--no-kv-cache", action="store_true", help="recompute the history every chunk (reference)")
    lg.add_argument("--reuse-context", action="store_true", help="reuse cached-context attention across steps")
    lg.add_argument("--device", default=None)
    lg.add_argument("--preset", default="none", type=_choice("--preset", _long_presets),
                    help="caching or quantization preset (caching never skips the passes that write the KV cache)")
    lg.set_defaults(func=cmd_long)

    cv = sub.add_parser("convert", help="convert checkpoints to diffusers folders")
    cv.add_argument("source_format", type=_choice("source_format", lambda: ["wan-original"]))
    cv.add_argument("checkpoint")
    cv.add_argument("out_dir")
    cv.add_argument("--base", default=None, help="diffusers Wan folder to take VAE/text encoder/tokenizer/scheduler from")
    cv.add_argument("--chunk-frames", type=_int_at_least("--chunk-frames", 1), default=3)
    cv.add_argument("--window-frames", type=_int_at_least("--window-frames", 2), default=21)
    cv.add_argument("--context-noise", type=_non_negative_float("--context-noise"), default=0.0)
    cv.add_argument("--head-dim", type=_int_at_least("--head-dim", 1), default=128)
    cv.set_defaults(func=cmd_convert)

    # Listed for `vidaccel --help`; their arguments are parsed by their own modules (see main()).
    sub.add_parser("linearize", help="select and distil linear-attention layers (LinVideo); writes an adapter")
    sub.add_parser("train-embedded", help="reproduce the embedded shapes models (CPU, resumable)")
    return parser


def _bench_config_help() -> list[str]:
    from .bench import config_help

    return config_help()


# -- commands ---------------------------------------------------------------------------------------
def _call_kwargs(args, pipe) -> dict:
    defaults = dict(getattr(pipe, "vidaccel_model", {}).get("defaults", {}))
    mapping = dict(frames="num_frames", height="height", width="width", steps="num_inference_steps",
                   guidance="guidance_scale", negative="negative_prompt")
    for arg, key in mapping.items():
        value = getattr(args, arg, None)
        if value is not None:
            defaults[key] = value
    return defaults


def _load(args, accel=None):
    from .loading import load_pipeline

    try:
        return load_pipeline(args.model, dtype=args.dtype, device=args.device, accel=accel)
    except ValueError as e:
        raise CliError(str(e)) from None
    except (OSError, EnvironmentError) as e:
        raise CliError(f"--model={args.model!r} could not be loaded: {str(e).splitlines()[0]}") from None


def cmd_generate(args) -> int:
    import torch

    from .specs import pipeline_transformers, spec_for
    from .video import save_video

    if not args.output.lower().endswith(".mp4"):
        raise CliError(f"--output={args.output!r} is not allowed: the file name must end in .mp4")
    pipe = _load(args, accel=args.preset)
    info = getattr(pipe, "vidaccel_model", {"name": args.model})
    if info.get("name") == "shapes-t2v":
        from .models.shapes import unknown_words

        unknown = unknown_words(args.prompt)
        if unknown:
            print(f"note: the embedded model does not know these words: {', '.join(unknown)}", file=sys.stderr)
    kwargs = _call_kwargs(args, pipe)
    model = pipeline_transformers(pipe)[0][1]
    spec = spec_for(model)
    # diffusers silently rounds sizes down to the model's patch grid; refuse instead of surprising the user.
    multiple = pipe.vae_scale_factor_spatial * spec.patch_size(model)[1]
    for name in ("height", "width"):
        value = kwargs.get(name)
        if value is not None and value % multiple:
            raise CliError(f"--{name}={value} is not allowed for this model: it must be a multiple of {multiple} "
                           f"(VAE x{pipe.vae_scale_factor_spatial} times patch {spec.patch_size(model)[1]})")
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    result = pipe(prompt=args.prompt, generator=generator, output_type="np", **kwargs)
    frames = result.frames[0]
    fps = args.fps or spec.fps
    save_video(frames, args.output, fps=fps)
    run = pipe.last_run
    lines = [
        f"wrote {args.output}: {frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]} at {fps} fps",
        f"model       {info.get('name')}" + ("" if info.get("trained", True) else "  (RANDOM WEIGHTS: output is noise)"),
        f"prompt      {args.prompt!r}  seed {args.seed}  steps {run['steps']}",
        f"accelerated {', '.join(run['techniques']) or 'nothing'} (preset {args.preset})",
        "time        text {text_encoding_s:.2f}s | prep {preparation_s:.2f}s | denoise {denoising_s:.2f}s | "
        "decode {decoding_s:.2f}s | total {total_s:.2f}s".format(**run),
    ]
    for name, per_role in run["stats"].items():
        # scalars only: the per-step / per-block logs stay in vidaccel.stats(pipe)
        summary = {role: {k: v for k, v in st.items() if not isinstance(v, (dict, list))} if isinstance(st, dict) else st
                   for role, st in per_role.items()} if isinstance(per_role, dict) else per_role
        lines.append(f"stats       {name}: {json.dumps(summary, default=str)[:400]}")
    print("\n".join(lines))
    return 0


def cmd_info(args) -> int:
    import platform

    import torch

    from . import __version__
    from .accel.base import registered_config_types
    from .kernels import available_backends
    from .presets import available_presets

    def version(mod: str) -> str:
        try:
            return __import__(mod).__version__
        except Exception:
            return "not installed"

    data = {
        "vidaccel": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": version("diffusers"),
        "transformers": version("transformers"),
        "triton": version("triton"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "kernel_backends": available_backends(),
        "techniques": [t.__name__ for t in registered_config_types()],
        "presets": available_presets(),
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"{key:<{width}}")
            for k, v in value.items():
                print(f"  {k:<{width - 2}} {v}")
        else:
            print(f"{key:<{width}} {', '.join(value) if isinstance(value, list) else value}")
    return 0


def cmd_bench(args) -> int:
    from .bench import bench_configs_from_names, run_benchmark

    try:
        configs = bench_configs_from_names(args.config or ["none"])
    except ValueError as e:
        raise CliError(str(e)) from None
    pipe = _load(args)
    kwargs = _call_kwargs(args, pipe)
    prompts = args.prompt or ["a red circle moving right on a black background"]
    report = run_benchmark(pipe, configs, prompts=prompts, seeds=list(range(args.seeds)), repeats=args.repeats,
                           call_kwargs=kwargs, out_dir=args.out)
    print(report.markdown())
    print(f"\nwrote {os.path.join(args.out, 'bench.json')}, bench.md, bench.png")
    return 0


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


def cmd_long(args) -> int:
    import torch

    from .pipelines.long_video import LongVideoPipeline

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
    from .models import EMBEDDED_DEFAULTS

    if args.preset != "none":
        import vidaccel

        vidaccel.apply(pipe, args.preset)
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


def cmd_convert(args) -> int:
    from .convert import convert_wan_original

    try:
        out = convert_wan_original(args.checkpoint, args.out_dir, base=args.base, chunk_frames=args.chunk_frames,
                                   window_frames=args.window_frames, context_noise=args.context_noise,
                                   head_dim=args.head_dim)
    except (ValueError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    print(f"wrote {out} (transformer/ + causal_config.json)")
    return 0


def _linearize(argv: list[str]) -> int:
    from .accel.linear_attention import main_linearize

    return main_linearize(argv)


def _train_embedded(argv: list[str]) -> int:
    from .models.train import main as train_main

    return train_main(argv)


#: Subcommands whose own modules parse their arguments.
_PASSTHROUGH = {"linearize": _linearize, "train-embedded": _train_embedded}


def main(argv: Sequence[str] | None = None) -> int:
    # transformers' import-time notices (e.g. about torchvision) are noise on a command line.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return _PASSTHROUGH[argv[0]](argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        start = time.perf_counter()
        code = args.func(args)
        logging.getLogger(__name__).info("done in %.1fs", time.perf_counter() - start)
        return code
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
