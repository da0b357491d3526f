"""``vidaccel generate`` over several processes: ``--ulysses`` / ``--ring`` (one video over N GPUs) and
``--prompts`` (a prompt file split across processes), under ``torchrun`` or ``accelerate launch``.

Everything is checked before any process joins a group or loads a model; argument errors, which every rank
raises alike, are printed by rank 0 only. After that, :func:`vidaccel.parallel.failures_end_all_ranks` ends every
rank on a failure and shows the error once. Ranks sharing a video compute it together and rank 0 writes it;
processes splitting a prompt file each write their own videos, and rank 0 writes ``summary.json``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

from .common import CliError, int_at_least, output_file, say

__all__ = ["add_arguments", "requested", "check", "run"]

_DEFAULT_DIR = "videos"


def add_arguments(parser) -> None:
    g = parser.add_argument_group("several GPUs / processes (launch with torchrun --nproc-per-node N -m vidaccel ...)")
    g.add_argument("--ulysses", type=int_at_least("--ulysses", 1), default=1,
                   help="Ulysses degree: GPUs sharing one video by head-parallel attention (default 1)")
    g.add_argument("--ring", type=int_at_least("--ring", 1), default=1,
                   help="ring degree: GPUs sharing one video by ring attention (default 1)")
    g.add_argument("--prompts", default=None, metavar="FILE",
                   help="one prompt per line; the processes split them, each writes its videos into -o FOLDER "
                        "(default: videos); existing videos are skipped; seed of line i is --seed + i")


def requested(args) -> bool:
    """Whether this ``generate`` call is a multi-process one (flags given, or started by a launcher)."""
    from ..parallel.launch import launched_world_size

    return bool(args.prompts) or args.ulysses > 1 or args.ring > 1 or launched_world_size() > 1


def check(args) -> tuple[list[str] | None, str]:
    """Validate the arguments (no model, no group yet); return ``(prompts or None, output)``."""
    from ..parallel.launch import launched_world_size

    degree = args.ulysses * args.ring
    world = launched_world_size()
    if args.prompts and args.prompt is not None:
        raise CliError(f"give a prompt or --prompts, not both (got {args.prompt!r} and --prompts={args.prompts!r})")
    if not args.prompts and args.prompt is None:
        raise CliError("generate needs a prompt (or --prompts FILE)")
    if degree > 1 and world != degree:
        raise CliError(f"--ulysses={args.ulysses} --ring={args.ring} spreads one video over {degree} processes, but "
                       f"{world} {'was' if world == 1 else 'were'} launched: run torchrun --nproc-per-node {degree} "
                       "-m vidaccel generate ...")
    if degree == 1 and world > 1 and not args.prompts:
        raise CliError(f"{world} processes were launched for one prompt: give --ulysses/--ring (one video over "
                       "several GPUs) or --prompts FILE (one video per prompt, split across processes)")
    prompts = None
    if args.prompts:
        from ..parallel.batch import read_prompts

        try:
            prompts = read_prompts(args.prompts)
        except ValueError as e:
            raise CliError(str(e)) from None
        output = args.output or _DEFAULT_DIR
        if output.lower().endswith(".mp4") or os.path.isfile(output):
            raise CliError(f"--output={output!r} is not allowed with --prompts: it must be a folder for the videos")
    else:
        output = output_file("--output", ".mp4")(args.output or "out.mp4")
    if degree > 1:
        import torch

        if torch.accelerator.device_count() == 0:
            raise CliError("--ulysses/--ring need GPUs (diffusers' context parallelism needs an accelerator); "
                           "on CPUs split a prompt file instead: --prompts FILE")
    return prompts, output


def run(args, make_video: Callable, video_kwargs: Callable) -> int:
    """The multi-process ``generate`` (``make_video`` / ``video_kwargs`` come from :mod:`.generate`)."""
    prompts, output = check(args)  # raised alike on every rank: the command line prints it on rank 0 only
    from ..parallel import launch

    launch.init_distributed()
    with launch.failures_end_all_ranks(_report):
        pipe = _load(args)
        kwargs = video_kwargs(args, pipe)
        if prompts is None:
            lines = make_video(args, pipe, args.prompt, args.seed, output, kwargs, write=launch.is_main_process())
            if launch.is_main_process():
                print("\n".join(lines + [f"parallel    ulysses {args.ulysses} x ring {args.ring} = "
                                         f"{launch.world_size()} processes"]))
        else:
            _run_batch(args, pipe, prompts, output, kwargs, make_video)
        launch.barrier()
    return 0


def _report(error: BaseException) -> int:
    """How the command line shows an error (once, on the rank that failed first): its exit code."""
    if isinstance(error, CliError):
        print(say(f"error: {error}"), file=sys.stderr)
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    traceback.print_exception(error)
    return 1


def _load(args):
    from ..parallel import ParallelConfig
    from .common import load

    pipe = load(args, accel=args.preset)
    if args.ulysses * args.ring > 1:
        from ..parallel.model import enable_parallelism

        try:
            enable_parallelism(pipe, ParallelConfig(ulysses=args.ulysses, ring=args.ring))
        except ValueError as e:
            raise CliError(str(e)) from None
    return pipe


def _run_batch(args, pipe, prompts, outdir, kwargs, make_video) -> None:
    from ..parallel import batch, launch

    shared = args.ulysses * args.ring > 1  # every rank makes every video together; rank 0 writes
    jobs = batch.plan_batch(prompts, outdir, seed=args.seed)
    mine = jobs if shared else batch.my_share(jobs)
    writer = launch.is_main_process() or not shared
    if writer:
        os.makedirs(outdir, exist_ok=True)

    def one(job, tmp_path):
        lines = make_video(args, pipe, job.prompt, job.seed, tmp_path, kwargs, write=writer)
        if writer:
            print(f"[rank {launch.rank()}] wrote {job.path}: {lines[0].split(': ', 1)[1]}", flush=True)
        return {"denoising_s": round(pipe.last_run["denoising_s"], 3)}

    records = batch.gather_records(batch.run_batch(mine, one, write=writer))
    if launch.is_main_process():
        path = batch.write_summary(outdir, records, {
            "model": args.model, "preset": args.preset, "processes": launch.world_size(),
            "ulysses": args.ulysses, "ring": args.ring, "call": {k: v for k, v in kwargs.items()
                                                                 if isinstance(v, (int, float, str))}})
        written = sum(r["status"] == "written" for r in records)
        print(f"{len(records)} prompts: {written} written, {len(records) - written} already there; summary {path}")
