"""``vidaccel generate``: one video from a prompt (several GPUs and prompt files: :mod:`.distributed`)."""

from __future__ import annotations

import json
import os
import sys

from . import distributed
from .common import (CliError, RunError, add_model_args, add_size_args, call_kwargs, choice, int_between, load,
                     output_file, presets, say, seed)


def preset_or_file(text: str) -> str:
    """A preset name, or the path of an existing preset ``.json`` file (as ``vidaccel tune`` writes)."""
    if text.lower().endswith(".json"):
        if not os.path.isfile(text):
            raise CliError(f"--preset={text!r}: no such preset file")
        return text
    return choice("--preset", presets)(text)


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate a video from a prompt")
    g.add_argument("prompt", nargs="?", default=None, help="the prompt (or --prompts FILE)")
    g.add_argument("-o", "--output", default=None,
                   help="mp4 path (default: out.mp4; its folder must exist); with --prompts a folder (default: videos)")
    g.add_argument("--preset", default="none", type=preset_or_file,
                   help="acceleration preset, or a preset .json file written by `vidaccel tune`")
    g.add_argument("--seed", type=seed(), default=0)
    g.add_argument("--fps", type=int_between("--fps", 1, 1000), default=None, help="mp4 frame rate (default: the model's)")
    add_model_args(g)
    add_size_args(g)
    distributed.add_arguments(g)
    g.set_defaults(func=run)


def check_run(pipe, kwargs: dict) -> None:
    """Everything about this call that needs the loaded model, before any step: sizes, steps, memory and what
    the applied techniques need."""
    from ..core.pipeline_class import call_defaults
    from ..core.technique import check_run as check_techniques
    from .limits import check_memory, check_sizes, check_steps

    sizes = check_sizes(pipe, kwargs)
    steps = kwargs.get("num_inference_steps", call_defaults(pipe).get("num_inference_steps"))
    steps = steps if isinstance(steps, int) else None
    check_steps(pipe, steps)
    try:
        check_techniques(pipe, num_inference_steps=steps)
    except ValueError as e:
        raise CliError(f"{e} (--steps={steps})") from None
    check_memory(pipe, sizes, kwargs)


def max_sequence_length(pipe, kwargs: dict) -> int | None:
    from ..core.pipeline_class import call_defaults

    value = kwargs.get("max_sequence_length") or call_defaults(pipe).get("max_sequence_length")
    return value if isinstance(value, int) else None


def video_kwargs(args, pipe) -> dict:
    """Pipeline call arguments from the command line, checked against the loaded model before any step."""
    kwargs = call_kwargs(args, pipe)
    check_run(pipe, kwargs)
    return kwargs


def make_video(args, pipe, prompt: str, seed: int, output: str, kwargs: dict, write: bool = True) -> list[str]:
    """Generate one video (every rank of a context-parallel group calls this); write it when ``write``; return
    the report lines."""
    import torch

    from ..families import family_for, pipeline_transformers
    from ..video import NonFiniteFramesError, VideoWriteError, save_video

    generator = torch.Generator(device="cpu").manual_seed(seed)
    result = pipe(prompt=prompt, generator=generator, output_type="np", **kwargs)
    frames = result.frames[0]
    fps = args.fps or family_for(pipeline_transformers(pipe)[0][1]).fps
    if write:
        try:
            save_video(frames, output, fps=fps)
        except NonFiniteFramesError as e:
            raise RunError(f"the generated video is not finite, so nothing was written: {e}"
                           + ("; lower --guidance" if kwargs.get("guidance_scale", 0) > 20 else "")) from None
        except VideoWriteError as e:
            raise RunError(str(e)) from None
    info = getattr(pipe, "vidaccel_model", {"name": args.model})
    run = pipe.last_run
    lines = [
        f"wrote {output}: {frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]} at {fps} fps",
        f"model       {info.get('name')}" + ("" if info.get("trained", True) else "  (RANDOM WEIGHTS: output is noise)"),
        f"prompt      {prompt!r}  seed {seed}  steps {run['steps']}",
        f"accelerated {', '.join(run['techniques']) or 'nothing'} (preset {args.preset})",
        "time        text {text_encoding_s:.2f}s | prep {preparation_s:.2f}s | denoise {denoising_s:.2f}s | "
        "decode {decoding_s:.2f}s | total {total_s:.2f}s".format(**run),
    ]
    for name, per_role in run["stats"].items():
        # scalars only: the per-step / per-block logs stay in vidaccel.stats(pipe)
        summary = {role: {k: v for k, v in st.items() if not isinstance(v, (dict, list))} if isinstance(st, dict) else st
                   for role, st in per_role.items()} if isinstance(per_role, dict) else per_role
        lines.append(f"stats       {name}: {json.dumps(summary, default=str)[:400]}")
    return [say(line) for line in lines]


def run(args) -> int:
    from .limits import prompt_notes

    if distributed.requested(args):
        return distributed.run(args, make_video, video_kwargs)
    if args.prompt is None:
        raise CliError("generate needs a prompt (or --prompts FILE)")
    output = output_file("--output", ".mp4")(args.output or "out.mp4")
    pipe = load(args, accel=args.preset)
    kwargs = video_kwargs(args, pipe)
    for note in prompt_notes(pipe, [args.prompt], max_sequence_length(pipe, kwargs)):
        print(say(note), file=sys.stderr)
    print("\n".join(make_video(args, pipe, args.prompt, args.seed, output, kwargs)))
    return 0
