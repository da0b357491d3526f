"""Tune for your prompts: the fastest combination of techniques that keeps PSNR >= 30 dB, then use it.

    python examples/tune.py --minutes 20
"""

import argparse

import torch

import vidaccel
from vidaccel.metrics import psnr

parser = argparse.ArgumentParser()
parser.add_argument("--minutes", type=float, default=20.0)
parser.add_argument("--steps", type=int, default=None)
parser.add_argument("-o", "--output", default="tuned.json")
args = parser.parse_args()

prompts = [
    "a red circle moving right on a black background",
    "a blue square moving up on a gray background",
    "a yellow triangle moving left on a navy background",
    "a white circle moving down on a black background",
]
pipe = vidaccel.load_pipeline("embedded")
kwargs = dict(pipe.vidaccel_model["defaults"])
if args.steps:
    kwargs["num_inference_steps"] = args.steps
# the last third of the prompts (here one) is held out: the winner is checked on it
result = vidaccel.tune(pipe, prompts, budget="psnr=30", time_limit=args.minutes * 60, call_kwargs=kwargs,
                       output=args.output)
print(f"chosen: {result.label}; search prompts {result.search}; held-out prompt {result.holdout}")


def generate(prompt):
    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).frames[0]


prompt = "a green square moving down on a navy background"  # a prompt the tuner never saw
baseline = generate(prompt)
vidaccel.apply(pipe, args.output)  # the same file loads with accel= and `vidaccel generate --preset`
print(f"{args.output} on a new prompt: PSNR {psnr(generate(prompt), baseline):.2f} dB")
vidaccel.remove(pipe)
