"""The interleaved benchmark run (see :mod:`vidaccel.bench`)."""

from __future__ import annotations

import statistics
from typing import Any, Sequence

import torch

from ..core.pipeline_class import accelerate_pipeline_class, restore_pipeline_class
from ..families import pipeline_transformers
from ..memory import peak_memory, reset_peak_memory
from .config import BenchConfig
from .report import BenchReport, mean_psnr

__all__ = ["run_benchmark"]


def _adherence_fn(prompts: Sequence[str]):
    try:
        from ..eval import shapes_score
        from ..models.shapes import parse_prompt
    except ImportError:
        return None
    try:
        for p in prompts:
            parse_prompt(p)
    except ValueError:
        return None
    return lambda frames, prompt: float(shapes_score(frames, prompt)["overall"])


def run_benchmark(pipe, configs: Sequence[BenchConfig], *, prompts: Sequence[str], seeds: Sequence[int] = (0,),
                  repeats: int = 1, call_kwargs: dict | None = None, out_dir: str | None = None,
                  progress: bool = True) -> BenchReport:
    """Run baseline + ``configs`` interleaved on every (prompt, seed), ``repeats`` rounds; see module docs."""
    from tqdm.auto import tqdm

    from ..metrics import psnr, ssim

    if not prompts:
        raise ValueError("prompts must not be empty")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} is not allowed: it must be >= 1")
    call_kwargs = dict(call_kwargs or {})
    call_kwargs.setdefault("output_type", "np")
    device = next(pipeline_transformers(pipe)[0][1].parameters()).device
    accelerate_pipeline_class(pipe, owner="bench")
    pipe.set_progress_bar_config(disable=True)
    adherence = _adherence_fn(prompts)

    def call(prompt: str, seed: int):
        generator = torch.Generator(device="cpu").manual_seed(seed)
        reset_peak_memory(device)
        frames = pipe(prompt=prompt, generator=generator, **call_kwargs).frames[0]
        return frames, dict(pipe.last_run), peak_memory(device)

    for cfg in configs:
        if cfg.prepare is not None:
            cfg.prepare(pipe, lambda: call(prompts[0], seeds[0]), call_kwargs)

    baseline_frames: dict[tuple[str, int], Any] = {}
    runs: list[dict] = []
    names = ["baseline"] + [c.name for c in configs]
    total = repeats * len(prompts) * len(seeds) * len(names)
    bar = tqdm(total=total, desc="bench", disable=not progress, unit="run")
    try:
        for r in range(repeats):
            shift = r % max(len(configs), 1)
            order = list(configs[shift:]) + list(configs[:shift])
            for prompt in prompts:
                for seed in seeds:
                    for cfg in [None] + order:
                        name = "baseline" if cfg is None else cfg.name
                        bar.set_postfix_str(name)
                        if cfg is not None:
                            cfg.enable(pipe)
                        try:
                            frames, last, peak = call(prompt, seed)
                        finally:
                            if cfg is not None:
                                cfg.disable(pipe)
                        key = (prompt, seed)
                        if cfg is None and key not in baseline_frames:
                            baseline_frames[key] = frames
                        ref = baseline_frames[key]
                        runs.append({
                            "config": name, "round": r, "prompt": prompt, "seed": seed,
                            "denoise_s": last["denoising_s"], "total_s": last["total_s"], "peak_mib": peak,
                            "psnr": psnr(frames, ref), "ssim": ssim(frames, ref),
                            "adherence": adherence(frames, prompt) if adherence else None,
                            "stats": last["stats"],
                        })
                        bar.update()
    finally:
        bar.close()
        restore_pipeline_class(pipe, owner="bench")

    rows = []
    for name in names:
        mine = [x for x in runs if x["config"] == name]
        pairs = []
        for x in mine:
            base = next(b for b in runs if b["config"] == "baseline" and b["round"] == x["round"]
                        and b["prompt"] == x["prompt"] and b["seed"] == x["seed"])
            pairs.append((base["denoise_s"] / x["denoise_s"], base["total_s"] / x["total_s"]))
        kind = "baseline" if name == "baseline" else next(c.kind for c in configs if c.name == name)
        adh = [x["adherence"] for x in mine if x["adherence"] is not None]
        rows.append({
            "name": name, "kind": kind,
            "denoise_s": statistics.median(x["denoise_s"] for x in mine),
            "total_s": statistics.median(x["total_s"] for x in mine),
            "speedup": statistics.median(p[0] for p in pairs),
            "speedup_e2e": statistics.median(p[1] for p in pairs),
            "psnr": mean_psnr([x["psnr"] for x in mine]),
            "ssim": statistics.mean(x["ssim"] for x in mine),
            "adherence": statistics.mean(adh) if adh else None,
            "peak_mib": max((x["peak_mib"] for x in mine if x["peak_mib"] is not None), default=None),
            "stats": mine[-1]["stats"],
            "n": len(mine),
        })
    setup = {
        "model": getattr(pipe, "vidaccel_model", {}).get("name", type(pipe).__name__),
        "device": str(device), "prompts": list(prompts), "seeds": list(seeds), "repeats": repeats,
        "call_kwargs": {k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str))},
        "torch_threads": torch.get_num_threads(),
    }
    report = BenchReport(rows=rows, runs=runs, setup=setup)
    if out_dir:
        report.save(out_dir)
    return report
