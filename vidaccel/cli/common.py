"""What every ``vidaccel`` subcommand shares: the error types, the parser class, argument validators and model
loading. Importing it costs nothing: heavy modules load inside the commands.

Every validator runs while the command line is parsed, so a bad value is refused before any model is loaded;
checks that need the model (sizes against its position table and VAE grid, a memory estimate) run right after
loading and before any step (:mod:`vidaccel.cli.limits`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Sequence

__all__ = ["CliError", "RunError", "Parser", "INT64_MAX", "int_at_least", "int_between", "seed", "frames",
           "multiple_of_16", "finite_float", "non_negative_float", "positive_float", "choice", "presets",
           "device", "output_file", "output_dir", "existing_file", "existing_dir", "add_model_args",
           "add_size_args", "call_kwargs", "load", "say"]

INT64_MAX = 2**63 - 1
#: Largest value of counts such as --steps, --seeds, --repeats (far beyond any useful run; keeps ranges finite).
COUNT_MAX = 10_000
#: Frame rates an mp4 can carry.
FPS_MAX = 1000.0


class CliError(Exception):
    """A user error: printed as one line, exit code 2, before any work."""

    exit_code = 2


class RunError(CliError):
    """A run that did not keep its promise (non-finite frames, an encoder or disk failure): one line, exit 1."""

    exit_code = 1


def say(message: str) -> str:
    """``message`` made printable on any terminal (undecodable bytes from argv come back escaped) and on one line."""
    return " ".join(message.splitlines()).encode("utf-8", "backslashreplace").decode("utf-8")


def _show(text) -> str:
    text = repr(text)
    return text if len(text) <= 60 else text[:57] + "..."


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise CliError(f"{self.prog}: {message} (see `{self.prog} --help`)")


# -- validators (shared by subcommands) -------------------------------------------------------------
def int_between(name: str, lo: int, hi: int = INT64_MAX) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise CliError(f"{name}={_show(text)} is not an integer") from None
        if value < lo or value > hi:
            top = "2**63 - 1" if hi == INT64_MAX else str(hi)
            shown = str(value) if len(str(value)) <= 40 else str(value)[:37] + "..."
            raise CliError(f"{name}={shown} is not allowed: it must be >= {lo}"
                           + (f" and <= {top}" if value > hi or hi != INT64_MAX else ""))
        return value

    return parse


def int_at_least(name: str, lo: int, hi: int = INT64_MAX) -> Callable[[str], int]:
    return int_between(name, lo, hi)


def seed(name: str = "--seed") -> Callable[[str], int]:
    """A random seed: an integer in [0, 2**63 - 1] (what torch's generators take)."""
    return int_between(name, 0, INT64_MAX)


def frames(text: str) -> int:
    value = int_between("--frames", 1, 100_001)(text)
    if (value - 1) % 4:
        lo = value - (value - 1) % 4
        raise CliError(f"--frames={value} is not allowed: it must be 4k+1 (1, 5, 9, ..., 81); nearest: {lo} or {lo + 4}")
    return value


def multiple_of_16(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int_between(name, 16, 2**20)(text)
        if value % 16:
            raise CliError(f"{name}={value} is not allowed: it must be a positive multiple of 16 (e.g. {value - value % 16 or 16})")
        return value

    return parse


def finite_float(name: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False) -> Callable[[str], float]:
    """A finite number (``nan``, ``inf`` refused) within the bounds."""

    def describe() -> str:
        parts = []
        if lo is not None:
            parts.append(f"{'>' if lo_open else '>='} {lo:g}")
        if hi is not None:
            parts.append(f"{'<' if hi_open else '<='} {hi:g}")
        return "a finite number" + (" " + " and ".join(parts) if parts else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise CliError(f"{name}={_show(text)} is not a number") from None
        bad = (not math.isfinite(value) or (lo is not None and (value < lo or (lo_open and value == lo)))
               or (hi is not None and (value > hi or (hi_open and value == hi))))
        if bad:
            raise CliError(f"{name}={value!r} is not allowed: it must be {describe()}")
        return value

    return parse


def non_negative_float(name: str, hi: float | None = None) -> Callable[[str], float]:
    return finite_float(name, 0.0, hi)


def positive_float(name: str, hi: float | None = None) -> Callable[[str], float]:
    return finite_float(name, 0.0, hi, lo_open=True)


def choice(name: str, allowed: Callable[[], Sequence[str]]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        options = list(allowed())
        if text not in options:
            raise CliError(f"{name}={_show(text)} is not allowed; choose one of: {', '.join(options)}")
        return text

    return parse


def presets() -> list[str]:
    from ..accel import available_presets

    return available_presets()


def dtype_names() -> list[str]:
    return ["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]


def device(name: str = "--device") -> Callable[[str], str]:
    """``cpu``, ``cuda`` or ``cuda:N`` that exists on this machine."""

    def parse(text: str) -> str:
        import torch

        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError, TypeError):
            raise CliError(f"{name}={_show(text)} is not allowed: use cpu, cuda or cuda:N") from None
        if dev.type == "cpu":
            return text
        if dev.type != "cuda":
            raise CliError(f"{name}={_show(text)} is not allowed: use cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise CliError(f"{name}={_show(text)} is not allowed: CUDA is not available on this machine; use cpu "
                           f"(device={text!r} was asked for)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CliError(f"{name}={_show(text)} is not allowed: this machine has {torch.cuda.device_count()} CUDA "
                           "device(s)")
        return text

    return parse


def output_file(name: str, suffix: str) -> Callable[[str], str]:
    """A file to write: ends in ``suffix``, is not a directory, and its folder exists and is writable."""

    def parse(text: str) -> str:
        from ..video import check_output_path

        try:
            return check_output_path(text, name, suffix)
        except ValueError as e:
            raise CliError(str(e)) from None

    return parse


def output_dir(name: str) -> Callable[[str], str]:
    """A folder to write into: an existing writable directory, or a new one whose parent is."""

    def parse(text: str) -> str:
        if not text or "\x00" in text:
            raise CliError(f"{name}={_show(text)} is not allowed: give a folder path")
        path = os.path.abspath(text)
        if os.path.exists(path) and not os.path.isdir(path):
            raise CliError(f"{name}={_show(text)} is not allowed: it is a file, not a folder")
        target = path if os.path.isdir(path) else os.path.dirname(path)
        if not os.path.isdir(target):
            raise CliError(f"{name}={_show(text)} is not allowed: its parent folder {_show(target)} does not exist")
        if not os.access(target, os.W_OK | os.X_OK):
            raise CliError(f"{name}={_show(text)} is not allowed: {_show(target)} is not writable")
        return text

    return parse


def existing_file(name: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text or "\x00" in text or not os.path.isfile(text):
            what = "is a folder" if text and os.path.isdir(text) else "does not exist"
            raise CliError(f"{name}={_show(text)} is not allowed: it {what}; give a file")
        if not os.access(text, os.R_OK):
            raise CliError(f"{name}={_show(text)} is not allowed: it is not readable")
        return text

    return parse


def existing_dir(name: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text or "\x00" in text or not os.path.isdir(text):
            raise CliError(f"{name}={_show(text)} is not allowed: it is not an existing folder")
        return text

    return parse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded", help="embedded | HUB_ID | DIR (default: embedded, works offline)")
    p.add_argument("--device", default=None, type=device(), help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, type=choice("--dtype", dtype_names), help="model dtype")


def add_size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=frames, default=None, help="pixel frames, 4k+1 (default: the model's)")
    p.add_argument("--height", type=multiple_of_16("--height"), default=None, help="multiple of 16")
    p.add_argument("--width", type=multiple_of_16("--width"), default=None, help="multiple of 16")
    p.add_argument("--steps", type=int_between("--steps", 1, COUNT_MAX), default=None, help="denoising steps")
    p.add_argument("--guidance", type=non_negative_float("--guidance", 100.0), default=None,
                   help="CFG scale in [0, 100] (<=1 disables CFG)")
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


def check_model_name(name: str, flag: str = "--model") -> str:
    """Refuse before loading what cannot be a model: a file, or a folder without ``model_index.json``."""
    if not name or "\x00" in name:
        raise CliError(f"{flag}={_show(name)} is not allowed: give 'embedded', a pipeline folder or a hub id")
    if os.path.isfile(name):
        raise CliError(f"{flag}={_show(name)} is not allowed: it is a file; give a diffusers pipeline folder")
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "model_index.json")):
        raise CliError(f"{flag}={_show(name)} is not allowed: it is not a diffusers pipeline folder (no model_index.json)")
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    if looks_like_path and not os.path.exists(os.path.expanduser(name)):
        raise CliError(f"{flag}={_show(name)} is not allowed: no such folder (a hub id has the form 'org/name')")
    return name


def quiet_loading() -> None:
    """Loading a model prints no warnings about component classes (errors stay one line) and, when stderr is not a
    terminal, no progress bars."""
    from diffusers.utils import logging as diffusers_logging

    if os.environ.get("DIFFUSERS_VERBOSITY", "error") == "error":
        diffusers_logging.set_verbosity_error()
    if not sys.stderr.isatty():
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()


def load(args, accel=None):
    """The pipeline named by ``--model`` on ``--device`` / ``--dtype`` with ``accel`` applied; ``CliError`` with the
    first line of whatever went wrong (a missing folder, a foreign model class, a broken file)."""
    from ..loading import load_pipeline

    from .. import loading

    if args.model not in loading.EMBEDDED_NAMES:
        check_model_name(args.model)
    quiet_loading()
    try:
        return load_pipeline(args.model, dtype=args.dtype, device=args.device, accel=accel)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except ValueError as e:
        raise CliError(str(e).splitlines()[0] if str(e) else repr(e)) from None
    except Exception as e:  # diffusers / hub errors of every kind: a broken or foreign folder, no network
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CliError(f"--model={_show(args.model)} could not be loaded: {type(e).__name__}: {first[:300]}") from None
