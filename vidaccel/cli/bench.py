"""``vidaccel bench``: speed and fidelity of configurations against the baseline, interleaved in one process."""

from __future__ import annotations

import os

from .common import COUNT_MAX, CliError, add_model_args, add_size_args, call_kwargs, int_between, load, output_dir

#: What ``--config`` takes (the peers' names are fixed; presets are listed by ``vidaccel info``).
CONFIG_HELP = ("a preset (vidaccel info lists them), a preset .json file (vidaccel tune writes one) or a peer: fbc[:threshold] (diffusers FirstBlockCache), "
               "magcache[:threshold] (diffusers MagCache, calibrated here), taylorseer[:cache_interval] (diffusers "
               "TaylorSeer), cache-dit[:threshold] (cache-dit DBCache F1B0, if installed); repeatable")


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="speed and fidelity of configurations against the baseline, interleaved")
    b.add_argument("--config", action="append", default=None, metavar="NAME", help=CONFIG_HELP)
    b.add_argument("--prompt", action="append", default=None, help="prompt (repeatable)")
    b.add_argument("--seeds", type=int_between("--seeds", 1, COUNT_MAX), default=1, help="seeds per prompt")
    b.add_argument("--repeats", type=int_between("--repeats", 1, COUNT_MAX), default=1, help="interleaved rounds")
    b.add_argument("--out", default="bench_out", type=output_dir("--out"), help="folder for JSON, Markdown and PNG")
    add_model_args(b)
    add_size_args(b)
    b.set_defaults(func=run)


def run(args) -> int:
    from ..bench import bench_configs_from_names, run_benchmark
    from .generate import check_run

    try:
        configs = bench_configs_from_names(args.config or ["none"])
    except ValueError as e:
        raise CliError(str(e)) from None
    pipe = load(args)
    kwargs = call_kwargs(args, pipe)
    check_run(pipe, kwargs)
    for config in configs:  # presets with a technique that cannot serve this run are refused before the baseline
        if config.kind == "vidaccel":
            config.enable(pipe)
            try:
                check_run(pipe, kwargs)
            except CliError as e:
                raise CliError(f"--config={config.name}: {e}") from None
            finally:
                config.disable(pipe)
    prompts = args.prompt or ["a red circle moving right on a black background"]
    report = run_benchmark(pipe, configs, prompts=prompts, seeds=list(range(args.seeds)), repeats=args.repeats,
                           call_kwargs=kwargs, out_dir=args.out)
    print(report.markdown())
    print(f"\nwrote {os.path.join(args.out, 'bench.json')}, bench.md, bench.png")
    return 0
