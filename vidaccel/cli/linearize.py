"""``vidaccel linearize``: select and distil linear-attention layers (LinVideo), data-free; writes an adapter."""

from __future__ import annotations

import json

from .common import (COUNT_MAX, CliError, choice, device, dtype_names, existing_file, frames, int_between, load,
                     multiple_of_16, non_negative_float, output_dir, output_file, positive_float, seed)


def _feature_maps() -> list[str]:
    from ..kernels.backend_names import LINEAR_ATTENTION_FEATURE_MAPS

    return list(LINEAR_ATTENTION_FEATURE_MAPS)


def _layers(text: str):
    if text == "auto":
        return "auto"
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--layers={text[:60]!r} is not allowed: use 'auto' or comma-separated block indices") from None
    if any(i < 0 or i > 2**31 for i in layers):
        raise CliError(f"--layers={text[:60]!r} is not allowed: block indices are integers >= 0")
    return layers


def _seeds(text: str) -> list[int]:
    parse = seed("--seeds")
    values = [parse(s) for s in text.split(",") if s.strip()]
    if not values or len(values) > COUNT_MAX:
        raise CliError(f"--seeds={text[:60]!r} is not allowed: give 1 to {COUNT_MAX} comma-separated integers")
    return values


def add_parser(sub) -> None:
    p = sub.add_parser("linearize", help="select and distil linear-attention layers (LinVideo); writes an adapter",
                       description="select and distil linear-attention layers (LinVideo), data-free; writes a "
                                   "safetensors adapter")
    p.add_argument("model", nargs="?", default="embedded", help="'embedded', a local folder or a hub id")
    p.add_argument("--prompt", action="append", default=[], help="prompt to sample (repeatable)")
    p.add_argument("--prompts-file", type=existing_file("--prompts-file"), help="text file, one prompt per line")
    p.add_argument("--output", "-o", required=True, type=output_file("--output", ".safetensors"),
                   help="adapter path (.safetensors); its folder must exist")
    p.add_argument("--layers", default="auto", type=_layers, help="'auto' or comma-separated block indices")
    p.add_argument("--num-layers", type=int_between("--num-layers", 0, 2**31), default=None,
                   help="layers to swap with --layers auto")
    p.add_argument("--feature-map", default="hedgehog", type=choice("--feature-map", _feature_maps))
    p.add_argument("--rope", default="numerator", type=choice("--rope", lambda: ["numerator", "none"]))
    p.add_argument("--steps", type=int_between("--steps", 0, 10**7), default=200, help="optimizer steps")
    p.add_argument("--lr", type=positive_float("--lr", 10.0), default=1e-2)
    p.add_argument("--final-weight", type=non_negative_float("--final-weight", 1e6), default=0.0,
                   help="weight of the final-output loss")
    p.add_argument("--inference-steps", type=int_between("--inference-steps", 1, COUNT_MAX), default=None,
                   help="denoising steps of the sampled trajectories")
    p.add_argument("--height", type=multiple_of_16("--height"), default=None)
    p.add_argument("--width", type=multiple_of_16("--width"), default=None)
    p.add_argument("--num-frames", type=frames, default=None)
    p.add_argument("--seeds", default=[0], type=_seeds, help="comma-separated sampling seeds")
    p.add_argument("--checkpoint-dir", default=None, type=output_dir("--checkpoint-dir"),
                   help="where to keep the resumable training state")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument("--device", default=None, type=device())
    p.add_argument("--dtype", default=None, type=choice("--dtype", dtype_names))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    prompts = list(args.prompt)
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts += [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"--prompts-file={args.prompts_file!r} is not allowed: it is not a readable UTF-8 text "
                           f"file ({type(e).__name__})") from None
    if not prompts:
        raise CliError("give at least one --prompt or --prompts-file")
    if args.resume and not args.checkpoint_dir:
        raise CliError("--resume needs --checkpoint-dir")
    from ..accel.linear_attention import LinearAttentionConfig, linearize
    from .generate import check_run

    try:
        config = LinearAttentionConfig(layers=args.layers, num_layers=args.num_layers, feature_map=args.feature_map,
                                       rope=args.rope)
    except ValueError as e:
        raise CliError(str(e)) from None
    call_kwargs = {k: v for k, v in dict(num_inference_steps=args.inference_steps, height=args.height,
                                         width=args.width, num_frames=args.num_frames).items() if v is not None}
    pipe = load(args)
    defaults = dict(getattr(pipe, "vidaccel_model", {}).get("defaults", {}))
    check_run(pipe, {**defaults, **call_kwargs})
    pipe.set_progress_bar_config(disable=True)
    try:
        result = linearize(pipe, config, prompts=prompts, steps=args.steps, output=args.output,
                           call_kwargs=call_kwargs, seeds=args.seeds, lr=args.lr, final_weight=args.final_weight,
                           checkpoint_dir=args.checkpoint_dir, resume=args.resume, progress=not args.no_progress)
    except ValueError as e:
        raise CliError(str(e)) from None
    summary = {"adapter": result.adapter, "layers": result.layers, "ranking": result.ranking,
               "final_loss": result.losses[-1] if result.losses else None, "steps": result.steps}
    print(json.dumps(summary))
    return 0
