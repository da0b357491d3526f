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


def _choice(name: str, allowed: Callable[[], Sequence[str]]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        options = list(allowed())
        if text not in options:
            raise CliError(f"{name}={text!r} is not allowed; choose one of: {', '.join(options)}")
        return text

    return parse


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
    spec = spec_for(pipeline_transformers(pipe)[0][1])
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
        lines.append(f"stats       {name}: {json.dumps(per_role, default=str)[:400]}")
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


def main(argv: Sequence[str] | None = None) -> int:
    # transformers' import-time notices (e.g. about torchvision) are noise on a command line.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
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
