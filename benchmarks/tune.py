"""``vidaccel tune`` on the embedded model against the built-in presets and the peers, in one command.

1. Tunes the shipped shapes-t2v model with a PSNR budget (default 30 dB) and a time limit (default 20 minutes)
   on 6 tuning prompts (the tuner holds 2 of them out for its own validation).
2. Measures the tuned preset (loaded back from its JSON file), every built-in preset and the peers (diffusers
   FirstBlockCache, MagCache calibrated here, TaylorSeer; cache-dit when installed) on 6 *evaluation* prompts
   the tuner never saw, interleaved in one process (``vidaccel bench``'s harness), same seeds and settings.
3. Checks the goal: the tuned configuration meets the budget on the evaluation prompts and is at least as
   fast as the fastest built-in preset that meets it there.

    python benchmarks/tune.py                                   # the full run (~20 min tuning + ~10 min comparison)
    python benchmarks/tune.py --minutes 4 --quick --steps 10    # a shortened run (fewer prompts and peers)
    python benchmarks/tune.py --name tune_short --record-only --note "..."   # figures.json from <name>.json

Writes benchmarks/results/<name>.json and <name>.md (default name ``tune``), the tuner's files
(tuned.json / .md / .png / .state.json) and the comparison's bench.json / .md / .png in
benchmarks/results/<name>/, and records the comparison in benchmarks/results/figures.json (section ``tune``).
Re-running with the same arguments resumes an interrupted tuning session.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from _common import EMBEDDED_PROMPTS, add_record_options, describe_machine, machine, run_date  # noqa: E402

TUNE_PROMPTS = EMBEDDED_PROMPTS
EVAL_PROMPTS = [
    "a green circle moving left on a gray background",
    "a white square moving right on a navy background",
    "a blue triangle moving down on a black background",
    "a yellow circle moving up on a navy background",
    "a red square moving left on a black background",
    "a white triangle moving right on a gray background",
]
PRESETS = ["quality", "balanced", "fast", "fp8", "nvfp4"]


def peer_names(quick: bool) -> list[str]:
    names = ["fbc:0.2", "magcache:0.24", "taylorseer:4"] if quick else [
        "fbc:0.1", "fbc:0.2", "fbc:0.3", "magcache:0.12", "magcache:0.24", "magcache:0.4",
        "taylorseer:3", "taylorseer:4", "taylorseer:5"]
    try:
        import cache_dit  # noqa: F401

        names += ["cache-dit:0.2"] if quick else ["cache-dit:0.1", "cache-dit:0.2", "cache-dit:0.3"]
    except ImportError:
        print("cache-dit not installed: skipping it (pip install cache-dit)", file=sys.stderr)
    return names


def paired_ratio(runs: list[dict], a: str, b: str) -> float | None:
    """Median over (round, prompt, seed) of b's denoising time / a's: > 1 when a is faster."""
    times = {(r["config"], r["round"], r["prompt"], r["seed"]): r["denoise_s"] for r in runs}
    ratios = [times[(b, *k[1:])] / t for k, t in times.items() if k[0] == a and (b, *k[1:]) in times]
    return statistics.median(ratios) if ratios else None


def same_as_preset(tuned_configs) -> str | None:
    """The built-in preset whose configs equal the tuned ones, if any."""
    from vidaccel.accel import preset_configs

    return next((name for name in PRESETS if list(preset_configs(name)) == list(tuned_configs)), None)


def verdict(rows: list[dict], budget: float, runs: list[dict], tuned_configs) -> dict:
    meets = [r for r in rows[1:] if r["psnr"] >= budget]
    presets = [r for r in meets if r["name"] in PRESETS]
    peers = [r for r in meets if r["kind"] == "peer"]
    tuned = next(r for r in rows if r["name"] == "tuned")
    best_preset = max(presets, key=lambda r: r["speedup"], default=None)
    best_peer = max(peers, key=lambda r: r["speedup"], default=None)

    def brief(r):
        return None if r is None else {k: r[k] for k in ("name", "speedup", "speedup_e2e", "psnr", "ssim", "adherence")}

    tuned_ok = tuned["psnr"] >= budget
    return {
        "budget_psnr": budget,
        "tuned": brief(tuned),
        "tuned_meets_budget": tuned_ok,
        "best_preset_meeting_budget": brief(best_preset),
        "best_peer_meeting_budget": brief(best_peer),
        "goal_tuned_at_least_as_fast_as_best_preset": bool(
            tuned_ok and (best_preset is None or tuned["speedup"] >= best_preset["speedup"])),
        "tuned_vs_best_preset": None if best_preset is None else tuned["speedup"] / best_preset["speedup"],
        "tuned_vs_best_preset_paired": None if best_preset is None else paired_ratio(runs, "tuned", best_preset["name"]),
        "tuned_vs_best_peer": None if best_peer is None else tuned["speedup"] / best_peer["speedup"],
        "tuned_is_preset": same_as_preset(tuned_configs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="tuning time limit")
    ap.add_argument("--budget", type=float, default=30.0, help="PSNR budget in dB")
    ap.add_argument("--quick", action="store_true", help="2 evaluation prompts, one repeat, fewer peers")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's 25)")
    ap.add_argument("--repeats", type=int, default=None, help="comparison rounds (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--name", default="tune", help="results name: benchmarks/results/<name>.json / .md / <name>/")
    ap.add_argument("--skip-tune", action="store_true", help="compare an existing <name>/tuned.json only")
    ap.add_argument("--model", default="embedded", help="embedded (default) or a pipeline folder (to exercise the "
                                                      "script on a tiny model)")
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    add_record_options(ap)
    ap.add_argument("--note", action="append", default=[],
                    help="a note to record beside the figures (what the JSON cannot say, e.g. the machine's load); "
                         "repeatable")
    args = ap.parse_args()
    if args.record_only:
        results = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        with open(os.path.join(results, f"{args.name}.json")) as f:
            record_figures(json.load(f), args.note)
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    import vidaccel
    from vidaccel.bench import BenchConfig, bench_configs_from_names, run_benchmark
    from vidaccel.bench.report import json_safe

    results = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    folder = os.path.join(results, args.name)
    os.makedirs(folder, exist_ok=True)
    preset_path = os.path.join(folder, "tuned.json")
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    start = time.time()
    pipe = vidaccel.load_pipeline(args.model, device="cpu")
    kwargs = dict(pipe.vidaccel_model["defaults"]) or dict(height=32, width=32, num_frames=9, num_inference_steps=8,
                                                           guidance_scale=5.0, max_sequence_length=16)
    if args.steps:
        kwargs["num_inference_steps"] = args.steps
    tune_s = 0.0
    if not args.skip_tune:
        t0 = time.time()
        result = vidaccel.tune(pipe, TUNE_PROMPTS, budget=f"psnr={args.budget:g}", time_limit=args.minutes * 60,
                               seeds=[args.seed], call_kwargs=kwargs, output=preset_path)
        tune_s = time.time() - t0
        print(result.markdown)
    tuned_doc = json.load(open(preset_path))

    eval_prompts = EVAL_PROMPTS[:2] if args.quick else EVAL_PROMPTS
    repeats = args.repeats or (1 if args.quick else 2)
    configs = [BenchConfig.from_configs("tuned", preset_path)]
    configs += [BenchConfig.from_configs(name, name) for name in PRESETS]
    configs += bench_configs_from_names(peer_names(args.quick))
    t0 = time.time()
    report = run_benchmark(pipe, configs, prompts=eval_prompts, seeds=[args.seed], repeats=repeats,
                           call_kwargs=kwargs, out_dir=None)
    compare_s = time.time() - t0
    report.setup.update(title=f"tuned vs presets and peers, shapes-t2v, {kwargs['num_inference_steps']} steps, "
                              f"{len(eval_prompts)} unseen prompts", command=command)
    report.save(os.path.join(folder, "compare"))
    from vidaccel.accel import resolve_accel

    goal = verdict(report.rows, args.budget, report.runs, resolve_accel(preset_path))
    info = machine()
    doc = {
        "command": command, "machine": info, "wall_s": round(time.time() - start, 1), "tune_s": round(tune_s, 1),
        "compare_s": round(compare_s, 1), "call_kwargs": {k: v for k, v in kwargs.items() if not callable(v)},
        "tune_prompts": TUNE_PROMPTS, "eval_prompts": eval_prompts, "seed": args.seed, "repeats": repeats,
        "tuned_preset": {k: tuned_doc.get(k) for k in ("label", "configs", "measured", "search", "budget")},
        "verdict": goal, "rows": report.rows,
    }

    with open(os.path.join(results, f"{args.name}.json"), "w") as f:
        json.dump(json_safe(doc), f, indent=2, default=str)
    tuned = tuned_doc.get("measured") or {}
    lines = [
        f"# vidaccel tune vs presets and peers ({args.name})", "",
        f"`{command}` — {info['date']}, {info['cpu']} ({info['cpu_count']} cores), torch {info['torch']}, "
        f"threads {info['torch_threads']}; wall {doc['wall_s']:.0f} s (tuning {tune_s:.0f} s, comparison "
        f"{compare_s:.0f} s).", "",
        f"Tuned ({args.minutes:g} min, budget PSNR >= {args.budget:g} dB, {len(TUNE_PROMPTS)} tuning prompts of which "
        f"the tuner held out {len(tuned_doc.get('prompts', {}).get('holdout', []))}): **{tuned_doc.get('label')}** "
        f"— tuner's search prompts {json.dumps(_brief(tuned.get('search')))}, tuner's held-out "
        f"{json.dumps(_brief(tuned.get('holdout')))}.", "",
        f"Comparison on {len(eval_prompts)} prompts the tuner never saw, seed {args.seed}, {repeats} interleaved "
        "round(s):", "", report.markdown(), "",
        f"- tuned meets the budget on the unseen prompts: **{goal['tuned_meets_budget']}**",
        f"- fastest preset meeting it: {_name(goal['best_preset_meeting_budget'])}; fastest peer meeting it: "
        f"{_name(goal['best_peer_meeting_budget'])}",
        f"- goal (tuned >= best preset, both meeting the budget): "
        f"**{'met' if goal['goal_tuned_at_least_as_fast_as_best_preset'] else 'not met'}**"
        + (f" (speed-up ratio {goal['tuned_vs_best_preset']:.2f}; paired time ratio "
           f"{goal['tuned_vs_best_preset_paired']:.2f})" if goal["tuned_vs_best_preset"] else "")
        + (f"; the tuned configuration is the `{goal['tuned_is_preset']}` preset itself, so a ratio off 1.00 is "
           "timing noise" if goal["tuned_is_preset"] else ""),
        f"- tuner files: {os.path.relpath(folder)}/tuned.{{json,md,png}}; comparison: "
        f"{os.path.relpath(folder)}/compare/bench.{{json,md,png}}",
    ]
    with open(os.path.join(results, f"{args.name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.record and not args.out and args.model == "embedded":
        with open(os.path.join(results, f"{args.name}.json")) as f:
            record_figures(json.load(f), args.note)


def record_figures(doc: dict, extra_notes: list[str] = ()) -> None:
    """Put the comparison (from a tune.py results JSON) into figures.json, RESULTS.md's source."""
    from figures import record

    def num(v, spec, suffix=""):
        return v if isinstance(v, str) else format(v, spec) + suffix

    rows = []
    for r in doc["rows"]:
        psnr = "identical" if r["name"] == "baseline" else num(r["psnr"], ".2f")
        rows.append([r["name"], r["kind"], num(r["denoise_s"], ".1f"), num(r["speedup"], ".2f", "×"),
                     num(r["speedup_e2e"], ".2f", "×"), psnr, num(r["ssim"], ".4f"), num(r["adherence"], ".3f")])
    goal, tuned = doc["verdict"], doc["tuned_preset"]
    search = tuned.get("search") or {}
    kw = doc["call_kwargs"]
    notes = [f"Tuned: {tuned.get('label')} (budget PSNR ≥ {goal['budget_psnr']:g} dB; {search.get('runs')} runs of "
             f"{search.get('candidates')} candidates in {search.get('elapsed_s', 0) / 60:.1f} of "
             f"{search.get('time_limit_s', 0) / 60:g} minutes, on {len(doc['tune_prompts'])} tuning prompts). "
             f"Compared on {len(doc['eval_prompts'])} prompts the tuner never saw, seed {doc['seed']}, "
             f"{doc['repeats']} interleaved round(s), with every built-in preset and the peers.",
             f"Goal (tuned meets the budget on the unseen prompts and is at least as fast as the fastest preset that "
             f"meets it): {'met' if goal['goal_tuned_at_least_as_fast_as_best_preset'] else 'not met'}; fastest "
             f"preset meeting it: {_name(goal['best_preset_meeting_budget'])}; fastest peer meeting "
             f"it: {_name(goal['best_peer_meeting_budget'])}.",
             "Speed-up: median of interleaved per-pair baseline / config denoising-time ratios (e2e: whole call); "
             "CPU wall times of the tiny embedded model, where FP8 / NVFP4 run no GPU kernel."]
    shortened = kw.get("num_inference_steps") != 25 or len(doc["eval_prompts"]) < len(EVAL_PROMPTS) \
        or search.get("time_limit_s", 0) < 20 * 60
    if shortened:
        notes.append("A shortened run (fewer steps, prompts, rounds or minutes than `python benchmarks/tune.py`): it "
                     "shows that the command runs end to end, not how the tuned configuration compares.")
    notes += list(extra_notes)
    figures = {key: f"{r['name']} {r['speedup']:.2f}× at {r['psnr']:.1f} dB"
               for key, r in (("tuned", goal["tuned"]), ("best_preset", goal["best_preset_meeting_budget"]))
               if r is not None}
    record("tune", title="vidaccel tune against the presets and peers", command=doc["command"],
           machine=describe_machine(doc["machine"]), date=run_date(doc["machine"]),
           model=f"embedded shapes-t2v, {kw.get('num_inference_steps')} steps, {kw.get('num_frames')} frames "
                 f"{kw.get('width')}×{kw.get('height')}",
           columns=["config", "kind", "denoise s", "speed-up (denoise)", "speed-up (e2e)", "PSNR dB", "SSIM",
                    "adherence"], rows=rows, notes=notes, figures=figures)


def _brief(m):
    if not m:
        return None
    return {k: round(m[k], 3) for k in ("speedup", "psnr", "ssim") if isinstance(m.get(k), (int, float))}


def _name(r):
    return "none" if r is None else f"{r['name']} {r['speedup']:.2f}× at {r['psnr']:.2f} dB"


if __name__ == "__main__":
    main()
