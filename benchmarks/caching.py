"""Feature caching on the embedded model: vidaccel's policies against diffusers' caches and cache-dit.

Sweeps vidaccel's CacheConfig policies and thresholds and the peers' (diffusers FirstBlockCache,
MagCache calibrated on this model, TaylorSeer; cache-dit DBCache when installed) on the same prompts and
seeds, in one process, interleaved round by round. Reports the denoising speed-up (median of per-pair
ratios), PSNR / SSIM against the uncached frames and the shapes adherence score, plots both Pareto fronts,
and checks the goals:

* >= 3.0x denoising speed-up at PSNR >= 30 dB with adherence within 0.02 of uncached;
* at every PSNR level vidaccel's front is faster than the best peer's (identical outputs, i.e. runs that
  skipped nothing, are not a level).

    python benchmarks/caching.py                       # full sweep (~20-40 min on 2 CPU cores)
    python benchmarks/caching.py --quick               # 2 prompts, a few configs (smoke run)

Writes benchmarks/results/caching/{bench.json,bench.md,bench.png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time

import torch

import vidaccel
from vidaccel import CacheConfig
from vidaccel.bench import BenchConfig, bench_configs_from_names, pareto_front, run_benchmark

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import EMBEDDED_PROMPTS  # noqa: E402

PROMPTS = EMBEDDED_PROMPTS


def vidaccel_configs(quick: bool) -> list[BenchConfig]:
    sweep: list[tuple[str, CacheConfig]] = []
    # whole-call caching. threshold=inf is the fixed schedule, every interval-th call after the warm-up; a finite
    # threshold adapts the gap to the measured output error rate (capped by interval). f0: the final step reuses too
    fixed = [(2, 3, 0), (5, 3, 0)] if quick else [(2, 6, 2), (2, 3, 0), (3, 3, 0), (4, 3, 0), (5, 3, 0), (5, 3, 1),
                                                  (6, 3, 0)]
    for interval, warmup, final in fixed:
        sweep.append((f"call:{interval}/w{warmup}/f{final}",
                      CacheConfig(threshold=math.inf, policy="call", interval=interval, warmup_steps=warmup,
                                  final_steps=final)))
    # gaps that grow by g calls after each computed call past the warm-up (interval_growth)
    growing = [(3, 3, 3)] if quick else [(2, 3, 2), (2, 2, 2), (3, 3, 3)]
    for interval, warmup, growth in growing:
        sweep.append((f"call:{interval}+{growth}/w{warmup}/f0",
                      CacheConfig(threshold=math.inf, policy="call", interval=interval, warmup_steps=warmup,
                                  final_steps=0, interval_growth=growth)))
    if not quick:
        sweep.append(("call+taylor1:3/w3/f0", CacheConfig(threshold=math.inf, policy="call", interval=3,
                                                          forecast_order=1, warmup_steps=3, final_steps=0)))
        for thr in (0.05, 0.08, 0.12):
            sweep.append((f"call-adaptive:{thr:g}", CacheConfig(threshold=thr, policy="call", interval=8,
                                                                warmup_steps=3, final_steps=0)))
    for thr in [0.1, 0.2] if quick else [0.1, 0.2, 0.3, 0.45]:
        sweep.append((f"block:{thr:g}", CacheConfig(threshold=thr, policy="block")))
        sweep.append((f"block+taylor1:{thr:g}", CacheConfig(threshold=thr, policy="block", forecast_order=1,
                                                           max_consecutive_skips=5)))
    for thr in ([0.2] if quick else [0.1, 0.2, 0.3, 0.5]):
        sweep.append((f"step+taylor1:{thr:g}", CacheConfig(threshold=thr, policy="step", forecast_order=1,
                                                          max_consecutive_skips=5)))
    # sequential CFG (Wan): the uncond branch reuses the cond residual + the measured difference between refreshes
    for thr in ([0.1] if quick else [0.05, 0.1, 0.2]):
        sweep.append((f"step+taylor1+cfg3:{thr:g}", CacheConfig(threshold=thr, policy="step", forecast_order=1,
                                                               max_consecutive_skips=5, cfg_interval=3)))
    for thr in ([0.1] if quick else [0.1, 0.15, 0.3]):
        sweep.append((f"block+cfg3:{thr:g}", CacheConfig(threshold=thr, policy="block", cfg_interval=3)))
    for thr in ([0.2] if quick else [0.1, 0.2, 0.4]):
        sweep.append((f"profiled:{thr:g}", CacheConfig(threshold=thr, policy="profiled", forecast_order=1,
                                                      cache_ratio=0.6, warmup_steps=3)))
    return [BenchConfig.from_configs(name, cfg) for name, cfg in sweep]


def peer_names(quick: bool) -> list[str]:
    names = ["fbc:0.1", "magcache:0.06", "taylorseer:3"] if quick else [
        "fbc:0.05", "fbc:0.1", "fbc:0.2", "fbc:0.3",
        "magcache:0.03", "magcache:0.06", "magcache:0.12", "magcache:0.24",
        "taylorseer:2", "taylorseer:3", "taylorseer:4", "taylorseer:5", "taylorseer:6",
    ]
    try:
        import cache_dit  # noqa: F401

        names += ["cache-dit:0.1"] if quick else ["cache-dit:0.05", "cache-dit:0.1", "cache-dit:0.2", "cache-dit:0.3"]
    except ImportError:
        print("cache-dit not installed: skipping it (pip install cache-dit)", file=sys.stderr)
    return names


def check_goals(report) -> dict:
    base = report.rows[0]
    rows = report.rows[1:]
    ours = [r for r in rows if r["kind"] == "vidaccel"]
    peers = [r for r in rows if r["kind"] == "peer"]
    adh_ok = lambda r: base["adherence"] is None or (r["adherence"] is not None and r["adherence"] >= base["adherence"] - 0.02)
    qualifying = [r for r in ours if r["psnr"] >= 30.0 and adh_ok(r)]
    best = max(qualifying, key=lambda r: r["speedup"], default=None)
    front_ours = pareto_front([(min(r["psnr"], 100.0), r["speedup"]) for r in ours])
    front_peer = pareto_front([(min(r["psnr"], 100.0), r["speedup"]) for r in peers])

    def best_at(front, level):  # fastest point with PSNR >= level
        return max((s for p, s in front if p >= level), default=0.0)

    # an identical output (PSNR capped at 100) means nothing was skipped: both sides reach it by not caching
    levels = sorted({p for p, _ in front_peer if p < 100.0})
    dominated = [lvl for lvl in levels if best_at(front_ours, lvl) <= best_at(front_peer, lvl)]
    return {
        "best_at_30dB": None if best is None else {k: best[k] for k in ("name", "speedup", "psnr", "ssim", "adherence")},
        "goal_3x_at_30dB": bool(best and best["speedup"] >= 3.0),
        "peer_psnr_levels_where_vidaccel_not_faster": dominated,
        "goal_faster_than_peers_at_every_psnr": not dominated,
        "front_vidaccel": front_ours,
        "front_peers": front_peer,
    }


#: Rows of the RESULTS.md table: the presets (their call schedules), the fastest >= 30 dB and the best peers.
PRESET_ROWS = {"call:2/w3/f0": "preset `quality`", "call:3/w3/f0": "preset `balanced`", "call:5/w3/f0": "preset `fast`"}


def record_figures(data: dict) -> None:
    """Put the current caching table (from a bench.json) into figures.json, RESULTS.md's source."""
    from figures import record

    rows, setup = data["rows"], data["setup"]
    goals = setup["goals"]
    best = goals["best_at_30dB"]
    keep = {"baseline", *PRESET_ROWS, best["name"] if best else ""}
    peers = [r for r in rows if r["kind"] == "peer" and isinstance(r["psnr"], (int, float)) and r["psnr"] >= 30]
    by_peer: dict[str, dict] = {}
    for r in peers:  # the fastest setting of each peer that keeps >= 30 dB
        family = r["name"].split(":")[0]
        if family not in by_peer or r["speedup"] > by_peer[family]["speedup"]:
            by_peer[family] = r
    keep |= {r["name"] for r in by_peer.values()}

    def fmt(r):
        psnr = r["psnr"]
        label = PRESET_ROWS.get(r["name"], r["name"])
        if best and r["name"] == best["name"]:
            label += " (fastest at >= 30 dB)"
        if label != r["name"] and r["name"] in PRESET_ROWS:
            label += f" ({r['name']})"
        return [label, r["kind"], f"{r['speedup']:.2f}×", f"{r['speedup_e2e']:.2f}×",
                "identical" if not isinstance(psnr, (int, float)) or psnr == float("inf") else f"{psnr:.2f}",
                f"{r['ssim']:.4f}", "—" if r.get("adherence") is None else f"{r['adherence']:.3f}"]

    table = [fmt(r) for r in rows if r["name"] in keep]
    fast = next(r for r in rows if r["name"] == "call:5/w3/f0")
    record("caching", title="Feature caching", command=setup.get("command", "python benchmarks/caching.py"),
           columns=["config", "kind", "speed-up (denoise)", "speed-up (end to end)", "PSNR dB", "SSIM", "adherence"],
           rows=table, machine=setup.get("machine"), date=setup.get("date"),
           model=f"embedded {setup.get('model')}, {setup['call_kwargs'].get('num_inference_steps')} steps, "
                 f"{len(setup['prompts'])} prompts, seeds {setup['seeds']} (full table: "
                 "benchmarks/results/caching/bench.md)",
           notes=[f"Goal >= 3× at PSNR >= 30 dB (adherence within 0.02): {'met' if goals['goal_3x_at_30dB'] else 'missed'}"
                  + (f" ({best['name']}, {best['speedup']:.2f}× at {best['psnr']:.2f} dB)." if best else "."),
                  "Goal faster than the best peer at every PSNR level: "
                  + ("met." if goals["goal_faster_than_peers_at_every_psnr"] else
                     f"missed at {goals['peer_psnr_levels_where_vidaccel_not_faster']} dB."),
                  "Names read policy:interval/warm-up calls/final steps (interval+g: gaps growing by g after each computed call); peers: the fastest setting of each at >= 30 dB."],
           figures={"best": f"{best['speedup']:.2f}× at {best['psnr']:.1f} dB" if best else "none at >= 30 dB",
                    "fast": f"{fast['speedup']:.2f}× at {fast['psnr']:.1f} dB"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", default=None, metavar="REGEX", help="run only the configurations whose name matches")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "caching"))
    ap.add_argument("--record-only", action="store_true",
                    help="only regenerate the figures.json table from the existing --out/bench.json")
    args = ap.parse_args()
    if args.record_only:
        with open(os.path.join(args.out, "bench.json")) as f:
            record_figures(json.load(f))
        return

    from vidaccel.models import EMBEDDED_DEFAULTS

    pipe = vidaccel.load_pipeline(args.model)
    # a folder holding a (re)trained shapes model runs at the embedded model's settings
    kwargs = dict(pipe.vidaccel_model["defaults"] or EMBEDDED_DEFAULTS["shapes-t2v"])
    if args.steps:
        kwargs["num_inference_steps"] = args.steps
    prompts = PROMPTS[:2] if args.quick else PROMPTS
    configs = vidaccel_configs(args.quick) + bench_configs_from_names(peer_names(args.quick))
    if args.only:
        pattern = re.compile(args.only)
        configs = [c for c in configs if pattern.search(c.name)]
        if not configs:
            ap.error(f"--only {args.only!r} matches no configuration")
    start = time.time()
    report = run_benchmark(pipe, configs, prompts=prompts, seeds=[100], repeats=args.repeats, call_kwargs=kwargs,
                           out_dir=None)
    report.setup.update(title=f"feature caching, {pipe.vidaccel_model['name']}, {kwargs.get('num_inference_steps')} steps",
                        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
                                f"{torch.get_num_threads()}",
                        date=time.strftime("%Y-%m-%d"), wall_s=round(time.time() - start, 1),
                        command="python " + " ".join(sys.argv))
    goals = check_goals(report)
    report.setup["goals"] = goals
    report.save(args.out)
    print(report.markdown())
    print(json.dumps({k: v for k, v in goals.items() if not k.startswith("front")}, indent=2))
    print(f"wrote {args.out}/bench.json, bench.md, bench.png ({report.setup['wall_s']} s)")
    if not args.quick and not args.only:
        with open(os.path.join(args.out, "bench.json")) as f:
            record_figures(json.load(f))


if __name__ == "__main__":
    main()
