"""``vidaccel tune``: the fastest combination of techniques within a quality budget, on your prompts."""

from __future__ import annotations

import os
import sys

from .common import CliError, add_size_args, call_kwargs, choice, dtype_names, int_at_least, load, positive_float

TECHNIQUE_NAMES = ("cache", "sliding_window", "quant", "linear_attention")


def _budget(text: str):
    from ..tune.budget import Budget

    try:
        return Budget.parse(text)
    except ValueError as e:
        raise CliError(f"--budget: {e}") from None


def _techniques(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TECHNIQUE_NAMES]
    if bad or not names:
        raise CliError(f"--techniques={text!r} is not allowed; give a comma-separated list among "
                       f"{', '.join(TECHNIQUE_NAMES)}")
    return names


def add_parser(sub) -> None:
    t = sub.add_parser("tune", help="search the fastest configuration within a quality budget on your prompts")
    t.add_argument("model", nargs="?", default="embedded",
                   help="embedded | HUB_ID | DIR (default: embedded, works offline)")
    t.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    t.add_argument("--prompts", default=None, metavar="FILE", help="a text file with one prompt per line")
    t.add_argument("--holdout-prompt", action="append", default=None, metavar="PROMPT",
                   help="a held-out prompt (repeatable; default: the last third of the prompts)")
    t.add_argument("--budget", required=True, type=_budget,
                   help="psnr=DB | ssim=S | adherence-drop=D (several joined by commas): quality kept against the "
                        "unaccelerated pipeline")
    t.add_argument("--minutes", type=positive_float("--minutes"), default=20.0,
                   help="time limit of the whole session (default 20; a resumed session counts time already spent)")
    t.add_argument("-o", "--output", default="tuned.json",
                   help="preset file to write (.json; the table .md, plot .png and state .state.json go beside it)")
    t.add_argument("--state", default=None, help="state file (default: beside --output); an existing one of the "
                                                 "same setup is resumed")
    t.add_argument("--techniques", type=_techniques, default=None,
                   help="comma-separated among cache, sliding_window, quant, linear_attention (default: all; "
                        "linear_attention needs --adapter)")
    t.add_argument("--adapter", default=None, help="linear-attention adapter (.safetensors from vidaccel linearize)")
    t.add_argument("--seeds", type=int_at_least("--seeds", 1), default=1, help="seeds per prompt (default 1)")
    t.add_argument("--low-steps", type=int_at_least("--low-steps", 1), default=None,
                   help="steps of the first, cheapest rung (default: the full steps)")
    t.add_argument("--no-presets", action="store_true", help="do not start from the built-in presets")
    t.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    t.add_argument("--dtype", default=None, type=choice("--dtype", dtype_names), help="model dtype")
    add_size_args(t)
    t.set_defaults(func=run)


def _read_prompts(args) -> tuple[list[str], list[str] | None]:
    prompts = list(args.prompt or [])
    if args.prompts:
        if not os.path.isfile(args.prompts):
            raise CliError(f"--prompts={args.prompts!r}: no such file")
        with open(args.prompts, encoding="utf-8") as f:
            prompts += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    holdout = list(args.holdout_prompt) if args.holdout_prompt else None
    if not prompts:
        raise CliError("give prompts with --prompt (repeatable) or --prompts FILE")
    if holdout is None and len(prompts) < 2:
        raise CliError(f"{len(prompts)} prompt given: tuning needs at least 2 (quality is checked on held-out "
                       "prompts the search does not see), or give --holdout-prompt")
    everything = prompts + (holdout or [])
    if len(set(everything)) != len(everything):
        raise CliError("prompts must be distinct (search and held-out together)")
    return prompts, holdout


def run(args) -> int:
    prompts, holdout = _read_prompts(args)
    if not args.output.lower().endswith(".json"):
        raise CliError(f"--output={args.output!r} is not allowed: the preset file name must end in .json")
    if args.adapter is not None and not os.path.isfile(args.adapter):
        raise CliError(f"--adapter={args.adapter!r}: no such file")
    techniques = args.techniques
    if techniques and "linear_attention" in techniques and args.adapter is None:
        raise CliError("--techniques includes linear_attention, which needs --adapter (vidaccel linearize writes "
                       "one): untrained linear attention does not keep quality")
    if args.budget.needs_adherence:
        from ..loading import EMBEDDED_NAMES
        from ..models.shapes import parse_prompt

        if args.model not in EMBEDDED_NAMES:
            raise CliError(f"--budget adherence-drop={args.budget.adherence_drop:g} cannot be checked on "
                           f"{args.model!r}: adherence is scored by the shapes scorer, which only knows the embedded "
                           "shapes-t2v model; use psnr= or ssim=")
        for p in prompts + (holdout or []):
            try:
                parse_prompt(p)
            except ValueError:
                raise CliError(f"--budget adherence-drop cannot be checked on prompt {p!r}: the shapes scorer only "
                               "scores prompts of the embedded model's grammar; use psnr= or ssim=") from None
    from ..tune import tune

    pipe = load(args)
    kwargs = call_kwargs(args, pipe)
    try:
        result = tune(pipe, prompts, budget=args.budget, time_limit=args.minutes * 60, techniques=techniques,
                      holdout=holdout, seeds=list(range(args.seeds)), call_kwargs=kwargs, output=args.output,
                      state_path=args.state, adapter=args.adapter, low_steps=args.low_steps,
                      presets=not args.no_presets)
    except ValueError as e:
        raise CliError(str(e)) from None
    except KeyboardInterrupt:
        state = args.state or args.output[:-5] + ".state.json"
        print(f"interrupted: the search state is in {state}; run the same command again to resume", file=sys.stderr)
        raise
    print(result.markdown)
    files = result.files
    print(f"wrote {files['preset']}, {files['table']}, {files['plot']} (state: {files['state']})")
    if result.configs:
        print(f"use it: vidaccel generate \"{prompts[0]}\" --preset {files['preset']}   |   "
              f"vidaccel.load_pipeline(..., accel={files['preset']!r})")
    return 0
