"""Way 1 — drop-in pipeline: change only the import line of a diffusers script.

    python examples/dropin_pipeline.py                       # the embedded model, offline
    python examples/dropin_pipeline.py --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --preset balanced
"""

import argparse

import torch

import vidaccel
from vidaccel.pipelines import WanPipeline  # was: from diffusers import WanPipeline
from vidaccel.video import save_video

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="embedded", help="'embedded', a folder, or a hub id")
parser.add_argument("--preset", default="none", choices=vidaccel.available_presets())
parser.add_argument("--steps", type=int, default=None)
parser.add_argument("-o", "--output", default="dropin.mp4")
args = parser.parse_args()

if args.model == "embedded":
    # The embedded model is a diffusers WanPipeline folder shipped in the package.
    pipe = vidaccel.load_pipeline("embedded", accel=args.preset)
    kwargs = dict(pipe.vidaccel_model["defaults"])
else:
    pipe = WanPipeline.from_pretrained(args.model, dtype=torch.bfloat16, accel=args.preset)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = dict(height=480, width=832, num_frames=81)
if args.steps:
    kwargs["num_inference_steps"] = args.steps

video = pipe(prompt="a red circle moving right on a black background", generator=torch.Generator().manual_seed(0),
             **kwargs).frames[0]
save_video(video, args.output)
print(pipe.last_run)
