"""LoRA on quantized layers: quality of LoRA + FP8 / NVFP4 against the same LoRA on the unquantized model.

On the embedded ``shapes-t2v`` model (CPU, its own dtype: fp32): a random LoRA (peft, rank 8, on every attention
projection, saved with ``save_lora_weights`` and loaded with ``load_lora_weights``) and, per row, PSNR / SSIM of
the frames against the unquantized LoRA model (same prompt, seed). Rows: the LoRA beside each quantized base
(loaded before quantizing; loading it after gives bit-identical frames, checked), fused into the quantized
weights, and the quantized model without LoRA against the plain model for reference.

    python benchmarks/lora_quant.py            # defaults: 2 prompts, the model's 25 steps
    python benchmarks/lora_quant.py --steps 8  # quicker
    python benchmarks/lora_quant.py --record-only   # figures.json from the existing lora_quant.json

Writes benchmarks/results/lora_quant.json and .md, and records the table in benchmarks/results/figures.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import add_record_options, command_line, describe_machine, machine, print_table, run_date  # noqa: E402

import vidaccel  # noqa: E402
from vidaccel import QuantConfig  # noqa: E402
from vidaccel.metrics import psnr, ssim  # noqa: E402

PROMPTS = ["a red circle moving right on a black background", "a blue square moving up on a gray background"]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
RESULTS = os.path.join(os.path.dirname(__file__), "results")


def make_lora(folder: str, rank: int, std: float, seed: int = 0) -> int:
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = vidaccel.load_pipeline("embedded", device="cpu")
    tr = pipe.transformer
    tr.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS), adapter_name="bench")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    sd = get_peft_model_state_dict(tr, adapter_name="bench")
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=sd)
    return len(sd)


def frames(pipe, prompt: str, steps: int) -> tuple[np.ndarray, float]:
    kw = dict(pipe.vidaccel_model["defaults"], num_inference_steps=steps, output_type="np")
    t0 = time.perf_counter()
    out = pipe(prompt, generator=torch.Generator().manual_seed(0), **kw).frames[0]
    return np.asarray(out), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--std", type=float, default=0.05, help="std of the random lora_B entries")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    add_record_options(ap)
    args = ap.parse_args()
    if args.record_only:
        with open(os.path.join(RESULTS, "lora_quant.json")) as f:
            record_figures(json.load(f))
        return 0
    warnings.filterwarnings("ignore")
    logging.getLogger("vidaccel").setLevel(logging.ERROR)
    prompts = PROMPTS[: args.prompts]
    folder = tempfile.mkdtemp()
    n_tensors = make_lora(folder, args.rank, args.std)

    def fresh(lora: bool):
        pipe = vidaccel.load_pipeline("embedded", device="cpu")
        pipe.set_progress_bar_config(disable=True)
        if lora:
            pipe.load_lora_weights(folder, adapter_name="style")
        return pipe

    ref_plain = fresh(False)
    ref_lora = fresh(True)
    base = {p: frames(ref_plain, p, args.steps) for p in prompts}
    lora = {p: frames(ref_lora, p, args.steps) for p in prompts}
    rows = [{"row": "LoRA (unquantized) vs no LoRA", "reference": "no LoRA",
             "psnr_db": np.mean([psnr(lora[p][0], base[p][0]) for p in prompts]),
             "ssim": np.mean([ssim(lora[p][0], base[p][0]) for p in prompts]),
             "seconds_per_video": np.mean([lora[p][1] for p in prompts])}]
    settings = [("fp8", QuantConfig(format="fp8")), ("nvfp4", QuantConfig(format="nvfp4")),
                ("nvfp4 preset", "nvfp4")]
    order_b_identical = {}
    for label, cfg in settings:
        # LoRA beside the quantized GEMM (LoRA loaded first)
        pipe = fresh(True)
        vidaccel.apply(pipe, cfg)
        beside = {p: frames(pipe, p, args.steps) for p in prompts}
        rows.append(_row(f"LoRA + {label} (LoRA branch beside the quantized GEMM)", "LoRA unquantized", beside, lora,
                         prompts))
        pipe.fuse_lora()
        fused = {p: frames(pipe, p, args.steps) for p in prompts}
        rows.append(_row(f"LoRA fused into {label} weights", "LoRA unquantized", fused, lora, prompts))
        # quantization first, LoRA after: must be the same frames
        other = fresh(False)
        vidaccel.apply(other, cfg)
        quant_only = {p: frames(other, p, args.steps) for p in prompts}
        rows.append(_row(f"{label}, no LoRA", "no LoRA", quant_only, base, prompts))
        other.load_lora_weights(folder, adapter_name="style")
        order_b_identical[label] = all(np.array_equal(frames(other, p, args.steps)[0], beside[p][0]) for p in prompts)
    cols = ["row", "reference", "psnr_db", "ssim", "seconds_per_video"]
    table = print_table(rows, cols)
    print("quantize-then-load frames identical to load-then-quantize:", order_b_identical)
    result = {"benchmark": "lora_quant", "command": command_line(), "machine": machine(),
              "model": "embedded shapes-t2v (fp32, CPU)",
              "steps": args.steps, "prompts": prompts, "lora": {"rank": args.rank, "lora_B_std": args.std,
                                                                 "targets": TARGETS, "tensors": n_tensors},
              "rows": rows, "order_b_identical": order_b_identical}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "lora_quant.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    with open(os.path.join(RESULTS, "lora_quant.md"), "w") as f:
        f.write(f"# LoRA + quantization on the embedded model\n\n`python benchmarks/lora_quant.py --steps {args.steps}`"
                f" — {result['machine']['date']}, {result['machine']['cpu']} ({result['machine']['cpu_count']} cores), "
                f"torch {result['machine']['torch']}; PSNR/SSIM of the frames, mean over {len(prompts)} prompts.\n\n"
                f"{table}\n\nQuantize-then-load identical to load-then-quantize: {order_b_identical}\n")
    if args.record:
        record_figures(json.loads(json.dumps(result, default=float)))
    return 0


def record_figures(result: dict) -> None:
    """Put the current table (from a lora_quant.json) into figures.json, RESULTS.md's source."""
    from figures import record

    lora = result["lora"]
    rows = [[r["row"], r["reference"], f"{r['psnr_db']:.1f}", f"{r['ssim']:.4f}", f"{r['seconds_per_video']:.1f}"]
            for r in result["rows"]]
    same = result["order_b_identical"]
    record("lora_quant", title="LoRA on quantized layers", command=result["command"],
           machine=describe_machine(result["machine"]), date=run_date(result["machine"]),
           model=f"{result['model']}, {result['steps']} steps, {len(result['prompts'])} prompts",
           columns=["row", "reference", "PSNR dB", "SSIM", "s / video"], rows=rows,
           notes=[f"A random LoRA (peft, rank {lora['rank']}, lora_B entries N(0, {lora['lora_B_std']}²), on "
                  f"{', '.join(lora['targets'])} of every block), saved with save_lora_weights and loaded with "
                  "load_lora_weights; PSNR / SSIM of the frames against the reference column (same prompt and seed), "
                  "mean over the prompts.",
                  "The LoRA rows measure what quantization adds to a LoRA model; the 'no LoRA' rows, what the same "
                  "quantization costs the plain model, for comparison. The first row is the LoRA's own effect.",
                  "Quantizing first and loading the LoRA after gives frames identical to loading first: "
                  + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()) + ".",
                  "Seconds are CPU wall times of the whole call on a shared machine; the CPU runs none of the GPU "
                  "kernels, so they say nothing about GPU speed."])


def _row(label, reference, got, ref, prompts):
    return {"row": label, "reference": reference,
            "psnr_db": float(np.mean([psnr(got[p][0], ref[p][0]) for p in prompts])),
            "ssim": float(np.mean([ssim(got[p][0], ref[p][0]) for p in prompts])),
            "seconds_per_video": float(np.mean([got[p][1] for p in prompts]))}


if __name__ == "__main__":
    sys.exit(main())
