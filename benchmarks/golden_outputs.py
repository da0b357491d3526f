"""Fingerprints of every technique's output on the embedded models, to prove a refactor changed no number.

Runs the shipped ``shapes-t2v`` model with each technique (through the public API only) and the
``shapes-ar`` long-video pipeline on its KV, recompute and context-reuse paths, and writes one SHA-256 of
the raw output bytes per case. Run it before and after a change that must not move any output, then
compare the two JSON files:

    python benchmarks/golden_outputs.py -o /tmp/before.json      # on the old commit
    python benchmarks/golden_outputs.py -o /tmp/after.json       # on the new one
    python benchmarks/golden_outputs.py --compare /tmp/before.json /tmp/after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT = "a red circle moving right on a black background"
STEPS = 8


def _digest(array) -> str:
    arr = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _cases():
    import vidaccel

    def cache(**kw):
        return [vidaccel.CacheConfig(**kw)]

    return {
        "baseline": [],
        "cache-block": cache(threshold=0.2, policy="block"),
        "cache-step": cache(threshold=0.2, policy="step", forecast_order=1),
        "cache-profiled": cache(threshold=0.2, policy="profiled"),
        "cache-call": cache(threshold=0.2, policy="call", interval=3),
        "cache-cfg": cache(threshold=0.2, policy="block", cfg_interval=2),
        "preset-fast": ["fast"],
        "sliding-window": [vidaccel.SlidingWindowConfig(window=(3, 4, 4), tile=(1, 4, 4), dense_steps=2)],
        "fp8": [vidaccel.QuantConfig(format="fp8")],
        "nvfp4-preset": ["nvfp4"],
        "mixed": [vidaccel.QuantConfig(format="mixed")],
        "linear-elu": [vidaccel.LinearAttentionConfig(layers=[1, 2], feature_map="elu")],
        "linear-hedgehog": [vidaccel.LinearAttentionConfig(layers=[0], feature_map="hedgehog")],
        "cache+window+fp8": [vidaccel.CacheConfig(threshold=0.2), vidaccel.SlidingWindowConfig(window=(3, 4, 4)),
                             vidaccel.QuantConfig(format="fp8")],
    }


def run_t2v() -> dict[str, str]:
    import vidaccel

    pipe = vidaccel.load_pipeline("embedded", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    defaults = dict(pipe.vidaccel_model["defaults"], num_inference_steps=STEPS, output_type="np")
    out = {}
    for name, configs in _cases().items():
        torch.manual_seed(0)
        vidaccel.apply(pipe, *configs)
        try:
            calls = 2 if name == "mixed" else 1  # the first "mixed" call calibrates in full precision
            for _ in range(calls):
                frames = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **defaults).frames[0]
        finally:
            vidaccel.remove(pipe)
        out[f"t2v/{name}"] = _digest(frames)
    frames = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **defaults).frames[0]
    out["t2v/after-remove"] = _digest(frames)
    return out


def run_long() -> dict[str, str]:
    from vidaccel.pipelines import LongVideoPipeline

    pipe = LongVideoPipeline.from_embedded(device="cpu")
    out = {}
    for name, kw in {"kv": {}, "recompute": {"use_kv_cache": False},
                     "reuse": {"reuse_context_attention": True},
                     "sink-ema": {"sink_frames": 1, "ema_decay": 0.9}}.items():
        result = pipe([(0, PROMPT), (12, "a blue square moving up on a gray background")], num_frames=25,
                      schedule_unit="frames", num_inference_steps=4, seed=0, progress=False, **kw)
        out[f"long/{name}"] = _digest(result.frames)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", help="JSON file for the fingerprints")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two fingerprint files")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.load(open(p))["digests"] for p in args.compare)
        bad = sorted(k for k in before if before.get(k) != after.get(k))
        missing = sorted(set(before) ^ set(after))
        for key in sorted(set(before) | set(after)):
            mark = "same" if before.get(key) == after.get(key) else "DIFFERENT"
            print(f"{key:28s} {mark}")
        print(f"{len(before) - len(bad)} of {len(before)} identical; {len(missing)} present in one file only")
        return 1 if bad or missing else 0
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start = time.perf_counter()
    digests = {**run_t2v(), **run_long()}
    record = {"digests": digests, "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
    text = json.dumps(record, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
