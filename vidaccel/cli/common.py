"""What every ``vidaccel`` subcommand shares: the one error type, the parser class, argument validators and
model loading. Importing it costs nothing: heavy modules load inside the commands."""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

__all__ = ["CliError", "Parser", "int_at_least", "frames", "multiple_of_16", "non_negative_float", "positive_float",
           "choice", "presets", "add_model_args", "add_size_args", "call_kwargs", "load"]


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise CliError(f"{self.prog}: {message} (see `{self.prog} --help`)")


# -- validators (shared by subcommands) -------------------------------------------------------------
def int_at_least(name: str, lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise CliError(f"{name}={text!r} is not an integer") from None
        if value < lo:
            raise CliError(f"{name}={value} is not allowed: it must be >= {lo}")
        return value

    return parse


def frames(text: str) -> int:
    value = int_at_least("--frames", 1)(text)
    if (value - 1) % 4:
        lo = value - (value - 1) % 4
        raise CliError(f"--frames={value} is not allowed: it must be 4k+1 (1, 5, 9, ..., 81); nearest: {lo} or {lo + 4}")
    return value


def multiple_of_16(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int_at_least(name, 16)(text)
        if value % 16:
            raise CliError(f"{name}={value} is not allowed: it must be a positive multiple of 16 (e.g. {value - value % 16 or 16})")
        return value

    return parse


def non_negative_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise CliError(f"{name}={text!r} is not a number") from None
        if not value >= 0:
            raise CliError(f"{name}={value} is not allowed: it must be >= 0")
        return value

    return parse


def positive_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = non_negative_float(name)(text)
        if value == 0:
            raise CliError(f"{name}=0 is not allowed: it must be > 0")
        return value

    return parse


def choice(name: str, allowed: Callable[[], Sequence[str]]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        options = list(allowed())
        if text not in options:
            raise CliError(f"{name}={text!r} is not allowed; choose one of: {', '.join(options)}")
        return text

    return parse


def presets() -> list[str]:
    from ..accel import available_presets

    return available_presets()


def dtype_names() -> list[str]:
    return ["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded", help="embedded | HUB_ID | DIR (default: embedded, works offline)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, type=choice("--dtype", dtype_names), help="model dtype")


def add_size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=frames, default=None, help="pixel frames, 4k+1 (default: the model's)")
    p.add_argument("--height", type=multiple_of_16("--height"), default=None, help="multiple of 16")
    p.add_argument("--width", type=multiple_of_16("--width"), default=None, help="multiple of 16")
    p.add_argument("--steps", type=int_at_least("--steps", 1), default=None, help="denoising steps")
    p.add_argument("--guidance", type=non_negative_float("--guidance"), default=None, help="CFG scale (<=1 disables CFG)")
    p.add_argument("--negative", default=None, help="negative prompt")


# -- models ------------------------------------------------------------------------------------------
def call_kwargs(args, pipe) -> dict:
    defaults = dict(getattr(pipe, "vidaccel_model", {}).get("defaults", {}))
    mapping = dict(frames="num_frames", height="height", width="width", steps="num_inference_steps",
                   guidance="guidance_scale", negative="negative_prompt")
    for arg, key in mapping.items():
        value = getattr(args, arg, None)
        if value is not None:
            defaults[key] = value
    return defaults


def load(args, accel=None):
    from ..loading import load_pipeline

    try:
        return load_pipeline(args.model, dtype=args.dtype, device=args.device, accel=accel)
    except ValueError as e:
        raise CliError(str(e)) from None
    except (OSError, EnvironmentError) as e:
        raise CliError(f"--model={args.model!r} could not be loaded: {str(e).splitlines()[0]}") from None
