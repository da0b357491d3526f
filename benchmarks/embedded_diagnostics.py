"""Diagnostics of the embedded shapes-t2v model: where its adherence is lost (issue 3).

Prints one JSON object per section and writes them all to ``--out``:

- ``vae_per_frame``: per-frame colour / shape of held-out ground truth after a VAE round trip (17 frames,
  centred layout, 24 prompts; and the colour of frames 13-16 per prompted colour) and per-frame colour over
  33 frames (12 prompts, objects anywhere): drift of the causal VAE along time;
- ``latent_drift``: a still object's latent frames vs latent frame 1, relative L2 (should stay ~0);
- ``blur``: shape score of blurred ground truth against the true and the wrong shapes (is the scorer
  blur-fragile?);
- ``sdedit``: held-out ground truth noised to the sampler's sigma at step ``k`` and denoised from there
  (25-step schedule, CFG 4): the step at which the shape is lost;
- ``sampler``: adherence of generated videos under other guidance / flow-shift / step settings;
- ``generated_per_frame``: per-frame colour / shape of the 24 held-out generations (where in the clip
  adherence is lost);
- ``shape_conditioning``: six (colour, direction, background) triples, each generated as a circle, a square
  and a triangle from the same seed: mean silhouette fill ratio and top/bottom width ratio per prompted
  shape, beside the ground truth's (does the model separate the shapes at all?);
- ``object_size``: held-out ground truth and its VAE round trip, rendered with object half-sizes
  (``render_video(half_size_range=...)``) of 11-17, 14-20, 17-23 and 18-24 px: how much of the shape score the
  VAE's 8x spatial compression costs at each object size;
- ``latent_frames``: per latent frame of held-out ground truth through the encoder: std, foreground signal and
  the share of positions over the t2v foreground threshold, with and without ``TrainConfig.frame_balance``.

    python benchmarks/embedded_diagnostics.py                 # ~6 min on 2 CPU cores
    python benchmarks/embedded_diagnostics.py --model DIR     # another shapes-t2v folder
    python benchmarks/embedded_diagnostics.py --sections vae_per_frame,latent_drift
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vidaccel.eval import _analyze, mean_scores, shapes_score, to_frames  # noqa: E402
from vidaccel.models import EMBEDDED_DEFAULTS, embedded_path  # noqa: E402
from training.evaluate import decoded_frames, shape_by_prompted_shape, vae_roundtrip, vae_roundtrip_scores  # noqa: E402
from vidaccel.models.shapes import SHAPES, heldout_prompts, parse_prompt, render_video  # noqa: E402
from training.train import _video_tensor  # noqa: E402

KW = EMBEDDED_DEFAULTS["shapes-t2v"]
SECTIONS = ("vae_per_frame", "latent_drift", "blur", "sdedit", "sampler", "generated_per_frame", "shape_conditioning",
            "object_size", "latent_frames")


def _round(d):
    return {k: round(float(v), 3) for k, v in d.items()}


def _normalised_latent(vae, frames_u8):
    """The posterior-mode latent [1, C, T, h, w] of ``frames_u8``, normalised with the VAE's ``latents_mean/std``
    as the transformer sees it."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return (vae.encode(_video_tensor(frames_u8)[None]).latent_dist.mode() - mean) / std


def _generate(pipe, prompt, seed, **kw):
    return pipe(prompt, output_type="np", generator=torch.Generator().manual_seed(seed), **{**KW, **kw}).frames[0]


def _track(frames, prompt):
    """The first object's per-frame measurements (:class:`vidaccel.eval._Track`)."""
    return _analyze(to_frames(frames), parse_prompt(prompt))[1][0]


def _per_frame_means(tracks, field):
    return np.round(np.mean([getattr(t, field) for t in tracks], 0), 2).tolist()


@torch.no_grad()
def vae_per_frame(vae, pairs):
    tracks, by_color = [], {}
    for p, seed in pairs:
        tracks.append(_track(vae_roundtrip(vae, render_video(p, num_frames=17, seed=seed)), p))
        by_color.setdefault(parse_prompt(p).objects[0].color, []).append(tracks[-1].color[13:].mean())
    long_tracks = [_track(vae_roundtrip(vae, render_video(p, num_frames=33, seed=seed, layout="anywhere")), p)
                   for p, seed in pairs[:12]]
    return {"color_17": _per_frame_means(tracks, "color"), "shape_17": _per_frame_means(tracks, "shape"),
            "color_frames_13_16_by_color": _round({c: np.mean(v) for c, v in by_color.items()}),
            "color_33_anywhere": _per_frame_means(long_tracks, "color")}


