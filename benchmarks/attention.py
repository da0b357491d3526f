"""Sliding-tile attention benchmarks: kernel speed against dense attention, and quality in a pipeline.

Modes (each prints a markdown table and writes JSON to ``--json``):

``cpu-kernel``
    The best CPU backend (``gather``; optionally compiled ``flex``) against dense SDPA at ≥ 8k tokens for
    densities 0.1–0.5 (B=1, fp32). ``speedup × density`` is the fraction of the ideal speed-up reached.
``quality``
    PSNR / SSIM / adherence of the embedded model (``vidaccel.load_pipeline("embedded")``, 128×128×17 →
    a 5×8×8 token grid) under several windows and ``dense_steps``, through ``vidaccel.bench.run_benchmark``
    (interleaved with the baseline). Falls back to the tiny random-weight Wan model (labelled as such)
    when the embedded weights are absent.
``gpu-kernel``
    CUDA only: the Triton kernel (and compiled flex) against SDPA's flash backend at Wan2.1-1.3B shapes
    (12 heads, D=128, 32,760 tokens = 480p/81 frames and 75,600 tokens = 720p/81 frames), bf16. Goal:
    speed-up ≥ 0.85 / density. ``--smoke`` runs the same code on CPU at toy sizes.
``gpu-e2e``
    CUDA only: one forward of a random-weight Wan2.1-1.3B transformer at 480p / 81 frames (bf16), dense
    against ``SlidingWindowConfig`` windows. Goal ≥ 1.8×. ``--smoke`` runs a tiny transformer on CPU.

Examples::

    python benchmarks/attention.py cpu-kernel --json /tmp/attn_cpu.json
    python benchmarks/attention.py quality --steps 25
    python benchmarks/attention.py gpu-kernel          # on a GPU machine
    python benchmarks/attention.py gpu-e2e             # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

import torch

from vidaccel.kernels.attention import (
    default_tile,
    flash_attention,
    sliding_tile_attention,
    sliding_tile_density,
    tile_plan,
)

from _common import WAN13_LATENTS, machine, print_table, random_wan13, timeit  # noqa: E402  (benchmarks/)

# Wan2.1-1.3B token grids (patch 1×2×2, VAE 4×8×8): 81 frames → 21 latent frames.
WAN13_GRIDS = {"480p": (21, 30, 52), "720p": (21, 45, 80)}


def windows_for_densities(grid, tile, targets) -> list[tuple[tuple[int, int, int], float]]:
    """For each target density, a window of whole tiles within ±15% of it (else the closest) that is as
    balanced as possible: the same fraction of the grid in every dimension, i.e. local everywhere."""
    n = [math.ceil(g / t) for g, t in zip(grid, tile)]
    options = {}
    for a in range(1, n[0] + 1):
        for b in range(1, n[1] + 1):
            for c in range(1, n[2] + 1):
                fracs = (a / n[0], b / n[1], c / n[2])
                window = (a * tile[0], b * tile[1], c * tile[2])
                options[window] = (sliding_tile_density(grid, window, tile), max(fracs) / min(fracs))
    out = []
    for target in targets:
        near = [w for w, (d, _) in options.items() if abs(d / target - 1) <= 0.15]
        if near:
            window = min(near, key=lambda w: (options[w][1], abs(options[w][0] - target)))
        else:
            window = min(options, key=lambda w: abs(options[w][0] - target))
        if window not in [w for w, _ in out]:
            out.append((window, options[window][0]))
    return out


def save(path: str | None, payload: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    print(f"wrote {path}")


# -- CPU kernel ------------------------------------------------------------------------------------
def cpu_kernel(args) -> dict:
    torch.manual_seed(0)
    rows = []
    backends = ["gather"] + (["flex"] if args.flex else [])
    if args.flex:
        from vidaccel.kernels.attention import wrapper

        wrapper.FLEX_COMPILE_ON_CPU = True
    for grid in [tuple(map(int, g.split("x"))) for g in args.grids]:
        L = math.prod(grid)
        tile = tuple(args.tile)
        q, k, v = (torch.randn(1, L, args.heads, args.head_dim) for _ in range(3))
        for window, density in windows_for_densities(grid, tile, args.densities):
            for backend in backends:
                fns = {
                    "dense": lambda: flash_attention(q, k, v, backend="torch"),
                    backend: lambda: sliding_tile_attention(q, k, v, grid=grid, window=window, tile=tile,
                                                            backend=backend),
                }
                if backend == "flex":  # compile outside the timing
                    fns[backend]()
                # interleave dense and sparse repeats so machine drift cancels in the ratio
                ratios, td, ts = [], [], []
                for _ in range(args.repeats):
                    td.append(timeit(fns["dense"], warmup=0, repeats=1))
                    ts.append(timeit(fns[backend], warmup=0, repeats=1))
                    ratios.append(td[-1] / ts[-1])
                speedup = statistics.median(ratios)
                row = dict(tokens=L, grid="×".join(map(str, grid)), tile="×".join(map(str, tile)),
                           window="×".join(map(str, window)), density=density, backend=backend,
                           dense_s=statistics.median(td), sparse_s=statistics.median(ts), speedup=speedup,
                           efficiency=speedup * density)
                rows.append(row)
                print(row, flush=True)
    table = print_table(rows, ["tokens", "grid", "tile", "window", "density", "backend", "dense_s", "sparse_s",
                               "speedup", "efficiency"])
    return {"mode": "cpu-kernel", "heads": args.heads, "head_dim": args.head_dim, "dtype": "float32",
            "rows": rows, "table": table}


# -- quality -----------------------------------------------------------------------------------------
def quality(args) -> dict:
    import vidaccel
    from vidaccel.accel.sliding_window import SlidingWindowConfig
    from vidaccel.bench import BenchConfig, run_benchmark

    pipe = vidaccel.load_pipeline("embedded", device="cpu")
    model = pipe.vidaccel_model
    call = dict(model.get("defaults", {}))
    if not model.get("trained"):
        # the random model: use the embedded model's geometry (128×128×17 → 5×8×8 tokens) anyway
        call.update(height=128, width=128, num_frames=17)
    if args.steps:
        call["num_inference_steps"] = args.steps
    steps = call.get("num_inference_steps", 25)
    spec = vidaccel.spec_for(pipe.transformer)
    grid = spec.token_grid(pipe.transformer, spec.latent_shape(call["num_frames"], call["height"], call["width"]))
    tile = tuple(args.tile)
    configs = []
    for w in args.windows:
        window = tuple(map(int, w.split("x")))
        for ds in args.dense_steps:
            ds_abs = round(ds * steps)  # given as a fraction of the steps
            name = f"win {w} ds {ds_abs}"
            configs.append(BenchConfig.from_configs(name, SlidingWindowConfig(window=window, tile=tile,
                                                                              dense_steps=ds_abs)))
    prompts = args.prompts or ["a red circle moving right on a black background",
                               "a blue square moving up on a gray background"]
    report = run_benchmark(pipe, configs, prompts=prompts, seeds=args.seeds, repeats=1, call_kwargs=call,
                           progress=False)
    rows = []
    for r in report.rows:
        stat = (r.get("stats") or {}).get("sliding_window", {}).get("transformer", {})
        rows.append(dict(config=r["name"], density=stat.get("density", 1.0), psnr=r["psnr"], ssim=r["ssim"],
                         adherence=r["adherence"], speedup=r["speedup"]))
    print(f"model: {model.get('name')} (trained: {model.get('trained')}), token grid {grid}, tile {tile}, "
          f"{steps} steps")
    table = print_table(rows, ["config", "density", "psnr", "ssim", "adherence", "speedup"])
    return {"mode": "quality", "model": model.get("name"), "trained": model.get("trained"), "grid": grid,
            "tile": tile, "call": {k: v for k, v in call.items() if isinstance(v, (int, float, str))},
            "rows": rows, "table": table, "bench": report.rows}


# -- GPU kernel --------------------------------------------------------------------------------------
def gpu_kernel(args) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    smoke = args.smoke
    device = "cpu" if smoke else "cuda"
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu-kernel needs a CUDA GPU (use --smoke to exercise the code on CPU)")
    dtype = torch.float32 if smoke else torch.bfloat16
    heads, D = (2, 64) if smoke else (12, 128)
    grids = {"smoke": (4, 6, 10)} if smoke else WAN13_GRIDS
    backends = ["gather"] if smoke else ["triton", "flex"]
    rows = []
    for label, grid in grids.items():
        L = math.prod(grid)
        tile = tuple(args.tile) if args.tile else ((1, 2, 4) if smoke else default_tile(grid))
        plan = tile_plan(grid, grid, tile, align=1 if smoke else 64)
        padding = plan.length / L - 1
        q, k, v = (torch.randn(1, L, heads, D, device=device, dtype=dtype) for _ in range(3))

        def dense():
            if smoke:
                return flash_attention(q, k, v, backend="torch")
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return flash_attention(q, k, v, backend="torch")

        t_dense = timeit(dense, warmup=2, repeats=args.repeats, device=device)
        if not smoke:
            t_dense_triton = timeit(lambda: flash_attention(q, k, v, backend="triton"), warmup=2,
                                    repeats=args.repeats, device=device)
            rows.append(dict(shape=label, tokens=L, tile="×".join(map(str, tile)), window="dense",
                             density=1.0, backend="triton-dense", time_ms=t_dense_triton * 1e3,
                             speedup=t_dense / t_dense_triton, goal=0.85, padding=0.0))
        ref = dense().float()
        for window, density in windows_for_densities(grid, tile, args.densities):
            for backend in backends:
                fn = lambda: sliding_tile_attention(q, k, v, grid=grid, window=window, tile=tile,  # noqa: E731
                                                    backend=backend)
                t = timeit(fn, warmup=2, repeats=args.repeats, device=device)
                rows.append(dict(shape=label, tokens=L, tile="×".join(map(str, tile)),
                                 window="×".join(map(str, window)), density=density, backend=backend,
                                 time_ms=t * 1e3, speedup=t_dense / t, goal=0.85 / density,
                                 padding=padding, met=t_dense / t >= 0.85 / density))
                print(rows[-1], flush=True)
        del ref
    print(f"dense reference: SDPA {'(math/cpu)' if smoke else 'flash backend'}, {dtype}, heads={heads}, D={D}")
    table = print_table(rows, ["shape", "tokens", "tile", "window", "density", "backend", "time_ms", "speedup",
                               "goal", "padding"])
    return {"mode": "gpu-kernel", "smoke": smoke, "dtype": str(dtype), "heads": heads, "head_dim": D,
            "rows": rows, "table": table}


# -- GPU end to end ----------------------------------------------------------------------------------
def gpu_e2e(args) -> dict:
    import vidaccel
    from vidaccel.accel.sliding_window import SlidingWindowConfig

    smoke = args.smoke
    model, x, text, t, device = random_wan13(smoke=smoke, latent=WAN13_LATENTS["480p"])
    latent = tuple(x.shape[2:])
    dtype = x.dtype
    grid = (latent[0], latent[1] // 2, latent[2] // 2)
    tile = tuple(args.tile) if args.tile else ((1, 2, 4) if smoke else default_tile(grid))

    def forward():
        with torch.no_grad():
            return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

    base_out = forward().float()
    t_dense = timeit(forward, warmup=1, repeats=args.repeats, device=device)
    rows = [dict(config="dense", density=1.0, time_s=t_dense, speedup=1.0, rel_err=0.0)]
    for window, density in windows_for_densities(grid, tile, args.densities):
        vidaccel.apply(model, SlidingWindowConfig(window=window, tile=tile, backend="auto"))
        try:
            out = forward().float()
            ts = timeit(forward, warmup=1, repeats=args.repeats, device=device)
            measured = vidaccel.stats(model)["sliding_window"]["transformer"]["density"]
        finally:
            vidaccel.remove(model)
        rows.append(dict(config=f"window {'×'.join(map(str, window))}", density=measured, time_s=ts,
                         speedup=t_dense / ts,
                         rel_err=float((out - base_out).norm() / base_out.norm())))
        print(rows[-1], flush=True)
    print(f"Wan2.1-1.3B-shaped random transformer, latent {latent} → token grid {grid}, tile {tile}, {dtype}")
    table = print_table(rows, ["config", "density", "time_s", "speedup", "rel_err"])
    return {"mode": "gpu-e2e", "smoke": smoke, "grid": grid, "tile": tile, "rows": rows, "table": table}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("cpu-kernel")
    c.add_argument("--grids", nargs="+", default=["8x32x32", "12x32x32"])
    c.add_argument("--tile", nargs=3, type=int, default=[2, 8, 8])
    c.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.4, 0.5])
    c.add_argument("--heads", type=int, default=2)
    c.add_argument("--head-dim", type=int, default=64)
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--flex", action="store_true", help="also time torch.compile'd flex_attention (slow compile)")
    qa = sub.add_parser("quality")
    qa.add_argument("--windows", nargs="+", default=["1x4x4", "3x4x4", "5x4x4", "3x6x6", "5x6x6"])
    qa.add_argument("--tile", nargs=3, type=int, default=[1, 2, 2])
    qa.add_argument("--dense-steps", nargs="+", type=float, default=[0.0, 0.2],
                    help="dense steps as fractions of the steps")
    qa.add_argument("--steps", type=int, default=None)
    qa.add_argument("--seeds", nargs="+", type=int, default=[0])
    qa.add_argument("--prompts", nargs="*", default=None)
    for name in ("gpu-kernel", "gpu-e2e"):
        g = sub.add_parser(name)
        g.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.5])
        g.add_argument("--tile", nargs=3, type=int, default=None, help="default: default_tile(grid), least padding")
        g.add_argument("--repeats", type=int, default=5 if name == "gpu-kernel" else 3)
        g.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, not speed")
    for s in sub.choices.values():
        s.add_argument("--json", default=None, help="write results here")
        s.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fn = {"cpu-kernel": cpu_kernel, "quality": quality, "gpu-kernel": gpu_kernel, "gpu-e2e": gpu_e2e}[args.mode]
    result = fn(args)
    result["machine"] = machine()
    result["command"] = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    save(args.json, result)


if __name__ == "__main__":
    main()
