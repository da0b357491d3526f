"""``vidaccel generate``: one video from a prompt."""

from __future__ import annotations

import json
import os
import sys

from .common import CliError, add_model_args, add_size_args, call_kwargs, choice, int_at_least, load, presets


def preset_or_file(text: str) -> str:
    """A preset name, or the path of an existing preset ``.json`` file (as ``vidaccel tune`` writes)."""
    if text.lower().endswith(".json"):
        if not os.path.isfile(text):
            raise CliError(f"--preset={text!r}: no such preset file")
        return text
    return choice("--preset", presets)(text)


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate a video from a prompt")
    g.add_argument("prompt")
    g.add_argument("-o", "--output", default="out.mp4", help="mp4 path (default: out.mp4)")
    g.add_argument("--preset", default="none", type=preset_or_file,
                   help="acceleration preset, or a preset .json file written by `vidaccel tune`")
    g.add_argument("--seed", type=int_at_least("--seed", 0), default=0)
    g.add_argument("--fps", type=int_at_least("--fps", 1), default=None, help="mp4 frame rate (default: the model's)")
    add_model_args(g)
    add_size_args(g)
    g.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..families import family_for, pipeline_transformers
    from ..video import save_video

    if not args.output.lower().endswith(".mp4"):
        raise CliError(f"--output={args.output!r} is not allowed: the file name must end in .mp4")
    pipe = load(args, accel=args.preset)
    info = getattr(pipe, "vidaccel_model", {"name": args.model})
    if info.get("name") == "shapes-t2v":
        from ..models.shapes import unknown_words

        unknown = unknown_words(args.prompt)
        if unknown:
            print(f"note: the embedded model does not know these words: {', '.join(unknown)}", file=sys.stderr)
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
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    result = pipe(prompt=args.prompt, generator=generator, output_type="np", **kwargs)
    frames = result.frames[0]
    fps = args.fps or family.fps
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
