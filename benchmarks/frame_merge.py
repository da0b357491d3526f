"""Dynamic latent frame rate (FrameMergeConfig, VGDFR) on the embedded model, beside the caching presets.

For each clip length (default 17 frames = 5 latent frames, and 65 frames = 17 latent frames), runs the baseline,
frame merging at three strengths, the caching presets ``quality`` / ``balanced`` / ``fast``, and ``balanced`` with
merging, interleaved round by round through :func:`vidaccel.bench.run_benchmark` (PSNR / SSIM against the
baseline, shapes adherence, denoising speed-up as the median of per-pair ratios). Prompts mix a still object, a
slow one and normal-speed ones. Also records, per prompt, the adjacent-token-frame motion the technique measured
and the groups it formed.

The machine is shared: speed figures are noisy; they are medians of interleaved baseline / config ratios.

    python benchmarks/frame_merge.py                    # 17 and 65 frames, 4 prompts, 1 round (~30-60 min)
    python benchmarks/frame_merge.py --quick            # 17 frames, 2 prompts, 8 steps
    python benchmarks/frame_merge.py --prompts 2        # 17 and 65 frames, a still and a moving object
    python benchmarks/frame_merge.py --record-only      # figures.json from the existing frame_merge.json

Writes benchmarks/results/frame_merge.{json,md} and records the table in benchmarks/results/figures.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

import vidaccel
from vidaccel import FrameMergeConfig
from vidaccel.bench import BenchConfig, run_benchmark

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (add_record_options, describe_machine, in_results, machine,  # noqa: E402
                     print_table, run_date)

#: Ordered so that ``--prompts 2`` keeps a still and a normal-speed object, ``--prompts 3`` adds a slow one.
PROMPTS = [
    "a red circle staying still on a black background",
    "a yellow triangle moving left on a navy background",
    "a blue square moving slowly up on a gray background",
    "a green square staying still on a navy background",
]
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

#: Merge strengths: (name, config). Merged steps 25 %-50 % of the run unless named otherwise.
STRENGTHS = [
    ("merge light (preset frame-merge: thr 0.35, pairs)", FrameMergeConfig()),
    ("merge medium (all pairs)", FrameMergeConfig(threshold=math.inf, max_group=2, merge_at=0.25, split_at=0.5)),
    ("merge strong (groups of 4, to 75 %)", FrameMergeConfig(threshold=math.inf, max_group=4, merge_at=0.25,
                                                             split_at=0.75)),
]


def bench_configs() -> list[BenchConfig]:
    out = [BenchConfig.from_configs(name, cfg) for name, cfg in STRENGTHS]
    out += [BenchConfig.from_configs(f"cache preset {p}", p) for p in ("quality", "balanced", "fast")]
    out.append(BenchConfig.from_configs("balanced + merge medium", "balanced", STRENGTHS[1][1]))
    return out


def run_length(pipe, frames: int, prompts, steps: int, repeats: int) -> dict:
    call = dict(pipe.vidaccel_model["defaults"], num_inference_steps=steps, num_frames=frames)
    family = vidaccel.family_for(pipe.transformer)
    grid = family.token_grid(pipe.transformer, family.latent_shape(frames, call["height"], call["width"]))
    report = run_benchmark(pipe, bench_configs(), prompts=prompts, repeats=repeats, call_kwargs=call, progress=False)
    rows = []
    for r in report.rows:
        merge = (r.get("stats") or {}).get("frame_merge", {}).get("transformer", {})
        mine = [x for x in report.runs if x["config"] == r["name"]]
        merged = [x for x in mine if (x.get("stats") or {}).get("frame_merge", {}).get("transformer", {}).get(
            "merged_calls")]
        rows.append({"frames": frames, "config": r["name"], "speedup": r["speedup"], "speedup_e2e": r["speedup_e2e"],
                     "denoise_s": r["denoise_s"], "psnr": min(r["psnr"], 100.0),
                     "psnr_min": min(min(x["psnr"], 100.0) for x in mine), "ssim": r["ssim"],
                     "adherence": r["adherence"],
                     "merged_runs": f"{len(merged)}/{len(mine)}" if merge else None,
                     "token_frames": f"{merge['merged_token_frames']}/{merge['token_frames']}" if merge else None})
    base_adh = rows[0]["adherence"]
    for row in rows:
        row["adherence_drop"] = None if base_adh is None or row["adherence"] is None else base_adh - row["adherence"]
    plans = []
    for run in report.runs:
        merge = (run.get("stats") or {}).get("frame_merge", {}).get("transformer")
        if merge and run["round"] == 0:
            plans.append({"config": run["config"], "prompt": run["prompt"], "motion": merge["motion"],
                          "groups": merge["groups"]})
    return {"frames": frames, "grid": list(grid), "rows": rows, "plans": plans,
            "call": {k: v for k, v in call.items() if isinstance(v, (int, float, str))}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="17 frames, 2 prompts, 8 steps, 1 round")
    ap.add_argument("--frames", type=int, nargs="+", default=[17, 65])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), choices=range(1, len(PROMPTS) + 1),
                    metavar=f"1..{len(PROMPTS)}", help="how many of the prompts (still, normal-speed, slow, still)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "frame_merge"))
    add_record_options(ap)
    args = ap.parse_args(argv)
    if args.record_only:
        with open(args.out + ".json") as f:
            out = json.load(f)
        record_figures(out)
        return out
    torch.set_num_threads(args.threads)
    if args.quick:
        args.frames, args.steps, args.repeats = [17], 8, 1
    prompts = PROMPTS[:2] if args.quick else PROMPTS[: args.prompts]
    pipe = vidaccel.load_pipeline("embedded", device="cpu")
    results = []
    for frames in args.frames:
        results.append(run_length(pipe, frames, prompts, args.steps, args.repeats))
        print(f"{frames} frames: token grid {tuple(results[-1]['grid'])}", flush=True)
        print_table(results[-1]["rows"], ["config", "speedup", "speedup_e2e", "psnr", "psnr_min", "ssim", "adherence",
                                          "adherence_drop", "merged_runs"])
    rows = [r for res in results for r in res["rows"]]
    columns = ["frames", "config", "speedup", "speedup_e2e", "psnr", "psnr_min", "ssim", "adherence", "adherence_drop",
               "merged_runs"]
    print()
    table = print_table(rows, columns)
    plan_rows = [dict(frames=res["frames"], **p) for res in results for p in res["plans"]
                 if p["config"] == STRENGTHS[0][0]]
    plan_table = print_table([{**p, "motion": " ".join(f"{m:.2f}" for m in p["motion"] or []),
                               "groups": f"{len(p['groups'] or [])}/{len(p['motion'] or []) + 1}"} for p in plan_rows],
                             ["frames", "prompt", "motion", "groups"])
    out = {"benchmark": "frame_merge", "machine": machine(), "prompts": prompts, "steps": args.steps,
           "repeats": args.repeats, "results": results,
           "strengths": {name: vars(cfg) for name, cfg in STRENGTHS},
           "command": " ".join(["python benchmarks/frame_merge.py", *(argv if argv is not None else sys.argv[1:])]),
           "threads": args.threads}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1, default=str)
    with open(args.out + ".md", "w") as f:
        f.write(f"# Frame merging (VGDFR) on the embedded model\n\n`{out['command'].strip()}` — "
                f"{out['machine']['date']}, {out['machine']['cpu_count']}-core CPU shared with other jobs, torch "
                f"threads {args.threads}; {args.steps} steps, {len(prompts)} prompts, {args.repeats} round(s).\n\n"
                f"Speed-up: median of interleaved baseline / config denoising-time ratios (`speedup_e2e`: whole "
                f"call); noisy on a shared machine. PSNR / SSIM against the baseline, mean over runs (an unchanged run "
                f"counts as 100 dB), `psnr_min` the worst run; `merged_runs`: runs in which frames were merged.\n\n{table}\n\nMotion the light setting measured "
                f"(relative L1 between adjacent token frames' predicted clean latents, at the last full-rate step) and "
                f"the groups it formed / token frames:\n\n{plan_table}\n")
    if args.record and in_results(args.out):
        record_figures(json.loads(json.dumps(out, default=str)))
    return out


def record_figures(out: dict) -> None:
    """Put the current table (from a frame_merge.json) into figures.json, RESULTS.md's source."""
    from figures import record

    def num(v, spec, suffix=""):
        return "—" if v is None else format(v, spec) + suffix

    def db(v):  # an unchanged video counts as 100 dB
        return "identical" if v is not None and v >= 100.0 else num(v, ".1f")

    rows, notes = [], []
    for res in out["results"]:
        for r in res["rows"]:
            rows.append([r["frames"], r["config"], num(r["speedup"], ".2f", "×"), num(r["speedup_e2e"], ".2f", "×"),
                         db(r["psnr"]), db(r["psnr_min"]), num(r["ssim"], ".4f"),
                         num(r["adherence"], ".3f"), num(r["adherence_drop"], "+.3f"), r.get("merged_runs") or "—",
                         r.get("token_frames") or "—"])
        merge_only = [r for r in res["rows"] if r["config"] in dict(STRENGTHS)]
        fastest = max(merge_only, key=lambda r: r["speedup"])
        cache = [r for r in res["rows"] if r["config"].startswith("cache preset")]
        notes.append(f"{res['frames']} frames: the fastest merge setting alone, {fastest['config'].split(' (')[0]}, "
                     f"{fastest['speedup']:.2f}× at {db(fastest['psnr'])} dB (runs merged "
                     f"{fastest['merged_runs']}); the caching presets "
                     + ", ".join(f"{r['config'].split()[-1]} {r['speedup']:.2f}× at {db(r['psnr'])} dB" for r in cache)
                     + ".")
        light = [p for p in res["plans"] if p["config"] == STRENGTHS[0][0]]
        if light:
            groups = ", ".join(f"{len(p['groups'] or [])}/{len(p['motion'] or []) + 1}" for p in light)
            low = min((m for p in light for m in (p["motion"] or [])), default=None)
            notes.append(f"{res['frames']} frames (token grid {tuple(res['grid'])}): the light setting's groups / "
                         f"token frames per prompt: {groups}; smallest adjacent-frame motion measured "
                         f"{num(low, '.2f')} (threshold {out['strengths'][STRENGTHS[0][0]]['threshold']}).")
    n_prompts = len(out["prompts"])
    if n_prompts < len(PROMPTS) or out["steps"] != 25:
        notes.insert(0, f"A shortened run ({n_prompts} of the {len(PROMPTS)} prompts, {out['steps']} steps): the "
                        "default run takes 30-60 minutes on a shared 2-core machine.")
    record("frame_merge", title="Dynamic latent frame rate (frame merging, VGDFR) beside the caching presets",
           command=out["command"].strip(), machine=describe_machine(out["machine"]), date=run_date(out["machine"]),
           model=f"embedded shapes-t2v, {out['steps']} steps, {n_prompts} prompt{'s' if n_prompts > 1 else ''}, "
                 f"{out['repeats']} interleaved round(s)",
           columns=["frames", "config", "speed-up (denoise)", "speed-up (e2e)", "PSNR dB", "worst PSNR dB", "SSIM",
                    "adherence", "adherence drop", "runs merged", "token frames while merged (last run)"], rows=rows,
           notes=["Speed-up: median of interleaved per-pair baseline / config denoising-time ratios (e2e: whole "
                  "call); CPU wall times of the tiny embedded model on a machine shared with other jobs, so noisy, "
                  "and on a GPU the share of time saved by merging differs. PSNR / SSIM against the baseline of the "
                  "same prompt and seed, mean over runs (an unchanged run counts as 100 dB); adherence drop = "
                  "baseline adherence − config adherence.",
                  "Strengths: light = the frame-merge preset (motion threshold 0.35, pairs, merged from 25 % to 50 % "
                  "of the steps); medium = every adjacent pair merged over the same steps; strong = groups of 4 from "
                  "25 % to 75 %. Medium and strong ignore the measured motion (threshold ∞).",
                  "Prompts: " + "; ".join(out["prompts"]) + ".", *notes])


if __name__ == "__main__":
    main()
