"""``vidaccel convert``: original-format causal Wan checkpoints to diffusers folders."""

from __future__ import annotations

from .common import CliError, choice, existing_file, finite_float, int_between, output_dir


def add_parser(sub) -> None:
    cv = sub.add_parser("convert", help="convert checkpoints to diffusers folders")
    cv.add_argument("source_format", type=choice("source_format", lambda: ["wan-original"]))
    cv.add_argument("checkpoint", type=existing_file("checkpoint"))
    cv.add_argument("out_dir", type=output_dir("out_dir"))
    cv.add_argument("--base", default=None, help="diffusers Wan folder to take VAE/text encoder/tokenizer/scheduler from")
    cv.add_argument("--chunk-frames", type=int_between("--chunk-frames", 1, 2**31 - 1), default=3)
    cv.add_argument("--window-frames", type=int_between("--window-frames", 2, 2**31 - 1), default=21)
    cv.add_argument("--context-noise", type=finite_float("--context-noise", 0.0, 1.0, hi_open=True), default=0.0)
    cv.add_argument("--head-dim", type=int_between("--head-dim", 1, 65536), default=128)
    cv.set_defaults(func=run)


def run(args) -> int:
    import os

    if args.base is not None and not os.path.isfile(os.path.join(args.base, "model_index.json")):
        raise CliError(f"--base={args.base!r} is not allowed: it is not a diffusers pipeline folder (no model_index.json)")
    from ..pipelines.long_video import CausalConfig

    try:  # the causal settings are checked before the checkpoint is read
        CausalConfig(chunk_frames=args.chunk_frames, window_frames=args.window_frames, context_noise=args.context_noise)
    except ValueError as e:
        raise CliError(str(e).replace("CausalConfig.chunk_frames", "--chunk-frames")
                       .replace("CausalConfig.window_frames", "--window-frames")) from None
    from ..convert import convert_wan_original

    try:
        out = convert_wan_original(args.checkpoint, args.out_dir, base=args.base, chunk_frames=args.chunk_frames,
                                   window_frames=args.window_frames, context_noise=args.context_noise,
                                   head_dim=args.head_dim)
    except (ValueError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    print(f"wrote {out} (transformer/ + causal_config.json)")
    return 0
