"""GPU acceptance rows for issue 24: quantized attention and frame merging, end to end on Wan2.1-1.3B's shape.

Self-contained (no import of ``gpu_acceptance.py``), so it runs on its own or is called from there:

* :func:`e2e_configs` gives named runs for ``gpu_acceptance.e2e_configs`` (bare-transformer runs:
  ``quant-attention`` and a window + quantized attention); merge them with ``runs.update(e2e_configs(smoke))``;
* :func:`issue24_e2e` runs its own loop, because frame merging needs a pipeline (the scheduler gives each step's
  noise level): a minimal pipeline object (the transformer, a UniPC flow scheduler, a CFG loop) that
  :func:`vidaccel.apply` accepts. Runs: ``none``, ``quant-attention``, ``window 12x16x24``, the window with
  quantized attention, frame merging at two strengths (every pair / groups of 4, merged 20 %-80 % of the steps:
  random weights give no motion signal, so the threshold is ``inf`` and the rows measure the speed of the merged
  steps), and ``balanced`` caching with merging. Reported per run: loop seconds, speed-up over ``none``, relative
  difference of the final latents from ``none`` (random weights: a consistency figure, not quality), finiteness,
  peak memory and ``vidaccel.stats``.

    python benchmarks/gpu_acceptance_extra.py              # one H100 / H200 / B200, about 6-8 minutes
    python benchmarks/gpu_acceptance_extra.py --smoke      # the same code on CPU at tiny shapes (< 1 min)

Wiring into ``benchmarks/gpu_acceptance.py`` (two lines in ``main``, after its own e2e)::

    from gpu_acceptance_extra import issue24_e2e
    result["e2e_issue24"] = issue24_e2e(ctx, steps, t_start + args.budget_s + 420)

Writes ``benchmarks/results/gpu_acceptance_issue24[_smoke].json`` when run on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

logger = logging.getLogger("gpu_acceptance_extra")


def e2e_configs(smoke: bool) -> dict:
    """Named bare-transformer runs for ``gpu_acceptance.e2e_configs``."""
    import vidaccel

    tile = (1, 2, 2) if smoke else None
    window = (1, 2, 2) if smoke else (12, 16, 24)
    return {
        "quant-attention": ["quant-attention"],
        f"window {'x'.join(map(str, window))} + quant": [vidaccel.SlidingWindowConfig(window=window, tile=tile),
                                                         vidaccel.QuantAttentionConfig()],
    }


def _rel_err(out, ref) -> float:
    import torch

    if not torch.isfinite(out).all():
        return float("nan")
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


class Sampler:
    """The least a pipeline needs to be for :func:`vidaccel.apply`: a ``transformer``, a ``scheduler``, and a
    ``__call__`` running the denoising loop (UniPC flow matching, CFG with two calls per step, guidance 5)."""

    def __init__(self, transformer, scheduler, cond, uncond, dtype):
        self.transformer = transformer
        self.scheduler = scheduler
        self.cond, self.uncond, self.dtype = cond, uncond, dtype

    def __call__(self, x0, steps: int):
        import torch

        model, scheduler = self.transformer, self.scheduler
        scheduler.set_timesteps(steps, device=x0.device)
        x = x0.clone()
        with torch.no_grad():
            for t in scheduler.timesteps:
                xt, tt = x.to(self.dtype), t.expand(1)
                with model.cache_context("cond"):
                    pc = model(hidden_states=xt, timestep=tt, encoder_hidden_states=self.cond, return_dict=False)[0]
                with model.cache_context("uncond"):
                    pu = model(hidden_states=xt, timestep=tt, encoder_hidden_states=self.uncond, return_dict=False)[0]
                x = scheduler.step(pu.float() + 5.0 * (pc.float() - pu.float()), t, x, return_dict=False)[0]
        return x


def runs(smoke: bool) -> dict:
    """Named runs of :func:`issue24_e2e`: preset names and technique configs."""
    import vidaccel
    from vidaccel import FrameMergeConfig

    merge = dict(threshold=math.inf, merge_at=0.2, split_at=0.8)
    out = {"none": []}
    out.update({"quant-attention": ["quant-attention"]})
    tile = (1, 2, 2) if smoke else None
    window = (1, 2, 2) if smoke else (12, 16, 24)
    label = "x".join(map(str, window))
    out[f"window {label}"] = [vidaccel.SlidingWindowConfig(window=window, tile=tile)]
    out[f"window {label} + quant"] = [vidaccel.SlidingWindowConfig(window=window, tile=tile),
                                      vidaccel.QuantAttentionConfig()]
    out["frame-merge pairs 20-80%"] = [FrameMergeConfig(max_group=2, **merge)]
    out["frame-merge groups of 4 20-80%"] = [FrameMergeConfig(max_group=4, **merge)]
    out["balanced + frame-merge pairs"] = ["balanced", FrameMergeConfig(max_group=2, **merge)]
    return out


def issue24_e2e(ctx, steps: int, deadline: float, names: list[str] | None = None) -> list[dict]:
    """Run :func:`runs` on a random-weight Wan2.1-1.3B (``ctx.smoke``: a tiny one on CPU); ``ctx`` needs ``smoke``
    and ``device``. Runs that would start after ``deadline`` (``time.perf_counter()``) are skipped (recorded)."""
    import torch

    import vidaccel
    from _common import wan13_random_setup

    model, cond, uncond, x0, scheduler, dtype = wan13_random_setup(ctx, smoke_latent_frames=5)
    sampler = Sampler(model, scheduler, cond, uncond, dtype)
    cuda = ctx.device == "cuda"
    rows, base = [], None
    for name, configs in runs(ctx.smoke).items():
        if names and name not in names:
            continue
        if time.perf_counter() > deadline:
            rows.append(dict(run=name, skipped="time budget spent before this run"))
            continue
        row = dict(run=name, steps=steps, calls=2 * steps, latent=list(x0.shape[2:]), layers=model.config.num_layers)
        try:
            vidaccel.apply(sampler, *configs) if configs else None
            try:
                with torch.no_grad():  # compile / autotune every kernel once, outside the timed loop
                    model(hidden_states=x0.to(dtype), timestep=torch.tensor([999.0], device=ctx.device),
                          encoder_hidden_states=cond, return_dict=False)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                x = sampler(x0, steps)
                if cuda:
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                row.update(seconds=seconds, finite=bool(torch.isfinite(x).all()),
                           stats=json.loads(json.dumps(vidaccel.stats(sampler), default=str)))
                if cuda:
                    row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            finally:
                vidaccel.remove(sampler)
            if name == "none":
                base = (x, seconds)
            if base is not None:
                row.update(speedup=base[1] / seconds, rel_diff_vs_none=_rel_err(x, base[0]))
        except Exception as e:  # noqa: BLE001  (one failing run must not hide the others)
            row.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
        rows.append(row)
        logger.info("e2e %-32s %s", name, {k: row.get(k) for k in ("seconds", "speedup", "rel_diff_vs_none",
                                                                     "finite", "error")})
        if cuda:
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes (checks the code)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps per run (default 10; smoke 5)")
    ap.add_argument("--runs", default="", help="comma-separated run names (default: all)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="runs starting after this many seconds are skipped")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t_start = time.perf_counter()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU; --smoke runs the same code on CPU at tiny shapes")

    class _Ctx:
        smoke = args.smoke
        device = "cpu" if args.smoke else "cuda"

    steps = args.steps or (5 if args.smoke else 10)
    rows = issue24_e2e(_Ctx, steps, t_start + args.budget_s, [n for n in args.runs.split(",") if n] or None)
    result = {"smoke": args.smoke, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and
              not args.smoke else "cpu", "torch": torch.__version__, "steps": steps,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "e2e": rows,
              "wall_s": round(time.perf_counter() - t_start, 1)}
    problems = [r for r in rows if "error" in r or r.get("finite") is False]
    result["passed"] = not problems
    out = args.out or os.path.join(ROOT, "benchmarks", "results",
                                   "gpu_acceptance_issue24_smoke.json" if args.smoke else "gpu_acceptance_issue24.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    logger.info("%d runs, %d problems; %.0f s; wrote %s", len(rows), len(problems), result["wall_s"], out)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
