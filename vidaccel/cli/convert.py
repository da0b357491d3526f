"""``vidaccel convert``: original-format causal Wan checkpoints to diffusers folders."""

from __future__ import annotations

from .common import CliError, choice, int_at_least, non_negative_float


def add_parser(sub) -> None:
    cv = sub.add_parser("convert", help="convert checkpoints to diffusers folders")
    cv.add_argument("source_format", type=choice("source_format", lambda: ["wan-original"]))
    cv.add_argument("checkpoint")
    cv.add_argument("out_dir")
    cv.add_argument("--base", default=None, help="diffusers Wan folder to take VAE/text encoder/tokenizer/scheduler from")
    cv.add_argument("--chunk-frames", type=int_at_least("--chunk-frames", 1), default=3)
    cv.add_argument("--window-frames", type=int_at_least("--window-frames", 2), default=21)
    cv.add_argument("--context-noise", type=non_negative_float("--context-noise"), default=0.0)
    cv.add_argument("--head-dim", type=int_at_least("--head-dim", 1), default=128)
    cv.set_defaults(func=run)


def run(args) -> int:
    from ..convert import convert_wan_original

    try:
        out = convert_wan_original(args.checkpoint, args.out_dir, base=args.base, chunk_frames=args.chunk_frames,
                                   window_frames=args.window_frames, context_noise=args.context_noise,
                                   head_dim=args.head_dim)
    except (ValueError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    print(f"wrote {out} (transformer/ + causal_config.json)")
    return 0
