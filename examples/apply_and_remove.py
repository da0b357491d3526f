"""Way 2 — Python generation scripts: apply techniques to any diffusers Wan/CogVideoX pipeline, measure, remove.

    python examples/apply_and_remove.py
"""

import argparse

import numpy as np
import torch

import vidaccel
from vidaccel.metrics import psnr, ssim

parser = argparse.ArgumentParser()
parser.add_argument("--preset", default=vidaccel.available_presets()[-1], choices=vidaccel.available_presets())
parser.add_argument("--steps", type=int, default=None)
args = parser.parse_args()

pipe = vidaccel.load_pipeline("embedded")
kwargs = dict(pipe.vidaccel_model["defaults"], output_type="np")
if args.steps:
    kwargs["num_inference_steps"] = args.steps
prompt = "a blue square moving up on a gray background"


def generate():
    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **kwargs).frames[0]


baseline = generate()
base_time = pipe.last_run["denoising_s"]

vidaccel.apply(pipe, args.preset)  # a preset name, or technique configs
fast = generate()
print(f"{args.preset}: denoising {base_time:.2f}s -> {pipe.last_run['denoising_s']:.2f}s, "
      f"PSNR {psnr(fast, baseline):.2f} dB, SSIM {ssim(fast, baseline):.4f}")
print("stats:", vidaccel.stats(pipe))

vidaccel.remove(pipe)  # back to the original model, bit for bit
assert np.array_equal(generate(), baseline)
print("removed: output identical to the baseline")
