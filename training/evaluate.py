"""Measure the embedded models against the bars of the shapes world.

``python -m training.evaluate`` prints a table and writes ``benchmarks/results/embedded.md``
and ``benchmarks/results/embedded.json``:

- ground-truth ceiling: :func:`vidaccel.eval.shapes_score` of rendered videos for the 24 held-out
  (prompt, seed) pairs of :func:`vidaccel.models.shapes.heldout_prompts` (seeds never used in
  training), and of the same videos after a VAE round trip;
- ``shapes-t2v``: the same 24 prompts generated with ``EMBEDDED_DEFAULTS["shapes-t2v"]`` and the
  held-out seed as generator seed;
- ``shapes-ar``: per-chunk adherence of ``generate_ar_recompute`` over ``--ar-chunks`` chunks
  (first chunk + extensions) for the first ``--ar-prompts`` held-out prompts; the bar compares the
  last chunk with the first.

``--split validation`` draws other held-out seeds (same prompt cycle, disjoint seeds) for choosing sampler
settings, so the reported held-out figures are not tuned on themselves.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vidaccel.eval import ASPECTS, mean_scores, shapes_score, shapes_score_segments
from vidaccel.models import EMBEDDED_DEFAULTS, EMBEDDED_DIR
from training.ar_reference import chunk_pixel_bounds, generate_ar_recompute, load_shapes_ar
from vidaccel.models.shapes import SHAPES, heldout_prompts, parse_prompt, render_video
from training.train import _video_tensor

logger = logging.getLogger(__name__)
#: ``heldout_prompts(seed=...)`` of each split; "heldout" is the reported one.
SPLITS = {"heldout": 12345, "validation": 2026}
KEYS = ("overall",) + ASPECTS


def _fmt(s: dict) -> str:
    return " | ".join(f"{s[k]:.3f}" for k in KEYS)


def shape_by_prompted_shape(pairs, scores) -> dict[str, float]:
    """Mean ``shape`` score per prompted shape (:data:`~vidaccel.models.shapes.SHAPES`) of single-object
    prompts; NaN for a shape no such prompt names."""
    objs = [parse_prompt(p).objects for p, _ in pairs]
    return {
        shape: float(np.mean(v)) if (v := [sc["shape"] for o, sc in zip(objs, scores) if len(o) == 1 and o[0].shape == shape])
        else float("nan")
        for shape in SHAPES
    }


def evaluate_t2v(folder: Path, pairs, *, overrides: dict | None = None):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    kw = {**EMBEDDED_DEFAULTS["shapes-t2v"], **(overrides or {})}
    scores, times = [], []
    for p, seed in pairs:
        t = time.time()
        out = pipe(p, output_type="np", generator=torch.Generator().manual_seed(seed), **kw).frames[0]
        times.append(time.time() - t)
        scores.append(shapes_score(out, p))
    vae_rt = vae_roundtrip_scores(pipe.vae, pairs, num_frames=kw["num_frames"], height=kw["height"], width=kw["width"])
    return scores, vae_rt, times


def decoded_frames(sample: torch.Tensor) -> np.ndarray:
    """The first video of a VAE decoder output [B, 3, F, H, W] in [-1, 1] as frames [F, H, W, 3] in [0, 1]."""
    return ((sample[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) / 2).numpy()


@torch.no_grad()
def vae_roundtrip(vae, frames_u8: np.ndarray) -> np.ndarray:
    """Frames [F, H, W, 3] in [0, 1] after encoding (posterior mode) and decoding ``frames_u8`` with ``vae``."""
    return decoded_frames(vae.decode(vae.encode(_video_tensor(frames_u8)[None]).latent_dist.mode()).sample)


def vae_roundtrip_scores(vae, pairs, *, num_frames: int = 17, height: int = 128, width: int = 128,
                         half_size_range: tuple[float, float] | None = None) -> list[dict]:
    """Adherence of the ground-truth videos of ``pairs`` after encode + decode by ``vae`` (the decoder's ceiling)."""
    return [
        shapes_score(vae_roundtrip(vae, render_video(p, num_frames=num_frames, height=height, width=width, seed=seed,
                                                half_size_range=half_size_range)), p)
        for p, seed in pairs
    ]


def evaluate_ar(folder: Path, pairs, num_chunks: int, **kw):
    pipe = load_shapes_ar(folder)
    cfg = pipe.causal_config
    bounds = chunk_pixel_bounds(num_chunks, cfg.chunk_frames)
    res, gt_res = [], []
    for p, seed in pairs:
        t = time.time()
        video = generate_ar_recompute(pipe, p, num_chunks, seed=seed, **{**EMBEDDED_DEFAULTS["shapes-ar"], **kw})
        segs = shapes_score_segments(video, p, bounds)
        res.append({"prompt": p, "seed": seed, "chunks": segs, "seconds": time.time() - t})
        gt = render_video(p, num_frames=video.shape[0], seed=seed)
        gt_res.append(shapes_score_segments(gt, p, bounds))
    return res, gt_res, cfg


def split_prompts(split: str, n: int = 24) -> list[tuple[str, int]]:
    """(prompt, seed) pairs of a split (:data:`SPLITS`); the validation seeds never meet the held-out ones."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; choose one of {', '.join(SPLITS)}")
    pairs = heldout_prompts(n, seed=SPLITS[split])
    if split != "heldout":
        reported = {s for _, s in heldout_prompts(max(n, 24), seed=SPLITS["heldout"])}
        out = []
        for p, s in pairs:  # a seed the reported split also draws moves to the next free one; n pairs either way
            while s in reported:
                s += 1
            out.append((p, s))
        pairs = out
    return pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=str(EMBEDDED_DIR), help="folder holding shapes-t2v/ and shapes-ar/")
    ap.add_argument("--n", type=int, default=24, help="held-out prompts for shapes-t2v")
    ap.add_argument("--split", choices=list(SPLITS), default="heldout",
                    help="'validation': other held-out seeds, for choosing sampler settings (default: heldout)")
    ap.add_argument("--ar-prompts", type=int, default=6)
    ap.add_argument("--ar-chunks", type=int, default=9, help="chunks including the first (>= 9 = 8 extensions)")
    ap.add_argument("--guidance", type=float, default=None, help="override guidance_scale (t2v and ar)")
    ap.add_argument("--steps", type=int, default=None, help="override num_inference_steps (t2v)")
    ap.add_argument("--skip-ar", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/embedded.md", help="markdown report ('' to skip)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(2)
    models = Path(args.models)
    pairs = split_prompts(args.split, args.n)
    over = {}
    if args.guidance is not None:
        over["guidance_scale"] = args.guidance
    if args.steps is not None:
        over["num_inference_steps"] = args.steps

    gt = [shapes_score(render_video(p, num_frames=17, seed=s), p) for p, s in pairs]
    gt_m = mean_scores(gt)
    t2v, vae_rt, times = evaluate_t2v(models / "shapes-t2v", pairs, overrides=over)
    t2v_m, vae_m = mean_scores(t2v), mean_scores(vae_rt)
    lines = [
        f"# Embedded shapes models: adherence ({_dt.date.today().isoformat()})",
        "",
        f"Command: `python -m training.evaluate{' ' + ' '.join(argv) if argv else ''}`; "
        f"machine: {platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads.",
        "",
        f"shapes-t2v settings: {json.dumps({**EMBEDDED_DEFAULTS['shapes-t2v'], **over})}",
        "",
        f"## shapes-t2v on {len(pairs)} prompts of the core form ({args.split} split; held-out seeds)",
        "",
        "| videos | overall | color | shape | motion | background |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| ground truth (ceiling) | {_fmt(gt_m)} |",
        f"| ground truth through the VAE | {_fmt(vae_m)} |",
        f"| shapes-t2v generated | {_fmt(t2v_m)} |",
        "",
        f"Bars: overall >= 0.8, colour >= 0.9, motion >= 0.75. Mean generation time per video (warm, "
        f"{EMBEDDED_DEFAULTS['shapes-t2v']['num_inference_steps']} steps, CFG): {np.mean(times):.2f} s.",
        "",
        "Shape score by prompted shape (circle / square / triangle): generated "
        + " / ".join(f"{v:.3f}" for v in shape_by_prompted_shape(pairs, t2v).values())
        + "; ground truth through the VAE "
        + " / ".join(f"{v:.3f}" for v in shape_by_prompted_shape(pairs, vae_rt).values()) + ".",
        "",
        "| prompt | seed | overall | color | shape | motion | background |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {p} | {s} | {_fmt(sc)} |" for (p, s), sc in zip(pairs, t2v)]
    report = {"gt": gt_m, "vae_roundtrip": vae_m, "t2v": t2v_m, "t2v_per_prompt": t2v, "vae_roundtrip_per_prompt": vae_rt,
              "prompts": [[p, s] for p, s in pairs], "t2v_seconds": times, "settings": over}
    print("\n".join(lines[:17]))
    if not args.skip_ar:
        ar, ar_gt, cfg = evaluate_ar(models / "shapes-ar", pairs[: args.ar_prompts], args.ar_chunks, **({"guidance_scale": args.guidance} if args.guidance else {}))
        first = mean_scores([r["chunks"][0] for r in ar])
        last = mean_scores([r["chunks"][-1] for r in ar])
        all_chunks = mean_scores([c for r in ar for c in r["chunks"]])
        gt_first = mean_scores([g[0] for g in ar_gt])
        gt_last = mean_scores([g[-1] for g in ar_gt])
        diffs = [abs(r["chunks"][-1]["overall"] - r["chunks"][0]["overall"]) for r in ar]
        n_lat = args.ar_chunks * cfg.chunk_frames
        ar_lines = [
            "",
            f"## shapes-ar: {args.ar_chunks} chunks ({cfg.chunk_frames} latent frames each; {n_lat} latent / "
            f"{1 + 4 * (n_lat - 1)} pixel frames), history window {cfg.window_frames} latent frames, recomputed every step",
            "",
            f"{len(ar)} held-out prompts; settings {json.dumps(EMBEDDED_DEFAULTS['shapes-ar'])}",
            "",
            "| chunks | overall | color | shape | motion | background |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| first chunk | {_fmt(first)} |",
            f"| last chunk | {_fmt(last)} |",
            f"| all chunks | {_fmt(all_chunks)} |",
            f"| ground truth, first chunk | {_fmt(gt_first)} |",
            f"| ground truth, last chunk | {_fmt(gt_last)} |",
            "",
            f"Bar: last chunk within 0.1 of the first (overall). Mean overall last - first: "
            f"{last['overall'] - first['overall']:+.3f}; per prompt |last - first|: "
            f"{', '.join(f'{d:.3f}' for d in diffs)} (max {max(diffs):.3f}). "
            f"Mean time per {args.ar_chunks}-chunk video: {np.mean([r['seconds'] for r in ar]):.1f} s.",
            "",
            "Per-chunk overall (each row one prompt):",
            "",
        ]
        ar_lines += [f"- {r['prompt']} (seed {r['seed']}): " + " ".join(f"{c['overall']:.2f}" for c in r["chunks"]) for r in ar]
        lines += ar_lines
        print("\n".join(ar_lines))
        report.update({"ar_first": first, "ar_last": last, "ar_all": all_chunks, "ar_abs_diffs": diffs, "ar_per_prompt": ar,
                       "ar_gt_first": gt_first, "ar_gt_last": gt_last})
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=float))
        logger.info("wrote %s and %s", out, out.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
