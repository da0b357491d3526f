"""``vidaccel linearize``: select and distil linear-attention layers (LinVideo), data-free; writes an adapter."""

from __future__ import annotations

import json
import os

from .common import CliError, choice, int_at_least


def _feature_maps() -> list[str]:
    from ..kernels.backend_names import LINEAR_ATTENTION_FEATURE_MAPS

    return list(LINEAR_ATTENTION_FEATURE_MAPS)


def _layers(text: str):
    if text == "auto":
        return "auto"
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--layers={text!r} is not allowed: use 'auto' or comma-separated block indices") from None


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CliError(f"--seeds={text!r} is not allowed: use comma-separated integers") from None


def add_parser(sub) -> None:
    p = sub.add_parser("linearize", help="select and distil linear-attention layers (LinVideo); writes an adapter",
                       description="select and distil linear-attention layers (LinVideo), data-free; writes a "
                                   "safetensors adapter")
    p.add_argument("model", nargs="?", default="embedded", help="'embedded', a local folder or a hub id")
    p.add_argument("--prompt", action="append", default=[], help="prompt to sample (repeatable)")
    p.add_argument("--prompts-file", help="text file, one prompt per line")
    p.add_argument("--output", "-o", required=True, help="adapter path (.safetensors)")
    p.add_argument("--layers", default="auto", type=_layers, help="'auto' or comma-separated block indices")
    p.add_argument("--num-layers", type=int_at_least("--num-layers", 0), default=None,
                   help="layers to swap with --layers auto")
    p.add_argument("--feature-map", default="hedgehog", type=choice("--feature-map", _feature_maps))
    p.add_argument("--rope", default="numerator", type=choice("--rope", lambda: ["numerator", "none"]))
    p.add_argument("--steps", type=int_at_least("--steps", 0), default=200, help="optimizer steps")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--final-weight", type=float, default=0.0, help="weight of the final-output loss")
    p.add_argument("--inference-steps", type=int_at_least("--inference-steps", 1), default=None,
                   help="denoising steps of the sampled trajectories")
    p.add_argument("--height", type=int_at_least("--height", 1), default=None)
    p.add_argument("--width", type=int_at_least("--width", 1), default=None)
    p.add_argument("--num-frames", type=int_at_least("--num-frames", 1), default=None)
    p.add_argument("--seeds", default=[0], type=_seeds, help="comma-separated sampling seeds")
    p.add_argument("--checkpoint-dir", default=None, help="where to keep the resumable training state")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    prompts = list(args.prompt)
    if args.prompts_file:
        if not os.path.isfile(args.prompts_file):
            raise CliError(f"--prompts-file={args.prompts_file!r} does not exist")
        with open(args.prompts_file) as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        raise CliError("give at least one --prompt or --prompts-file")
    if args.resume and not args.checkpoint_dir:
        raise CliError("--resume needs --checkpoint-dir")
    from ..accel.linear_attention import LinearAttentionConfig, linearize
    from ..loading import load_pipeline

    try:
        config = LinearAttentionConfig(layers=args.layers, num_layers=args.num_layers, feature_map=args.feature_map,
                                       rope=args.rope)
    except ValueError as e:
        raise CliError(str(e)) from None
    call_kwargs = {k: v for k, v in dict(num_inference_steps=args.inference_steps, height=args.height,
                                         width=args.width, num_frames=args.num_frames).items() if v is not None}
    try:
        pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device)
    except (ValueError, OSError) as e:
        raise CliError(f"cannot load model {args.model!r}: {str(e).splitlines()[0] if str(e) else e!r}") from None
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