@torch.no_grad()
def latent_drift(vae):
    gt = render_video("a red square staying still on a gray background", num_frames=33, seed=5)
    z = vae.encode(_video_tensor(gt)[None]).latent_dist.mode()
    ref = z[:, :, 1]
    return {"rel_l2_vs_latent_frame_1": [round((z[:, :, k] - ref).norm().item() / ref.norm().item(), 3)
                                          for k in range(z.shape[2])]}


def blur(pairs):
    out = {}
    for sigma in (0.0, 1.0, 1.5, 2.0):
        true_s, wrong_s = [], []
        for p, seed in pairs:
            v = render_video(p, num_frames=17, seed=seed).astype(np.float32) / 255
            if sigma:
                v = gaussian_filter(v, (0, sigma, sigma, 0))
            shape = next(s for s in SHAPES if s in p)
            for other in SHAPES:
                score = shapes_score(v, p.replace(shape, other))["shape"]
                (true_s if other == shape else wrong_s).append(score)
        out[f"sigma_{sigma:g}"] = {"true_shape": round(float(np.mean(true_s)), 3),
                                   "wrong_shape": round(float(np.mean(wrong_s)), 3)}
    return out


@torch.no_grad()
def sdedit(pipe, pairs, starts=(24, 22, 20, 15, 10, 5), guidance=4.0, steps=25):
    vae, tr, sch = pipe.vae, pipe.transformer, pipe.scheduler
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    neg = pipe.encode_prompt("", do_classifier_free_guidance=False, max_sequence_length=KW["max_sequence_length"])[0]
    out = {}
    for k in starts:
        scores = []
        for p, seed in pairs:
            z0 = _normalised_latent(vae, render_video(p, num_frames=17, seed=seed))
            sch.set_timesteps(steps)
            sigma = sch.sigmas[k].item()
            x = (1 - sigma) * z0 + sigma * torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
            emb = pipe.encode_prompt(p, do_classifier_free_guidance=False, max_sequence_length=KW["max_sequence_length"])[0]
            text = torch.cat([emb, neg])
            sch._step_index = k  # start the multistep solver mid-schedule
            for t in sch.timesteps[k:]:
                v = tr(hidden_states=torch.cat([x, x]), timestep=t.expand(2), encoder_hidden_states=text,
                       return_dict=False)[0]
                x = sch.step(v[1:] + guidance * (v[:1] - v[1:]), t, x, return_dict=False)[0]
            scores.append(shapes_score(decoded_frames(vae.decode(x * std + mean).sample), p))
        out[f"k{k}_sigma{sigma:.3f}"] = _round(mean_scores(scores))
    return out


@torch.no_grad()
def sampler(pipe, pairs):
    from diffusers import UniPCMultistepScheduler

    base = pipe.scheduler
    out = {}
    for name, kw, shift in (("defaults", {}, None), ("guidance 3", {"guidance_scale": 3.0}, None),
                            ("guidance 5", {"guidance_scale": 5.0}, None), ("40 steps", {"num_inference_steps": 40}, None),
                            ("flow shift 1.5", {}, 1.5), ("flow shift 2", {}, 2.0), ("flow shift 5", {}, 5.0)):
        pipe.scheduler = base if shift is None else UniPCMultistepScheduler.from_config(base.config, flow_shift=shift)
        scores = [shapes_score(_generate(pipe, p, seed, **kw), p) for p, seed in pairs]
        out[name] = _round(mean_scores(scores))
    pipe.scheduler = base
    return out


@torch.no_grad()
def generated_per_frame(pipe, pairs):
    tracks = [_track(_generate(pipe, p, seed), p) for p, seed in pairs]
    return {"color": _per_frame_means(tracks, "color"), "shape": _per_frame_means(tracks, "shape")}


