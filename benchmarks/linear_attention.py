"""Linear-attention benchmarks (LinVideo): scaling against softmax attention, quality in a pipeline, GPU e2e.

Modes (each prints a markdown table and writes JSON to ``--json``):

``scaling``
    Time of one attention computation at several token counts ``n``: SDPA (softmax) against linear attention
    with the ``elu`` map and with the Hedgehog map (feature map included), B=1. Reports ``t(4n) / t(n)``
    (goal: linear ≤ 4.5×, softmax ≈ 16×) and the crossover length where linear attention becomes faster
    than SDPA (log-log interpolation between measured lengths). ``--device cuda`` uses the Triton kernel
    and SDPA's flash backend in bf16 at Wan2.1-1.3B head shapes (12 heads, D=128).
``quality``
    PSNR / SSIM / adherence of the embedded model (``vidaccel.load_pipeline("embedded")``; the tiny
    random-weight Wan model, labelled as such, when its weights are absent) with 25 % and 50 % of the layers
    swapped, before distillation (Hedgehog at its initial value, same layers) and after
    (:func:`vidaccel.accel.linear_attention.linearize`, ``--distill-steps``), through
    ``vidaccel.bench.run_benchmark`` on held-out prompts. Goal at 25 % after distillation: adherence within
    0.05 of the original.
``gpu-e2e``
    CUDA only: a random-weight Wan2.1-1.3B transformer at 720p / 81 frames (latent 21×90×160 → 75,600
    tokens), bf16: one denoising step (two transformer forwards, CFG) with softmax attention everywhere
    against half the layers swapped to linear attention (Hedgehog features, Triton kernel). Goal ≥ 1.6×.
    ``--smoke`` runs the same code with a tiny transformer on CPU.

Examples::

    python benchmarks/linear_attention.py scaling --json /tmp/la_scaling.json
    python benchmarks/linear_attention.py quality --distill-steps 300
    python benchmarks/linear_attention.py scaling --device cuda     # on a GPU machine
    python benchmarks/linear_attention.py gpu-e2e                   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vidaccel.kernels.linear_attention import HedgehogFeatureMap, linear_attention  # noqa: E402

from _common import WAN13_LATENTS, machine, print_table, random_wan13, timeit  # noqa: E402  (benchmarks/)


# -- scaling -------------------------------------------------------------------------------------------
def crossover(lengths, t_soft, t_lin) -> float | None:
    """Token count where linear attention's time meets softmax's (log-log interpolation), or None."""
    pts = list(zip(lengths, t_soft, t_lin))
    if pts and pts[0][2] <= pts[0][1]:
        return float(pts[0][0])  # already faster at the smallest length measured
    for (n0, s0, l0), (n1, s1, l1) in zip(pts, pts[1:]):
        if l0 > s0 and l1 <= s1:
            d0, d1 = math.log(l0 / s0), math.log(l1 / s1)
            x = math.log(n0) + (math.log(n1) - math.log(n0)) * d0 / (d0 - d1)
            return float(math.exp(x))
    return None


def scaling(args) -> dict:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("scaling --device cuda needs a CUDA GPU")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    H, D = args.heads, args.head_dim
    lengths = args.lengths or ([4725, 18900, 75600] if device == "cuda" else [256, 512, 1024, 2048, 4096, 8192])
    backend = "auto"
    hh = HedgehogFeatureMap(H, D).to(device)
    rows = []
    for L in lengths:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, L, H, D, device=device, dtype=dtype) for _ in range(3))

        def soft():
            with torch.no_grad():
                return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

        def lin_elu():
            with torch.no_grad():
                return linear_attention(q, k, v, feature_map="elu", backend=backend)

        def lin_hh():
            with torch.no_grad():
                return linear_attention(q, k, v, feature_map=hh, backend=backend)

        row = {"tokens": L}
        for name, fn in (("softmax_s", soft), ("linear_elu_s", lin_elu), ("linear_hedgehog_s", lin_hh)):
            row[name] = timeit(fn, warmup=1, repeats=args.repeats, device=device)
        rows.append(row)
        print(row, flush=True)
    ratios = []
    for r in rows:
        four = next((x for x in rows if x["tokens"] == 4 * r["tokens"]), None)
        if four:
            ratios.append({"n": r["tokens"], "4n": four["tokens"],
                           **{k.replace("_s", "_ratio"): four[k] / r[k] for k in r if k.endswith("_s")}})
    cross = {name: crossover([r["tokens"] for r in rows], [r["softmax_s"] for r in rows], [r[name] for r in rows])
             for name in ("linear_elu_s", "linear_hedgehog_s")}
    print(f"device {device}, {dtype}, B=1, H={H}, D={D}, threads {torch.get_num_threads()}")
    table = print_table(rows, ["tokens", "softmax_s", "linear_elu_s", "linear_hedgehog_s"])
    print()
    ratio_table = print_table(ratios, ["n", "4n", "softmax_ratio", "linear_elu_ratio", "linear_hedgehog_ratio"])
    print(f"crossover (tokens): {cross}")
    return {"mode": "scaling", "device": device, "dtype": str(dtype), "heads": H, "head_dim": D, "rows": rows,
            "ratios": ratios, "crossover": cross, "table": table, "ratio_table": ratio_table}


# -- quality ------------------------------------------------------------------------------------------
TRAIN_PROMPTS = ["a red circle moving right on a black background",
                 "a green triangle moving down on a gray background",
                 "a yellow square moving left on a navy background",
                 "a white circle moving up on a black background",
                 "a red square staying still on a navy background"]
EVAL_PROMPTS = ["a blue square moving up on a gray background",
                "a green circle moving slowly left on a black background",
                "a yellow triangle moving right on a navy background"]


def quality(args) -> dict:
    import vidaccel
    from vidaccel.accel.linear_attention import LinearAttentionConfig, layer_output_error, linearize
    from vidaccel.bench import BenchConfig, run_benchmark

    pipe = vidaccel.load_pipeline("embedded", device="cpu")
    model = pipe.vidaccel_model
    call = dict(model.get("defaults", {}))
    if not model.get("trained"):
        call.update(height=128, width=128, num_frames=17)  # the embedded model's geometry anyway
    if args.steps:
        call["num_inference_steps"] = args.steps
    n_layers = len(vidaccel.family_for(pipe.transformer).blocks(pipe.transformer))
    train_call = dict(call, num_inference_steps=args.train_steps or call.get("num_inference_steps", 25))
    out_dir = args.out or tempfile.mkdtemp(prefix="linattn_")
    configs, distil = [], []
    for frac in args.fractions:
        k = max(1, round(n_layers * frac))
        t0 = time.perf_counter()
        adapter = os.path.join(out_dir, f"linear_{int(frac * 100)}.safetensors")
        result = linearize(pipe, LinearAttentionConfig(layers="auto", num_layers=k), prompts=args.train_prompts,
                           steps=args.distill_steps, output=adapter, call_kwargs=train_call, lr=args.lr,
                           progress=False)
        layers = result.layers["transformer"]
        err_before = layer_output_error(pipe, LinearAttentionConfig(layers=layers), prompts=args.eval_prompts[:1],
                                        call_kwargs=train_call)["transformer"]
        err_after = layer_output_error(pipe, result.config, prompts=args.eval_prompts[:1],
                                       call_kwargs=train_call)["transformer"]
        distil.append(dict(fraction=frac, layers=str(layers), ranking=str(result.ranking["transformer"]),
                           loss_first=result.losses[0] if result.losses else None,
                           loss_last=result.losses[-1] if result.losses else None,
                           layer_err_before=err_before, layer_err_after=err_after,
                           distill_s=time.perf_counter() - t0))
        print(distil[-1], flush=True)
        pct = int(frac * 100)
        configs.append(BenchConfig.from_configs(f"{pct}% before", LinearAttentionConfig(layers=layers)))
        configs.append(BenchConfig.from_configs(f"{pct}% elu", LinearAttentionConfig(layers=layers, feature_map="elu")))
        configs.append(BenchConfig.from_configs(f"{pct}% after", result.config))
    report = run_benchmark(pipe, configs, prompts=args.eval_prompts, seeds=args.seeds, repeats=1, call_kwargs=call,
                           progress=False)
    rows = [dict(config=r["name"], psnr=r["psnr"], ssim=r["ssim"], adherence=r["adherence"], speedup=r["speedup"])
            for r in report.rows]
    base_adh = rows[0]["adherence"]
    for r in rows:
        r["adherence_drop"] = (base_adh - r["adherence"]) if (base_adh is not None and r["adherence"] is not None) \
            else None
    print(f"model: {model.get('name')} (trained: {model.get('trained')}), {n_layers} layers, call {call}")
    dtable = print_table(distil, ["fraction", "layers", "ranking", "loss_first", "loss_last", "layer_err_before",
                                  "layer_err_after", "distill_s"])
    print()
    table = print_table(rows, ["config", "psnr", "ssim", "adherence", "adherence_drop", "speedup"])
    return {"mode": "quality", "model": model.get("name"), "trained": model.get("trained"), "layers": n_layers,
            "call": {k: v for k, v in call.items() if isinstance(v, (int, float, str))},
            "distill_steps": args.distill_steps, "train_prompts": args.train_prompts,
            "eval_prompts": args.eval_prompts, "distillation": distil, "rows": rows, "table": table,
            "distill_table": dtable, "adapters": out_dir}


# -- GPU end to end -----------------------------------------------------------------------------------
def gpu_e2e(args) -> dict:
    import vidaccel
    from vidaccel.accel.linear_attention import LinearAttentionConfig

    smoke = args.smoke
    model, x, text, t, device = random_wan13(smoke=smoke, latent=WAN13_LATENTS["720p"], smoke_layers=4)
    latent, dtype = tuple(x.shape[2:]), x.dtype
    n_layers = len(model.blocks)
    tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)

    def step():  # one denoising step with CFG: two transformer forwards
        with torch.no_grad():
            a = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
            b = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        return a + (a - b)

    base_out = step().float()
    t_base = timeit(step, warmup=1, repeats=args.repeats, device=device)
    rows = [dict(config="softmax (all layers)", swapped=0, step_s=t_base, speedup=1.0, rel_err=0.0)]
    choices = {"half (odd layers)": list(range(1, n_layers, 2)),
               "half (last layers)": list(range(n_layers // 2, n_layers)),
               "quarter (odd of last half)": list(range(n_layers // 2 + 1, n_layers, 2))}
    for name, layers in choices.items():
        for fmap in args.feature_maps:
            vidaccel.apply(model, LinearAttentionConfig(layers=layers, feature_map=fmap))
            try:
                out = step().float()
                ts = timeit(step, warmup=1, repeats=args.repeats, device=device)
            finally:
                vidaccel.remove(model)
            rows.append(dict(config=f"{name}, {fmap}", swapped=len(layers), step_s=ts, speedup=t_base / ts,
                             rel_err=float((out - base_out).norm() / base_out.norm())))
            print(rows[-1], flush=True)
    print(f"Wan2.1-1.3B-shaped random transformer ({n_layers} layers), latent {latent} → {tokens} tokens, {dtype}; "
          f"one CFG step = two forwards")
    table = print_table(rows, ["config", "swapped", "step_s", "speedup", "rel_err"])
    return {"mode": "gpu-e2e", "smoke": smoke, "tokens": tokens, "rows": rows, "table": table}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("scaling")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--lengths", nargs="+", type=int, default=None)
    s.add_argument("--heads", type=int, default=None, help="default: 2 on CPU, 12 on CUDA")
    s.add_argument("--head-dim", type=int, default=128)
    s.add_argument("--repeats", type=int, default=3)
    q = sub.add_parser("quality")
    q.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5])
    q.add_argument("--distill-steps", type=int, default=300)
    q.add_argument("--lr", type=float, default=1e-2)
    q.add_argument("--steps", type=int, default=None, help="denoising steps of the evaluated runs")
    q.add_argument("--train-steps", type=int, default=None, help="denoising steps of the sampled trajectories")
    q.add_argument("--train-prompts", nargs="+", default=TRAIN_PROMPTS)
    q.add_argument("--eval-prompts", nargs="+", default=EVAL_PROMPTS)
    q.add_argument("--seeds", nargs="+", type=int, default=[0])
    q.add_argument("--out", default=None, help="folder for the adapters (default: a temp folder)")
    g = sub.add_parser("gpu-e2e")
    g.add_argument("--smoke", action="store_true")
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--feature-maps", nargs="+", default=["hedgehog", "elu"])
    for sp in (s, q, g):
        sp.add_argument("--json", default=None)
        sp.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CPU is shared)")
        sp.add_argument("--no-record", action="store_true",
                        help="do not update benchmarks/results/figures.json (RESULTS.md's source)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.mode == "scaling" and args.heads is None:
        args.heads = 12 if args.device == "cuda" else 2
    result = {"scaling": scaling, "quality": quality, "gpu-e2e": gpu_e2e}[args.mode](args)
    result["machine"] = machine()
    result["command"] = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
        print(f"wrote {args.json}")
    if args.mode == "quality" and not args.no_record:
        _record_quality(result)


def _record_quality(result: dict) -> None:
    """Update the quality table in figures.json (RESULTS.md and the README are generated from it)."""
    from figures import record

    rows = [[r["config"], "identical" if r["psnr"] == float("inf") else f"{r['psnr']:.2f}", f"{r['ssim']:.3f}",
             "—" if r["adherence"] is None else f"{r['adherence']:.3f}",
             "—" if r["adherence_drop"] is None else f"{r['adherence_drop']:.3f}", f"{r['speedup']:.2f}×"]
            for r in result["rows"]]
    after = {r["config"]: r for r in result["rows"]}
    quarter = after.get("25% after")
    record("linear_attention_quality", title="Linear-attention layer swapping: quality", command=result["command"],
           columns=["config", "PSNR dB", "SSIM", "adherence", "drop", "speed-up (CPU, 320 tokens)"], rows=rows,
           model=f"embedded {result['model']}, {result['layers']} layers, {result['distill_steps']} distillation "
                 f"steps, {len(result['eval_prompts'])} held-out prompts",
           notes=[f"Distillation {d['fraction']:.0%}: layers {d['layers']}, layer error {d['layer_err_before']:.3f} "
                  f"→ {d['layer_err_after']:.3f}" for d in result["distillation"]]
           + ([f"Goal (25 % of layers, adherence drop <= 0.05): {'met' if quarter['adherence_drop'] <= 0.05 else 'missed'}."]
              if quarter and quarter["adherence_drop"] is not None else []),
           figures={"quarter": f"{quarter['psnr']:.1f} dB, adherence drop {quarter['adherence_drop']:.3f}"}
           if quarter and quarter["adherence_drop"] is not None else None)


if __name__ == "__main__":
    main()
