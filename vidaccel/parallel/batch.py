"""Prompt batches over processes: each process makes its share of the videos (throughput, not latency).

``read_prompts`` reads a prompts file; :func:`plan_batch` gives every prompt a fixed output file and seed (so a
video does not depend on how many processes share the batch); :func:`my_share` splits the jobs with accelerate's
``PartialState.split_between_processes`` (contiguous, the first ``len % n`` processes take one more);
:func:`run_batch` makes this process's videos, skipping files that already exist (resume) and writing each
through a temporary name so an interrupted write never looks finished; :func:`write_summary` (rank 0, after
:func:`gather_records`) lists every prompt with its file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Callable

logger = logging.getLogger(__name__)

__all__ = ["PromptJob", "read_prompts", "plan_batch", "my_share", "run_batch", "gather_records", "write_summary",
           "SUMMARY_NAME"]

SUMMARY_NAME = "summary.json"


@dataclass(frozen=True)
class PromptJob:
    """One video of a batch: ``index`` in the prompts file (0-based), its ``prompt``, ``seed`` and ``path``."""

    index: int
    prompt: str
    seed: int
    path: str


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a text file, stripped; lines starting with ``#`` are comments.

    Raises ``ValueError`` when the file cannot be read or holds no prompt."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise ValueError(f"--prompts={path!r} cannot be read: {e.strerror or e}") from None
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"--prompts={path!r} holds no prompt (one per line; '#' starts a comment)")
    return prompts


def _slug(prompt: str, limit: int = 48) -> str:
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    slug = "-".join(words)[:limit].rstrip("-")
    return slug or "prompt"


def plan_batch(prompts: list[str], outdir: str | os.PathLike, seed: int = 0) -> list[PromptJob]:
    """One :class:`PromptJob` per prompt: file ``outdir/NNNN-words-of-the-prompt.mp4``, seed ``seed + index``."""
    outdir = os.fspath(outdir)
    width = max(4, len(str(len(prompts) - 1)))
    return [PromptJob(i, p, seed + i, os.path.join(outdir, f"{i:0{width}d}-{_slug(p)}.mp4"))
            for i, p in enumerate(prompts)]


def my_share(jobs: list[PromptJob]) -> list[PromptJob]:
    """This process's jobs (all of them outside a multi-process launch)."""
    import torch
    from accelerate import PartialState

    from . import launch

    # PartialState() picks no backend on a machine without GPUs and then reports one process: ask for CPUs there.
    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if state.num_processes != launch.world_size():  # a state made before the group existed (one process)
        PartialState._reset_state()
        state = PartialState(cpu=cpu)
    with state.split_between_processes(list(jobs)) as share:
        return list(share)


def run_batch(jobs: list[PromptJob], make_video: Callable[[PromptJob, str], dict | None], *, write: bool = True,
              resume: bool = True) -> list[dict]:
    """Make the videos of ``jobs``; returns one record per job.

    Args:
        make_video: ``make_video(job, tmp_path)`` generates the job's video and, when ``write``, writes it to
            ``tmp_path`` (an mp4 name beside the final one); returns extra fields for the record.
        write: this process writes files (``False`` on ranks > 0 of a video shared by context parallelism:
            they compute, rank 0 writes).
        resume: skip jobs whose file exists (every rank checks before any starts the job, so ranks sharing a
            video skip together).
    """
    from . import launch

    records = []
    for job in jobs:
        exists = resume and os.path.isfile(job.path) and os.path.getsize(job.path) > 0
        if exists:
            records.append({**asdict(job), "file": os.path.basename(job.path), "status": "exists",
                            "rank": launch.rank()})
            continue
        tmp = job.path[: -len(".mp4")] + ".partial.mp4"
        start = time.perf_counter()
        extra = make_video(job, tmp) or {}
        if write:
            os.replace(tmp, job.path)
        records.append({**asdict(job), "file": os.path.basename(job.path), "status": "written",
                        "seconds": round(time.perf_counter() - start, 3), "rank": launch.rank(), **extra})
        logger.info("prompt %d: %s", job.index, "written" if write else "computed")
    return records


def gather_records(records: list[dict]) -> list[dict]:
    """Every process's records, ordered by prompt index (the local ones outside a multi-process launch)."""
    from . import launch

    if not launch.is_distributed():
        return sorted(records, key=lambda r: r["index"])
    import torch.distributed as dist

    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, records)
    by_index = {}
    for part in every:
        for record in part:
            by_index.setdefault(record["index"], record)  # ranks sharing one video report it alike
    return [by_index[i] for i in sorted(by_index)]


def write_summary(outdir: str | os.PathLike, records: list[dict], extra: dict | None = None) -> str:
    """Write ``outdir/summary.json``: every prompt with its file and status; returns the path."""
    path = os.path.join(os.fspath(outdir), SUMMARY_NAME)
    payload = {**(extra or {}), "videos": records}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    return path