_TRIPLES = (("red", "right", "black"), ("green", "up", "gray"), ("blue", "left", "navy"), ("yellow", "down", "black"),
            ("white", "right", "gray"), ("red", "down", "navy"))


@torch.no_grad()
def shape_conditioning(pipe):
    out = {}
    for source in ("ground truth", "generated"):
        for shape in SHAPES:
            sil, score = [], []
            for i, (color, direction, bg) in enumerate(_TRIPLES):
                p = f"a {color} {shape} moving {direction} on a {bg} background"
                seed = 1000 + i
                if source == "generated":
                    frames = _generate(pipe, p, seed)
                else:
                    frames = render_video(p, num_frames=KW["num_frames"], seed=seed)
                sil.append(np.nanmean(_track(frames, p).silhouette, axis=0))
                score.append(shapes_score(frames, p)["shape"])
            fill, tb = np.mean(sil, 0)
            out[f"{source}: {shape}"] = _round({"fill": fill, "top_bottom": tb, "shape_score": np.mean(score)})
    return out


@torch.no_grad()
def object_size(vae, pairs, ranges=((11.0, 17.0), (14.0, 20.0), (17.0, 23.0), (18.0, 24.0))):
    out = {}
    for r in ranges:
        gt = [shapes_score(render_video(p, num_frames=KW["num_frames"], seed=s, half_size_range=r), p) for p, s in pairs]
        rt = vae_roundtrip_scores(vae, pairs, num_frames=KW["num_frames"], half_size_range=r)
        out[f"half size {r[0]:g}-{r[1]:g} px"] = {
            "ground truth": _round(mean_scores(gt)), "through the VAE": _round(mean_scores(rt)),
            "VAE shape by prompted shape": _round(shape_by_prompted_shape(pairs, rt))}
    return out


@torch.no_grad()
def latent_frames(vae, pairs):
    """Per latent frame of held-out 17-frame clips (normalised as the transformer sees them): std, mean
    foreground signal, the fraction of positions over the t2v foreground threshold 0.3, and what
    ``TrainConfig.frame_balance`` = 1 makes of them (weights, thresholds, fraction over the threshold)."""
    from training.train import _frame_balance

    z = torch.cat([_normalised_latent(vae, render_video(p, num_frames=17, seed=s)) for p, s in pairs])
    d = (z - z.flatten(3).median(-1).values[..., None, None]).abs().mean(1)  # [N, F, H, W]
    w, thr = _frame_balance(z, 1.0)

    def r(t):
        return np.round(np.asarray(t, dtype=float), 3).tolist()

    return {"std": r([z[:, :, f].std() for f in range(z.shape[2])]), "foreground_signal": r(d.mean((0, 2, 3))),
            "over_0.3": r((d > 0.3).float().mean((0, 2, 3))), "balance_1_weights": r(w), "balance_1_thresholds": r(thr),
            "balance_1_over_threshold": r((d > thr.view(1, -1, 1, 1)).float().mean((0, 2, 3)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(embedded_path("shapes-t2v")))
    ap.add_argument("--out", default="benchmarks/results/embedded_diagnostics.json")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = ap.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    if set(sections) - set(SECTIONS):
        ap.error(f"--sections={args.sections!r}: allowed {', '.join(SECTIONS)}")
    from diffusers import WanPipeline

    start = time.time()
    pipe = WanPipeline.from_pretrained(args.model, dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pairs = heldout_prompts()
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args.model,
              "machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
              "command": "python " + " ".join(sys.argv)}
    run = {"vae_per_frame": lambda: vae_per_frame(pipe.vae, pairs), "latent_drift": lambda: latent_drift(pipe.vae),
           "blur": lambda: blur(pairs), "sdedit": lambda: sdedit(pipe, pairs), "sampler": lambda: sampler(pipe, pairs),
           "generated_per_frame": lambda: generated_per_frame(pipe, pairs), "shape_conditioning": lambda: shape_conditioning(pipe),
           "object_size": lambda: object_size(pipe.vae, pairs), "latent_frames": lambda: latent_frames(pipe.vae, pairs)}
    for name in sections:
        result[name] = run[name]()
        print(json.dumps({name: result[name]}), flush=True)
    result["wall_s"] = round(time.time() - start, 1)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
