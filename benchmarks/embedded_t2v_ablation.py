"""Side-by-side ablation of the embedded model's ``t2v`` stage (issue 3): equal wall-clock budgets, one table.

Every arm trains the shapes-t2v transformer from scratch on the latents of one base work dir (whose stages
``vae`` .. ``vae_dec2`` and ``latents`` are done, e.g. a ``vidaccel train-embedded`` run), with its own
``TrainConfig`` overrides, for the same number of minutes. Arms run two at a time with one thread each, so
both see the same machine load. Each arm is then exported with the base VAE and text encoder and scored with
``python -m training.evaluate --skip-ar`` on the held-out prompts; the table adds the shape score per
prompted shape (the aspect the shipped model misses).

    python benchmarks/embedded_t2v_ablation.py --base ~/.cache/vidaccel/train \\
        --arm base: --arm shift1:train_shift=1.0 --arm patch2:patch=2,batch=8,t2v_steps=900 \\
        --minutes 22 --out benchmarks/results/embedded_t2v_ablation.md

A short run is an early-training comparison: it ranks recipes by how fast they learn, not by where they end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import timeit  # noqa: E402  (benchmarks/)
from training.evaluate import shape_by_prompted_shape  # noqa: E402
from vidaccel.models.shapes import heldout_prompts  # noqa: E402
from training.train import TrainConfig, Trainer, build_transformer, config_value  # noqa: E402

_SHARED = ("latents_short.safetensors", "latents_long.safetensors")  # hard-linked (large, read-only)
_COPIED = ("text", "vae_final")
_DONE = ("vae", "vae_long", "latents", "vae_dec", "vae_dec2")


def parse_arm(text: str) -> tuple[str, dict]:
    """``NAME:FIELD=VALUE,FIELD=VALUE`` -> (name, {field: typed value}); ``NAME:`` is the base recipe."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise ValueError(f"--arm {text!r}: expected NAME:FIELD=VALUE,... (NAME: for the base recipe)")
    over = {}
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq:
            raise ValueError(f"--arm {name}: {item!r} is not FIELD=VALUE")
        over[k] = config_value(k, v)
    return name, over


def base_overrides(base: Path) -> dict:
    """Scalar fields of the base work dir's config.json that differ from the defaults (its VAE recipe)."""
    cfg = json.loads((base / "config.json").read_text())
    default = asdict(TrainConfig())
    skip = {"workdir", "out_dir", "threads", "minutes"}
    return {k: v for k, v in cfg.items() if k in default and k not in skip and v != default[k]}


def prepare(base: Path, work: Path) -> None:
    missing = [s for s in _DONE if not (base / f"{s}.done").is_file()]
    if missing:
        raise ValueError(f"--base {base}: stages {missing} are not done; allowed: a work dir of a finished vae..latents run")
    work.mkdir(parents=True, exist_ok=True)
    for f in _SHARED:
        if not (work / f).exists():
            os.link(base / f, work / f)
    for d in _COPIED:
        if not (work / d).exists():
            shutil.copytree(base / d, work / d)
    for s in _DONE:
        (work / f"{s}.done").write_text("ok\n")


