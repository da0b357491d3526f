"""Measuring candidates through ``vidaccel bench``'s harness, and the metrics derived from the runs.

Every run is one JSON record: which candidate (``"baseline"`` for the unaccelerated pipeline), which cell
(prompt split and index, seed, steps, repetition), the batch it ran in, its denoising and end-to-end
seconds, and its PSNR / SSIM (against the baseline frames of the same batch, prompt and seed) and adherence.

A batch is one :func:`vidaccel.bench.run_benchmark` call: the baseline, then each candidate, on every prompt
and seed of the batch, so each candidate time has a baseline time from the same moment (interleaved ratios)
and every candidate is compared with one baseline output per prompt and seed. A cell a candidate has been
measured on is never run again.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..bench import BenchConfig, run_benchmark
from ..bench.report import mean_psnr

logger = logging.getLogger(__name__)

__all__ = ["Cell", "Measurements", "Runner", "BASELINE"]

BASELINE = "baseline"


@dataclass(frozen=True, order=True)
class Cell:
    """One (prompt, seed) at ``steps`` denoising steps, timing repetition ``rep``; ``split`` is ``"search"`` or
    ``"holdout"`` (prompts the search does not see)."""

    split: str
    prompt: int
    seed: int
    steps: int
    rep: int = 0

    def record_key(self) -> tuple:
        return (self.split, self.prompt, self.seed, self.steps, self.rep)


def _cell_of(record: dict) -> Cell:
    return Cell(record["split"], record["p"], record["seed"], record["steps"], record["rep"])


class Measurements:
    """All runs of a tuning session and the metrics of each candidate over a set of cells."""

    def __init__(self, records: Iterable[dict] = ()):
        self.records: list[dict] = []
        self._by_candidate: dict[tuple[str, tuple], dict] = {}
        self._baseline: dict[tuple[int, tuple], dict] = {}
        self.add(records)

    def add(self, records: Iterable[dict]) -> None:
        for r in records:
            self.records.append(r)
            key = _cell_of(r).record_key()
            if r["cand"] == BASELINE:
                self._baseline[(r["batch"], key)] = r
            else:
                self._by_candidate.setdefault((r["cand"], key), r)

    def has(self, cid: str, cell: Cell) -> bool:
        return (cid, cell.record_key()) in self._by_candidate

    def missing(self, cid: str, cells: Iterable[Cell]) -> list[Cell]:
        return [c for c in cells if not self.has(cid, c)]

    def runs_of(self, cid: str) -> int:
        return sum(1 for r in self.records if r["cand"] == cid)

    def metrics(self, cid: str, cells: Sequence[Cell]) -> dict | None:
        """Speed-ups (median of per-pair ratios over every measured cell) and quality (mean over distinct
        prompt/seed pairs) of ``cid`` on ``cells``; ``None`` if none of them was measured."""
        mine = [self._by_candidate[(cid, c.record_key())] for c in cells if self.has(cid, c)]
        if not mine:
            return None
        ratios, ratios_e2e = [], []
        quality: dict[tuple, tuple[dict, dict]] = {}
        for r in mine:
            base = self._baseline[(r["batch"], _cell_of(r).record_key())]
            ratios.append(base["denoise_s"] / r["denoise_s"])
            ratios_e2e.append(base["total_s"] / r["total_s"])
            quality.setdefault((r["split"], r["p"], r["seed"], r["steps"]), (r, base))
        pairs = list(quality.values())
        adh = [(r["adherence"], b["adherence"]) for r, b in pairs if r.get("adherence") is not None
               and b.get("adherence") is not None]
        return {
            "speedup": statistics.median(ratios),
            "speedup_e2e": statistics.median(ratios_e2e),
            "psnr": mean_psnr([r["psnr"] for r, _ in pairs]),
            "ssim": statistics.mean(r["ssim"] for r, _ in pairs),
            "adherence": statistics.mean(a for a, _ in adh) if adh else None,
            "adherence_drop": (statistics.mean(b for _, b in adh) - statistics.mean(a for a, _ in adh)) if adh else None,
            "cells": len(mine),
            "complete": len(mine) == len(cells),
        }


class Runner:
    """Runs batches of candidates through :func:`run_benchmark` and turns its runs into records.

    Args:
        pipe: the pipeline (shared with the caller; nothing stays applied after a batch).
        call_kwargs: pipeline call arguments of the full-fidelity runs (``num_inference_steps`` is set per cell).
        prompts: ``{"search": [...], "holdout": [...]}``.
        apply: ``apply(pipe, candidate)`` switches a candidate on; ``remove(pipe)`` switches it off.
        adherence: whether to keep the harness's adherence scores.
    """

    def __init__(self, pipe, call_kwargs: dict, prompts: dict[str, list[str]], apply: Callable[[Any, Any], None],
                 remove: Callable[[Any], None], adherence: bool):
        self.pipe = pipe
        self.call_kwargs = dict(call_kwargs)
        self.prompts = prompts
        self.apply = apply
        self.remove = remove
        self.adherence = adherence

    def kwargs(self, steps: int) -> dict:
        return {**self.call_kwargs, "num_inference_steps": steps}

    def warm_up(self, steps: int) -> float:
        """One untimed baseline call (first calls of a process pay one-off costs); returns its seconds."""
        import torch

        start = time.perf_counter()
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe(prompt=self.prompts["search"][0], generator=torch.Generator(device="cpu").manual_seed(0),
                  **{"output_type": "np", **self.kwargs(steps)})
        return time.perf_counter() - start

    def check(self, candidate) -> str | None:
        """Apply and remove ``candidate`` once: ``None`` if it fits the pipeline, else the error message."""
        try:
            self.apply(self.pipe, candidate)
        except ValueError as e:
            return str(e)
        except Exception as e:  # e.g. a kernel this device cannot run
            return f"{type(e).__name__}: {e}"
        finally:
            self.remove(self.pipe)
        return None

    def run(self, batch_id: int, candidates: Sequence[tuple[str, Any]], cells: Sequence[Cell]) -> list[dict]:
        """Run the baseline and ``candidates`` (``(id, candidate)``) on ``cells`` (one split, steps and rep;
        every prompt with every seed); return the records."""
        split, steps, rep = cells[0].split, cells[0].steps, cells[0].rep
        if any((c.split, c.steps, c.rep) != (split, steps, rep) for c in cells):
            raise ValueError("a batch runs cells of one split, step count and repetition")
        prompt_ids = sorted({c.prompt for c in cells})
        seeds = sorted({c.seed for c in cells})
        if len(cells) != len(prompt_ids) * len(seeds):
            raise ValueError("a batch runs every prompt with every seed")
        texts = [self.prompts[split][i] for i in prompt_ids]
        configs = [BenchConfig(name=cid, enable=lambda pipe, c=cand: self.apply(pipe, c), disable=self.remove)
                   for cid, cand in candidates]
        # techniques warn about settings that did nothing on a run (a cache that skipped nothing); the search
        # tries such settings on purpose and reports what each one did
        quiet = logging.getLogger("vidaccel.accel")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            report = run_benchmark(self.pipe, configs, prompts=texts, seeds=seeds, repeats=1,
                                   call_kwargs={"output_type": "np", **self.kwargs(steps)}, progress=False)
        finally:
            quiet.setLevel(level)
        out = []
        for run in report.runs:
            adherence = run["adherence"] if self.adherence else None
            out.append({"cand": BASELINE if run["config"] == "baseline" else run["config"], "split": split,
                        "p": prompt_ids[texts.index(run["prompt"])], "seed": run["seed"], "steps": steps, "rep": rep,
                        "batch": batch_id, "denoise_s": run["denoise_s"], "total_s": run["total_s"],
                        "psnr": run["psnr"], "ssim": run["ssim"], "adherence": adherence})
        return out

