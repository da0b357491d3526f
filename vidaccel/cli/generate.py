"""``vidaccel generate``: one video from a prompt (several GPUs and prompt files: :mod:`.distributed`)."""

from __future__ import annotations

import json
import sys

from . import distributed
from .common import CliError, add_model_args, add_size_args, call_kwargs, choice, int_at_least, load, presets


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate a video from a prompt")
    g.add_argument("prompt", nargs="?", default=None, help="the prompt (or --prompts FILE)")
    g.add_argument("-o", "--output", default=None,
                   help="mp4 path (default: out.mp4); with --prompts a folder (default: videos)")
    g.add_argument("--preset", default="none", type=choice("--preset", presets), help="acceleration preset")
    g.add_argument("--seed", type=int_at_least("--seed", 0), default=0)
    g.add_argument("--fps", type=int_at_least("--fps", 1), default=None, help="mp4 frame rate (default: the model's)")
    add_model_args(g)
    add_size_args(g)
    distributed.add_arguments(g)
    g.set_defaults(func=run)


def video_kwargs(args, pipe) -> dict:
    """Pipeline call arguments from the command line, with sizes checked against the model's grid."""
    from ..families import family_for, pipeline_transformers

    kwargs = call_kwargs(args, pipe)
    model = pipeline_transformers(pipe)[0][1]
    family = family_for(model)
    # diffusers silently rounds sizes down to the model's patch grid; refuse instead of surprising the user.
    multiple = pipe.vae_scale_factor_spatial * family.patch_size(model)[1]
    for name in ("height", "width"):
        value = kwargs.get(name)
        if value is not None and value % multiple:
            raise CliError(f"--{name}={value} is not allowed for this model: it must be a multiple of {multiple} "
                           f"(VAE x{pipe.vae_scale_factor_spatial} times patch {family.patch_size(model)[1]})")
    return kwargs


def note_unknown_words(pipe, prompt: str) -> None:
    if getattr(pipe, "vidaccel_model", {}).get("name") == "shapes-t2v":
        from ..models.shapes import unknown_words

        unknown = unknown_words(prompt)
        if unknown:
            print(f"note: the embedded model does not know these words: {', '.join(unknown)}", file=sys.stderr)


def make_video(args, pipe, prompt: str, seed: int, output: str, kwargs: dict, write: bool = True) -> list[str]:
    """Generate one video (every rank of a context-parallel group calls this); write it when ``write``; return
    the report lines."""
    import torch

    from ..families import family_for, pipeline_transformers
    from ..video import save_video

    generator = torch.Generator(device="cpu").manual_seed(seed)
    result = pipe(prompt=prompt, generator=generator, output_type="np", **kwargs)
    frames = result.frames[0]
    fps = args.fps or family_for(pipeline_transformers(pipe)[0][1]).fps
    if write:
        save_video(frames, output, fps=fps)
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
    return lines


def run(args) -> int:
    if distributed.requested(args):
        return distributed.run(args, make_video, video_kwargs)
    if args.prompt is None:
        raise CliError("generate needs a prompt (or --prompts FILE)")
    output = args.output or "out.mp4"
    if not output.lower().endswith(".mp4"):
        raise CliError(f"--output={output!r} is not allowed: the file name must end in .mp4")
    pipe = load(args, accel=args.preset)
    note_unknown_words(pipe, args.prompt)
    kwargs = video_kwargs(args, pipe)
    print("\n".join(make_video(args, pipe, args.prompt, args.seed, output, kwargs)))
    return 0