def train_arm(work: Path, over: dict, minutes: float, threads: int) -> float:
    cmd = [sys.executable, "-m", "training.train", "--workdir", str(work), "--out", str(work / "out"),
           "--stages", "t2v", "--threads", str(threads), "--minutes", f"t2v={minutes}"]
    for k, v in over.items():
        cmd += ["--set", f"{k}={v}"]
    t = time.time()
    with open(work / "train.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.time() - t


def step_seconds(over: dict, threads: int = 2, repeats: int = 3) -> float:
    """Median wall time of one t2v training step (forward, backward, AdamW) of the arm's transformer on a random
    batch of 17-frame 128x128 clips (5 x 16 x 16 latents), measured alone in this process."""
    cfg = TrainConfig(**over)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B = cfg.batch
    x = torch.randn(B, 16, cfg.short_frames // 4 + 1, cfg.height // 8, cfg.width // 8)
    text, t = torch.randn(B, cfg.max_sequence_length, cfg.text_dim), torch.rand(B) * 1000

    def step():
        model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0].square().mean().backward()
        opt.step()
        opt.zero_grad()

    return timeit(step, warmup=1, repeats=repeats)


def evaluate_arm(work: Path, over: dict, n: int) -> dict:
    cfg = TrainConfig(workdir=str(work), out_dir=str(work / "out"), **over)
    Trainer(cfg).export_pipeline("t2v", work / "out" / "shapes-t2v")
    subprocess.run([sys.executable, "-m", "training.evaluate", "--models", str(work / "out"), "--skip-ar",
                    "--n", str(n), "--out", str(work / "eval.md")], check=True, stdout=subprocess.DEVNULL)
    return json.loads((work / "eval.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="work dir whose vae..latents stages are done")
    ap.add_argument("--arm", action="append", required=True, metavar="NAME:FIELD=VALUE,...")
    ap.add_argument("--minutes", type=float, default=22.0, help="t2v budget of every arm")
    ap.add_argument("--parallel", type=int, default=2, help="arms trained at once (threads each: 2 // parallel, >= 1)")
    ap.add_argument("--work", default="/tmp/vidaccel_t2v_ablation", help="root of the arms' work dirs")
    ap.add_argument("--n", type=int, default=24, help="held-out prompts")
    ap.add_argument("--out", default="benchmarks/results/embedded_t2v_ablation.md")
    ap.add_argument("--timing-only", action="store_true", help="only time one training step per arm")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.parallel < 1:
        ap.error(f"--minutes={args.minutes}, --parallel={args.parallel}; allowed: minutes > 0, parallel >= 1")
    base = Path(args.base).expanduser()
    common = base_overrides(base)
    arms = [parse_arm(a) for a in args.arm]
    names = [a[0] for a in arms]
    if len(set(names)) != len(names):
        ap.error(f"--arm names must be unique, got {names}")
    threads = max(1, 2 // args.parallel)
    step_s = {name: step_seconds({**common, **over}) for name, over in arms}
    for name, over in arms:
        print(f"{name}: {step_s[name]:.3f} s per training step (2 threads, batch {TrainConfig(**{**common, **over}).batch})",
              flush=True)
    if args.timing_only:
        return 0
    root = Path(args.work)
    for name, _ in arms:
        prepare(base, root / name)
    with ThreadPoolExecutor(args.parallel) as ex:
        secs = list(ex.map(lambda a: train_arm(root / a[0], {**common, **a[1]}, args.minutes, threads), arms))
    pairs = heldout_prompts(args.n)
    rows, vae_rt = [], None
    for (name, over), sec in zip(arms, secs):
        rep = evaluate_arm(root / name, {**common, **over}, args.n)
        info = json.loads((root / name / "info.json").read_text())["t2v"]
        per_shape = shape_by_prompted_shape(pairs, rep["t2v_per_prompt"])
        vae_rt = rep["vae_roundtrip"]
        vae_shape = shape_by_prompted_shape(pairs, rep["vae_roundtrip_per_prompt"])
        rows.append({"arm": name, "settings": over, "step_s": step_s[name], "steps": info["steps"], "final_loss": info["final_loss"],
                     "train_s": sec, "t2v": rep["t2v"], "shape_by_prompted_shape": per_shape})
        print(json.dumps(rows[-1]), flush=True)
    keys = ("overall", "color", "shape", "motion", "background")
    lines = [
        f"# shapes-t2v: t2v-stage ablation, {args.minutes:g} min per arm ({time.strftime('%Y-%m-%d', time.gmtime())})",
        "",
        f"Command: `python benchmarks/embedded_t2v_ablation.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"Base work dir recipe (non-default fields): `{json.dumps(common)}`; {args.parallel} arm(s) at a time, "
        f"{threads} thread(s) each; {len(pairs)} held-out prompts.",
        "",
        "| arm | settings | s/step alone (2 threads) | steps | final loss | overall | colour | shape | motion | background | shape: circle / square / triangle |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        sc = " | ".join(f"{r['t2v'][k]:.3f}" for k in keys)
        ps = " / ".join(f"{v:.3f}" for v in r["shape_by_prompted_shape"].values())
        lines.append(f"| {r['arm']} | `{json.dumps(r['settings'])}` | {r['step_s']:.3f} | {r['steps']} | {r['final_loss']:.4f} | {sc} | {ps} |")
    lines += ["", "Ground truth through the base VAE: " + ", ".join(f"{k} {vae_rt[k]:.3f}" for k in keys)
              + "; shape by prompted shape " + " / ".join(f"{v:.3f}" for v in vae_shape.values()) + "."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "vae_roundtrip": vae_rt, "base": common}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
