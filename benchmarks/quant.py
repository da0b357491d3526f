"""FP8 / NVFP4 quantization benchmark: weight bytes, layer SQNR, video quality, and (on a GPU) speed.

Sections (``--only`` picks some; all run by default):

* ``bytes``   — transformer weight bytes vs bf16 on a Wan2.1-1.3B-config transformer (30 layers, dim 1536,
  ffn 8960, 12 heads) built on the meta device, every tensor counted (skipped layers included); the
  shape-only count is checked against a really quantized full-size block.
* ``sqnr``    — layer-output SQNR on Gaussian weights and activations at Wan2.1-1.3B linear shapes.
* ``quality`` — :func:`vidaccel.bench.run_benchmark` on the embedded trained model when its weights are
  installed (else the tiny random-weight stand-in ``load_pipeline("embedded")`` falls back to, labelled):
  PSNR / SSIM / adherence of fp8, nvfp4 and mixed against the unquantized baseline.
* ``gemm``    — GPU only: GEMM time at M = 32,760, K = 1536, N ∈ {1536, 8960} for bf16 ``F.linear``, FP8
  (``torch._scaled_mm`` + vidaccel's per-token quantization kernel; and vidaccel's Triton FP8 GEMM) and
  NVFP4 W4A16 (vidaccel's fused Triton kernel; and its dequantize-then-cuBLAS path, the default at this M).
* ``e2e``     — GPU only: one transformer forward of a random-weight Wan2.1-1.3B at 480p (832×480, 81
  frames → 32,760 tokens) in bf16 vs fp8 / nvfp4.

Usage::

    python benchmarks/quant.py                      # everything this machine can run
    python benchmarks/quant.py --only gemm e2e      # on a GPU machine
    python benchmarks/quant.py --out /tmp/quant     # JSON + markdown written there

Prints markdown tables and writes ``quant.json`` (and ``quality/`` from run_benchmark) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vidaccel.accel.quantization import QuantConfig, estimate_weight_bytes, weight_bytes  # noqa: E402
from vidaccel.accel.quantization.layers import plain_linears, quantize_linears, set_child  # noqa: E402
from vidaccel.accel import preset_configs  # noqa: E402

logger = logging.getLogger("benchmarks.quant")

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
GEMM_SHAPES = [(32760, 1536, 1536), (32760, 1536, 8960)]

BYTE_CONFIGS = {
    "fp8": QuantConfig(format="fp8"),
    "nvfp4": QuantConfig(format="nvfp4"),
    "nvfp4 + fragile in fp8": QuantConfig(format="nvfp4", skip_format="fp8"),
    "nvfp4 preset (fragile in fp8, text embedding nvfp4)": preset_configs("nvfp4")[0],
    "mixed (25% fp8)": QuantConfig(format="mixed"),
    "mixed (25% fp8) + fragile in fp8": QuantConfig(format="mixed", skip_format="fp8"),
}


def _meta_wan():
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights(include_buffers=False):
        return WanTransformer3DModel(**WAN_1_3B)


def section_bytes() -> dict:
    """Weight bytes ratios on the meta-device Wan2.1-1.3B transformer."""
    model = _meta_wan().to(torch.bfloat16)
    base = weight_bytes(model)
    rows = {"bf16": {"bytes": base["bytes"], "ratio_vs_bf16": 1.0}}
    names = [n for n, _ in plain_linears(model)]
    for label, cfg in BYTE_CONFIGS.items():
        plan = None
        if cfg.format == "mixed":
            # bytes depend only on how many weights get fp8: a stand-in plan, every 4th block-linear in fp8
            plan = {n: ("fp8" if i % 4 == 0 else "nvfp4") for i, n in enumerate(names)}
        est = estimate_weight_bytes(model, cfg, plan)
        rows[label] = {"bytes": est["bytes"], "ratio_vs_bf16": est["ratio_vs_bf16"]}
    # check the shape-only count against one really quantized full-size block
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    torch.manual_seed(0)
    block = WanTransformerBlock(1536, 8960, 12, qk_norm="rms_norm_across_heads", cross_attn_norm=True,
                                eps=1e-6).to(torch.bfloat16)
    checks = {}
    for fmt in ("fp8", "nvfp4"):
        cfg = QuantConfig(format=fmt, measure_sqnr="off")
        est = estimate_weight_bytes(block, cfg)["bytes"]
        swapped = quantize_linears(block, cfg)
        real = weight_bytes(block)["bytes"]
        checks[fmt] = {"estimated": est, "measured": real, "equal": est == real}
        for name, qmodule in swapped.items():  # put the bf16 layers back for the next format
            set_child(block, name, qmodule.original)
    return {"model": "Wan2.1-1.3B config (meta device, bf16)", "rows": rows, "block_check": checks,
            "bf16_bytes": base["bytes"]}


def _sqnr(ref, out) -> float:
    ref, out = ref.double(), out.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))


def section_sqnr(m: int = 2048) -> dict:
    """Layer-output SQNR at the Wan2.1-1.3B shapes (M tokens subsampled to ``m`` on CPU)."""
    from vidaccel.kernels.fp8 import Fp8Weight, fp8_linear
    from vidaccel.kernels.nvfp4 import NVFP4Weight, nvfp4_linear

    rows = {}
    g = torch.Generator().manual_seed(0)
    for k, n in ((1536, 1536), (1536, 8960), (8960, 1536)):
        x = torch.randn(m, k, generator=g)
        w = torch.randn(n, k, generator=g) * k ** -0.5
        ref = x @ w.t()
        fw, nw = Fp8Weight.from_float(w), NVFP4Weight.from_float(w)
        rows[f"K={k} N={n}"] = {
            "fp8 W8A8": _sqnr(ref, fp8_linear(x, fw)),
            "fp8 W8A16": _sqnr(ref, fp8_linear(x, fw, activations="none")),
            "nvfp4 W4A16": _sqnr(ref, nvfp4_linear(x, nw)),
        }
    return {"tokens": m, "rows": rows}


def section_quality(out_dir: str, steps: int | None, seeds: int) -> dict:
    import vidaccel
    from vidaccel.bench import BenchConfig, run_benchmark

    pipe = vidaccel.load_pipeline("embedded", device="cuda" if torch.cuda.is_available() else "cpu")
    info = dict(getattr(pipe, "vidaccel_model", {}))
    call_kwargs = dict(info.get("defaults", {}))
    if steps is not None:
        call_kwargs["num_inference_steps"] = steps
    prompts = ["a red circle moving right on a black background", "a blue square moving up on a gray background"]

    # mixed: calibrate once on the first prompt's own trajectory, then benchmark with the stored plan
    vidaccel.apply(pipe, QuantConfig(format="mixed"))
    pipe(prompt=prompts[0], generator=torch.Generator().manual_seed(0), output_type="np", **call_kwargs)
    mixed_stats = vidaccel.stats(pipe)["quant"]
    plan = {role: s["plan"] for role, s in mixed_stats.items()}
    vidaccel.remove(pipe)

    configs = [
        BenchConfig.from_configs("fp8", QuantConfig(format="fp8")),
        BenchConfig.from_configs("fp8-w8a16", QuantConfig(format="fp8", activations="none")),
        BenchConfig.from_configs("nvfp4", QuantConfig(format="nvfp4")),
        BenchConfig.from_configs("nvfp4+fp8-fragile", QuantConfig(format="nvfp4", skip_format="fp8")),
        BenchConfig.from_configs("nvfp4-preset", "nvfp4"),  # fragile FP8, text embedding NVFP4: ÷3.51
        # the ÷3.52 variant: time/text MLPs in NVFP4 too, modulation projection FP8 (see the bytes table)
        BenchConfig.from_configs("nvfp4-lean", QuantConfig(format="nvfp4", skip=[r"^proj_out$", r"patch_embed", r"time_proj"],
                                                           skip_format="fp8")),
        BenchConfig.from_configs("mixed", QuantConfig(format="mixed", plan=plan)),
    ]
    report = run_benchmark(pipe, configs, prompts=prompts, seeds=list(range(seeds)), call_kwargs=call_kwargs,
                           out_dir=os.path.join(out_dir, "quality"), progress=False)
    rows = []
    for r in report.rows:
        q = (r.get("stats") or {}).get("quant", {}).get("transformer", {})
        rows.append({k: r.get(k) for k in ("name", "psnr", "ssim", "adherence", "speedup", "denoise_s")}
                    | {"sqnr_db_mean": q.get("sqnr_db_mean"), "sqnr_by_format": q.get("sqnr_db_mean_by_format")})
    mix = next(iter(mixed_stats.values()))
    return {"model": info.get("name"), "trained": info.get("trained"), "call_kwargs": {
        k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str))}, "rows": rows,
        "mixed_counts": mix["counts"], "mixed_fp8_weight_share": mix["fp8_weight_share"],
        "markdown": report.markdown()}


def _cuda_time(fn, iters: int = 20) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def section_gemm() -> dict:
    from vidaccel.kernels.fp8 import Fp8Weight, fp8_linear, quantize_per_token
    from vidaccel.kernels.fp8.wrapper import fp8_gemm
    from vidaccel.kernels.nvfp4 import NVFP4Weight, nvfp4_linear

    dev = torch.device("cuda")
    rows = {}
    for m, k, n in GEMM_SHAPES:
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * k ** -0.5
        fw, nw = Fp8Weight.from_float(w), NVFP4Weight.from_float(w)
        xq, xs = quantize_per_token(x, backend="triton")
        t = {
            "bf16 F.linear": _cuda_time(lambda: torch.nn.functional.linear(x, w)),
            "fp8 scaled_mm + quant": _cuda_time(lambda: fp8_linear(x, fw, backend="scaled_mm")),
            "fp8 scaled_mm only": _cuda_time(lambda: fp8_gemm(xq, xs, fw, out_dtype=torch.bfloat16,
                                                                backend="scaled_mm")),
            "fp8 triton + quant": _cuda_time(lambda: fp8_linear(x, fw, backend="triton")),
            "fp8 per-token quant": _cuda_time(lambda: quantize_per_token(x, backend="triton")),
            "nvfp4 W4A16 triton (fused)": _cuda_time(lambda: nvfp4_linear(x, nw, backend="triton")),
            "nvfp4 dequant + cuBLAS": _cuda_time(lambda: nvfp4_linear(x, nw, backend="dequant")),
        }
        base = t["bf16 F.linear"]
        rows[f"M={m} K={k} N={n}"] = {name: {"ms": ms, "speedup_vs_bf16": base / ms} for name, ms in t.items()}
    return {"device": torch.cuda.get_device_name(0), "rows": rows}


def section_e2e() -> dict:
    """One transformer forward, random-weight Wan2.1-1.3B, 480p 81 frames (21×60×104 latents → 32,760 tokens)."""
    import vidaccel
    from diffusers import WanTransformer3DModel

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = WanTransformer3DModel(**WAN_1_3B).to(dev, torch.bfloat16).eval()
    x = torch.randn(1, 16, 21, 60, 104, device=dev, dtype=torch.bfloat16)
    text = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16)
    t = torch.tensor([500], device=dev)

    def fwd():
        with torch.no_grad():
            return model(hidden_states=x, encoder_hidden_states=text, timestep=t, return_dict=False)[0]

    ref = fwd()
    rows = {"bf16": {"ms": _cuda_time(fwd, iters=5)}}
    for fmt in ("fp8", "nvfp4"):
        vidaccel.apply(model, QuantConfig(format=fmt, keep_original="cpu", measure_sqnr="off"))
        out = fwd()
        rows[fmt] = {"ms": _cuda_time(fwd, iters=5), "sqnr_db_vs_bf16": _sqnr(ref.float(), out.float()),
                     "peak_mib": torch.cuda.max_memory_allocated() / 2**20}
        vidaccel.remove(model)
    for r in rows.values():
        r["speedup_vs_bf16"] = rows["bf16"]["ms"] / r["ms"]
    return {"device": torch.cuda.get_device_name(0), "tokens": 21 * 30 * 52, "rows": rows}


def _md_table(title: str, rows: dict) -> str:
    cols = sorted({c for r in rows.values() for c in r}, key=lambda c: list(next(iter(rows.values()))).index(c)
                  if c in next(iter(rows.values())) else 99)
    lines = [f"### {title}", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = []
        for c in cols:
            v = r.get(c)
            if v is None:
                cells.append("—")
            else:
                cells.append(f"{v:,.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_BYTES_LABELS = {
    "bf16": "bf16",
    "fp8": '`QuantConfig(format="fp8")`',
    "nvfp4": '`QuantConfig(format="nvfp4")` (fragile layers bf16)',
    "nvfp4 + fragile in fp8": '`QuantConfig(format="nvfp4", skip_format="fp8")`',
    "nvfp4 preset (fragile in fp8, text embedding nvfp4)":
        "preset `nvfp4` (fragile layers FP8 weight-only, text embedding NVFP4)",
    "mixed (25% fp8)": '`QuantConfig(format="mixed")`, 25 % of layers FP8',
    "mixed (25% fp8) + fragile in fp8": '`QuantConfig(format="mixed", skip_format="fp8")`, 25 % of layers FP8',
}
_QUALITY_LABELS = {"fp8": "`fp8` (W8A8)", "fp8-w8a16": "`fp8`, W8A16", "nvfp4": '`QuantConfig(format="nvfp4")`',
                   "nvfp4+fp8-fragile": 'nvfp4, `skip_format="fp8"`', "nvfp4-preset": "preset `nvfp4`",
                   "nvfp4-lean": "nvfp4, time/text MLPs NVFP4 too", "mixed": "`mixed`"}


def _record(name: str, r: dict, argv) -> None:
    """Update this section's table in figures.json (RESULTS.md and the README are generated from it)."""
    from figures import record

    command = "python benchmarks/quant.py --only " + name
    if name == "bytes":
        rows = [[_BYTES_LABELS.get(k, k), f"{v['bytes']:,}", f"{v['ratio_vs_bf16']:.3f}"] for k, v in r["rows"].items()]
        ratio = {k: f"÷{v['ratio_vs_bf16']:.2f}" for k, v in r["rows"].items()}
        record("quant_bytes", title="FP8 / NVFP4 quantization: transformer weight bytes, Wan2.1-1.3B config",
               command=command, columns=["config", "bytes", "÷ vs bf16"], rows=rows,
               machine="any (shape arithmetic on the meta device)",
               model="Wan2.1-T2V-1.3B config (30 layers, dim 1536, ffn 8960, 12 heads)",
               notes=["NVFP4 stores 4.5 bits per weight, so a transformer of NVFP4 linears alone cannot pass ÷3.56.",
                      f"The shape-only count equals the bytes of a really quantized full-size block: "
                      f"{all(c['equal'] for c in r['block_check'].values())}."],
               figures={"fp8": ratio["fp8"], "nvfp4": ratio["nvfp4"],
                        "nvfp4_preset": ratio["nvfp4 preset (fragile in fp8, text embedding nvfp4)"]})
    elif name == "sqnr":
        rows = [[shape, *(f"{v:.2f} dB" for v in row.values())] for shape, row in r["rows"].items()]
        cols = ["shape", *next(iter(r["rows"].values())).keys()]
        record("quant_sqnr", title="FP8 / NVFP4 quantization: layer SQNR on Gaussian data", command=command,
               columns=cols, rows=rows, model=f"Wan2.1-1.3B linear shapes, {r['tokens']} tokens")
    elif name == "quality":
        base = next(x for x in r["rows"] if x["name"] == "baseline")
        rows = []
        for x in r["rows"]:
            if x["name"] == "baseline":
                continue
            rows.append([_QUALITY_LABELS.get(x["name"], x["name"]), f"{x['psnr']:.2f}", f"{x['ssim']:.4f}",
                         f"{x['adherence']:.3f} ({x['adherence'] - base['adherence']:+.3f})"])
        by = {x["name"]: x for x in r["rows"]}
        record("quant_quality", title="FP8 / NVFP4 quantization: quality", command=command,
               columns=["config", "PSNR dB", "SSIM", f"adherence (unquantized {base['adherence']:.3f})"], rows=rows,
               model=f"embedded {r['model']}, {r['call_kwargs'].get('num_inference_steps')} steps",
               notes=[f"Every configuration above 30 dB: {all(x['psnr'] > 30 for x in r['rows'])}."],
               figures={"fp8": f"{by['fp8']['psnr']:.1f} dB", "nvfp4_preset": f"{by['nvfp4-preset']['psnr']:.1f} dB"})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, choices=["bytes", "sqnr", "quality", "gemm", "e2e"])
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "vidaccel-bench-quant"))
    parser.add_argument("--steps", type=int, default=None, help="denoising steps for the quality runs")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-record", dest="record", action="store_false",
                        help="do not update benchmarks/results/figures.json (RESULTS.md's source)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    sections = args.only or ["bytes", "sqnr", "quality", "gemm", "e2e"]
    os.makedirs(args.out, exist_ok=True)
    results: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    md = []
    for name in sections:
        if name in ("gemm", "e2e") and not torch.cuda.is_available():
            results[name] = {"skipped": "needs a CUDA GPU"}
            md.append(f"### {name}\n\nskipped: needs a CUDA GPU")
            continue
        start = time.perf_counter()
        if name == "bytes":
            r = section_bytes()
            md.append(_md_table(f"weight bytes, {r['model']}", r["rows"]))
            md.append(f"shape-only count vs a really quantized full-size block: {r['block_check']}")
        elif name == "sqnr":
            r = section_sqnr()
            md.append(_md_table(f"layer SQNR dB, Gaussian, {r['tokens']} tokens", r["rows"]))
        elif name == "quality":
            r = section_quality(args.out, args.steps, args.seeds)
            md.append(f"### quality on {r['model']} (trained: {r['trained']}), {r['call_kwargs']}\n\n"
                      + r["markdown"] + f"\n\nmixed: {r['mixed_counts']}, fp8 weight share "
                      f"{r['mixed_fp8_weight_share']:.2f}")
        elif name == "gemm":
            r = section_gemm()
            for shape, row in r["rows"].items():
                md.append(_md_table(f"GEMM {shape} on {r['device']}", row))
        else:
            r = section_e2e()
            md.append(_md_table(f"Wan2.1-1.3B 480p transformer forward on {r['device']}", r["rows"]))
        r["seconds"] = time.perf_counter() - start
        results[name] = r
        if args.record:
            _record(name, r, argv)
    text = "\n\n".join(md)
    print(text)
    with open(os.path.join(args.out, "quant.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(args.out, "quant.md"), "w") as f:
        f.write(text + "\n")
    return results


if __name__ == "__main__":
    main()
