"""Speed and fidelity of presets and peers against the baseline, interleaved, in one process.

    python examples/benchmark.py --config fbc:0.1 --config magcache --out bench_out
(the same as `vidaccel bench ...`)
"""

import argparse

import vidaccel
from vidaccel.bench import bench_configs_from_names, run_benchmark

parser = argparse.ArgumentParser()
parser.add_argument("--config", action="append", default=None)
parser.add_argument("--steps", type=int, default=None)
parser.add_argument("--out", default="bench_out")
args = parser.parse_args()

pipe = vidaccel.load_pipeline("embedded")
kwargs = dict(pipe.vidaccel_model["defaults"])
if args.steps:
    kwargs["num_inference_steps"] = args.steps
configs = bench_configs_from_names(args.config or ["fbc:0.1"])
report = run_benchmark(pipe, configs, prompts=["a red circle moving right on a black background"], call_kwargs=kwargs,
                       out_dir=args.out)
print(report.markdown())
