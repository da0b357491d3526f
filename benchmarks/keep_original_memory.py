"""Host memory per ``QuantConfig.keep_original`` option: what waits in memory for ``vidaccel.remove``.

1. Arithmetic on the full Wan2.1-T2V-1.3B config (30 layers, built on the meta device, bf16 weights): bytes of
   the original layers each option keeps in host memory, beside the quantized weights.
2. Measured: the same config cut to ``--layers`` layers, saved as safetensors and loaded in bf16 with
   ``from_pretrained``; in a fresh process per option, resident memory (VmRSS) after loading and after applying
   ``QuantConfig(format=..., keep_original=...)``. On a CPU the "device" is host memory, so ``"device"`` costs
   what ``"cpu"`` does here; on a GPU it moves that cost to device memory.

    python benchmarks/keep_original_memory.py             # fp8, 2 layers measured
    python benchmarks/keep_original_memory.py --format nvfp4 --layers 4
    python benchmarks/keep_original_memory.py --record-only   # figures.json from the existing JSON

Writes benchmarks/results/keep_original_memory.json and .md, and records the table in
benchmarks/results/figures.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import (WAN13_CONFIG, add_record_options, command_line, describe_machine, machine,  # noqa: E402
                     print_table, run_date)

OPTIONS = ("cpu", "device", "disk", "none")
RESULTS = os.path.join(os.path.dirname(__file__), "results")
MIB = 2**20


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def arithmetic(fmt: str, layers: int | None = None) -> dict:
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from vidaccel.accel.quantization import QuantConfig, estimate_weight_bytes
    from vidaccel.accel.quantization.layers import layer_formats

    cfg = dict(WAN13_CONFIG, **({"num_layers": layers} if layers else {}))
    with init_empty_weights():
        model = WanTransformer3DModel(**cfg)
    qc = QuantConfig(format=fmt)
    formats, _ = layer_formats(model, qc, None)
    original = weights = 0
    for name in formats:
        lin = model.get_submodule(name)
        weights += 2 * lin.weight.numel()
        original += 2 * (lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0))
    est = estimate_weight_bytes(model, qc)
    host = {"cpu": original, "device": 0, "disk": 0, "none": 0}
    return {"layers": cfg["num_layers"], "quantized_layers": len(formats), "original_bytes": original,
            "original_weight_bytes": weights, "quantized_weight_bytes": est["bytes"] - est["bf16_bytes"] + weights,
            "model_bf16_bytes": est["bf16_bytes"], "quantized_model_bytes": est["bytes"],
            "host_bytes_kept": host, "device_bytes_kept": {"cpu": 0, "device": original, "disk": 0, "none": 0}}


def settle() -> float:
    """RSS after garbage collection and returning freed heap pages to the OS."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return rss_mib()


def child(option: str, folder: str, fmt: str) -> None:
    torch.set_num_threads(1)
    import vidaccel
    from diffusers import WanTransformer3DModel

    from vidaccel.testing import tiny_wan_pipeline

    warm = tiny_wan_pipeline().transformer  # every module apply / remove imports, loaded before measuring
    vidaccel.apply(warm, vidaccel.QuantConfig(format=fmt, measure_sqnr="off"))
    vidaccel.remove(warm)
    model = WanTransformer3DModel.from_pretrained(folder, dtype=torch.bfloat16)
    before = settle()
    vidaccel.apply(model, vidaccel.QuantConfig(format=fmt, keep_original=option, measure_sqnr="off"))
    after = settle()
    restored = None
    if option != "none":
        vidaccel.remove(model)
        restored = settle()
    print(json.dumps({"option": option, "rss_loaded_mib": before, "rss_applied_mib": after,
                      "rss_after_remove_mib": restored}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", default="fp8", choices=["fp8", "nvfp4"])
    ap.add_argument("--layers", type=int, default=2, help="layers of the measured model")
    ap.add_argument("--child", nargs=2, metavar=("OPTION", "FOLDER"), help=argparse.SUPPRESS)
    add_record_options(ap)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.format)
        return 0
    if args.record_only:
        with open(os.path.join(RESULTS, "keep_original_memory.json")) as f:
            record_figures(json.load(f))
        return 0
    full = arithmetic(args.format)
    small = arithmetic(args.format, args.layers)
    folder = tempfile.mkdtemp()
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    WanTransformer3DModel(**dict(WAN13_CONFIG, num_layers=args.layers)).save_pretrained(folder)  # fp32 file
    measured = []
    for option in OPTIONS:
        out = subprocess.run([sys.executable, __file__, "--format", args.format, "--child", option, folder],
                             capture_output=True, text=True, check=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        m["delta_mib"] = m["rss_applied_mib"] - m["rss_loaded_mib"]
        # expected: + the quantized weights, - the original weights unless kept in memory (the bias is shared);
        # on a CPU "device" is host memory
        freed = 0 if option in ("cpu", "device") else small["original_weight_bytes"]
        m["expected_delta_mib"] = (small["quantized_weight_bytes"] - freed) / MIB
        measured.append(m)
    rows = [{"keep_original": o, "host_GB_full_1.3B": full["host_bytes_kept"][o] / 1e9,
             "device_GB_full_1.3B": full["device_bytes_kept"][o] / 1e9} for o in OPTIONS]
    print(f"Wan2.1-T2V-1.3B (30 layers), {args.format}: {full['quantized_layers']} quantized layers, originals "
          f"{full['original_bytes'] / 1e9:.3f} GB bf16, quantized model {full['quantized_model_bytes'] / 1e9:.3f} GB")
    t1 = print_table(rows, ["keep_original", "host_GB_full_1.3B", "device_GB_full_1.3B"])
    t2 = print_table(measured, ["option", "rss_loaded_mib", "rss_applied_mib", "delta_mib", "expected_delta_mib",
                                "rss_after_remove_mib"])
    result = {"benchmark": "keep_original_memory", "command": command_line(), "machine": machine(),
              "format": args.format,
              "full_wan21_1_3b": full, "measured_model": small, "measured": measured}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "keep_original_memory.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(RESULTS, "keep_original_memory.md"), "w") as f:
        f.write(f"# Host memory per keep_original option\n\n`python benchmarks/keep_original_memory.py --format "
                f"{args.format} --layers {args.layers}` — {result['machine']['date']}, {result['machine']['cpu']} "
                f"({result['machine']['cpu_count']} cores), torch {result['machine']['torch']}.\n\n"
                f"Wan2.1-T2V-1.3B (30 layers, meta-device arithmetic), {args.format}: {full['quantized_layers']} "
                f"quantized layers whose bf16 originals are {full['original_bytes'] / 1e9:.3f} GB; quantized model "
                f"{full['quantized_model_bytes'] / 1e9:.3f} GB (bf16 model {full['model_bf16_bytes'] / 1e9:.3f} GB).\n\n"
                f"{t1}\n\nMeasured (VmRSS, fresh process per option) on the same config with {args.layers} layers, "
                f"loaded from safetensors in bf16; expected delta = quantized weights added, originals freed unless "
                f"kept (on a CPU 'device' is host memory):\n\n{t2}\n")
    if args.record:
        record_figures(result)
    return 0


def record_figures(result: dict) -> None:
    """Put the current table (from a keep_original_memory.json) into figures.json, RESULTS.md's source."""
    from figures import record

    full, small, fmt = result["full_wan21_1_3b"], result["measured_model"], result["format"]
    # JSONs written before the command was stored came from this command line
    command = result.get("command") or (f"python benchmarks/keep_original_memory.py --format {fmt} "
                                        f"--layers {small['layers']}")
    measured = {m["option"]: m for m in result["measured"]}
    rows = []
    for option in OPTIONS:
        m = measured[option]
        back = ("— (remove refuses)" if m["rss_after_remove_mib"] is None
                else f"{m['rss_after_remove_mib'] - m['rss_loaded_mib']:+.1f}")
        rows.append([f'"{option}"', f"{full['host_bytes_kept'][option] / 1e9:.3f}",
                     f"{full['device_bytes_kept'][option] / 1e9:.3f}", f"{m['delta_mib']:+.1f}",
                     f"{m['expected_delta_mib']:+.1f}", back])
    params = full["original_weight_bytes"] / 2
    record("keep_original_memory", title="Quantization: memory kept for remove (keep_original)", command=command,
           machine=describe_machine(result["machine"], threads=False), date=run_date(result["machine"]),
           model=f"Wan2.1-T2V-1.3B config, {fmt}: arithmetic on all {full['layers']} layers; measured on the same "
                 f"config cut to {small['layers']} layers (random weights, bf16 safetensors)",
           columns=["keep_original", "host GB kept, Wan2.1-1.3B", "device GB kept, Wan2.1-1.3B",
                    f"measured RSS change at apply, MiB ({small['layers']} layers)", "expected MiB",
                    "RSS after remove vs loaded, MiB"], rows=rows,
           notes=[f"Wan2.1-1.3B, {fmt}: {full['quantized_layers']} quantized layers whose bf16 originals (weights and "
                  f"biases) are {full['original_bytes'] / 1e9:.3f} GB; quantized model "
                  f"{full['quantized_model_bytes'] / 1e9:.3f} GB, bf16 model {full['model_bf16_bytes'] / 1e9:.3f} GB.",
                  "Measured: resident memory (VmRSS after gc and malloc_trim) in a fresh process per option, after "
                  "loading and after vidaccel.apply; expected = quantized weights added, originals freed unless kept. "
                  "On a CPU the 'device' is host memory, so \"device\" measures what \"cpu\" does; on a GPU it moves "
                  "that cost to device memory.",
                  "\"disk\" keeps nothing in memory and re-reads the originals from the loaded safetensors at remove; "
                  "\"none\" keeps nothing and remove raises."],
           figures={"cpu": f"{full['host_bytes_kept']['cpu'] / 1e9:.1f} GB for Wan2.1-1.3B's {params / 1e9:.2f} B "
                           "linear weights"})


if __name__ == "__main__":
    sys.exit(main())
