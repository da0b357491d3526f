"""Train the embedded ``shapes-t2v`` and ``shapes-ar`` models from scratch on CPU.

One command reproduces the shipped weights (``vidaccel train-embedded --out vidaccel/models/embedded`` or
``python -m training.train --out vidaccel/models/embedded``, from a source checkout; without ``--out`` the
models go to ``./embedded_models``, never into the installed package). Stages, each resumable from checkpoints in the work dir
(default ``~/.cache/vidaccel/train``):

1. ``vae``      -- train a small ``AutoencoderKLWan`` (2x2 patchify + two 2x stages: 8x spatial,
                   4x temporal, z=16) on random 9-frame clips (48x48 crops) of the shapes world;
                   set ``latents_mean/std`` from data.
1b. ``vae_long`` -- encoder and decoder together on 17-frame clips (5 latent frames, a T2V clip's
                   length), so the causal encoder's later latent frames drift less; re-measure
                   ``latents_mean/std``.
2. ``latents``  -- render training clips (17-frame T2V clips and 49-frame long clips, seeds below
                   :data:`~vidaccel.models.shapes.HELDOUT_SEED_BASE`) and encode them once.
2b. ``vae_dec`` -- fine-tune only the VAE decoder (encoder frozen, so the latents stay valid) for
                   sharper reconstructions. Independent of 3-4 (can run alongside them).
2c. ``vae_dec2`` -- a second decoder round over the same clips at a lower, nearly constant learning rate.
3. ``t2v``      -- train a ``WanTransformer3DModel`` (patch (1, 4, 4): 16 tokens per latent frame)
                   with flow matching (x_t = (1 - s) x0 + s eps, target eps - x0, timestep = 1000 s,
                   s = shifted-uniform with shift 3) and 10 % text dropout for CFG. Text embeddings come
                   from the pipeline's own ``encode_prompt`` (frozen, randomly initialised UMT5).
4. ``ar``       -- start from the T2V weights, make self-attention block-causal over chunks of 2
                   latent frames and train with diffusion forcing (independent noise level per chunk,
                   per-token timesteps) on 6-latent-frame windows of the long clips.
5. ``export``   -- save both as ``WanPipeline`` folders (float16 safetensors) + ``causal_config.json``.

Each training stage stops at ``max_steps`` or at its time budget (``--minutes``), whichever first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vidaccel.core.state_io import load_state, save_state
from vidaccel.models import shapes
from vidaccel.pipelines.long_video import CausalConfig, apply_block_causal, remove_block_causal
from vidaccel.models.shapes import (
    HELDOUT_SEED_BASE,
    plan_scene,
    random_prompt,
    render_plan,
    vocabulary_words,
)

logger = logging.getLogger(__name__)

STAGES = ("vae", "vae_long", "latents", "vae_dec", "vae_dec2", "t2v", "ar", "export")
BUDGETED_STAGES = ("vae", "vae_long", "vae_dec", "vae_dec2", "t2v", "ar")  # the stages ``TrainConfig.minutes`` can limit


@dataclass
class TrainConfig:
    """Everything that determines the embedded models. Budgets are wall-clock minutes per stage."""

    workdir: str = str(Path.home() / ".cache" / "vidaccel" / "train")
    out_dir: str = "embedded_models"
    seed: int = 0
    threads: int = 2
    height: int = 128
    width: int = 128
    # data
    layout: str = "centered"  # start positions of the transformer's training clips (shapes.LAYOUTS)
    n_short: int = 2400  # 17-frame clips (T2V)
    n_long: int = 240  # 49-frame clips (AR windows; their 17-frame prefix also feeds T2V)
    short_frames: int = 17
    long_frames: int = 49
    # VAE
    vae_steps: int = 1250
    vae_batch: int = 16
    vae_crop: int = 48
    vae_frames: int = 9  # 3 latent frames: cheap steps for the first stage; vae_long then trains on 17
    vae_lr: float = 1.5e-3
    vae_kl: float = 1e-4
    vae_noise: float = 0.05
    vae_mix: float = 1.0  # weight of the latent-linearity loss: decode(a z1 + (1-a) z2) ~ a x1 + (1-a) x2
    # where the 17-frame stages centre their crops: "first" = the first object's first-frame position; "path" = the
    # middle of its path over the clip. A normal-speed object moves 40 px in 17 frames, so a 48-px crop centred on
    # the first frame loses it in the last frames and the decoder seldom learns them. "path" in the decoder rounds
    # raised the colour of ground truth through the VAE and the generation score; in vae_long it lowered generation
    # (the measurements: vidaccel/models/MODEL_CARD.md).
    vae_long_crop_center: str = "first"
    vae_dec_crop_center: str = "path"  # both decoder rounds
    vae_dec_noise: float = 0.2  # latent noise of the decoder rounds (the vae stages use vae_noise)
    # extra reconstruction weight of the decoder rounds on pixels at object edges: corners and tips are a few pixels
    # each, and the plain loss lets the decoder round them off. It sharpened ground truth through the VAE but lowered
    # the generation score (MODEL_CARD.md), so it is off
    vae_dec_edge_weight: float = 0.0
    # whole-VAE round on 17-frame clips (5 latent frames): the causal encoder trained on 9-frame clips
    # never sees its later latent frames, which drift without this stage
    vae_long_steps: int = 400
    vae_long_lr: float = 5e-4
    vae_long_frames: int = 17
    vae_long_batch: int = 8
    vae_dec_steps: int = 1000  # decoder-only fine-tuning on the frozen encoder's latents
    vae_dec_lr: float = 5e-4
    vae_dec_frames: int = 17
    vae_dec_batch: int = 8
    vae_dec2_steps: int = 407  # a second decoder round at a nearly constant lr (sharper late frames)
    vae_dec2_lr: float = 3e-4
    vae_dec2_lr_span: int = 3000  # its cosine spans this many steps, so over 407 steps the lr stays >= 0.96x
    # transformer (shared by T2V and AR)
    patch: int = 4  # spatial patch of the transformer (tokens per latent frame = (16 / patch) ** 2)
    dim_heads: int = 4
    head_dim: int = 64
    ffn_dim: int = 640
    layers: int = 6
    text_dim: int = 64
    max_sequence_length: int = 32
    t2v_steps: int = 5200
    ar_steps: int = 1000
    batch: int = 16
    # transformer learning rate (the ar stage uses half); 2e-3 reached a lower t2v loss in fewer steps than 1e-3
    lr: float = 2e-3
    ema: float = 0.995
    cfg_dropout: float = 0.1
    long_pad_prob: float = 0.05  # fraction of batches whose text is zero-padded to 512 (robustness)
    train_shift: float = 3.0
    flow_shift: float = 3.0
    # extra loss weight on latent positions that differ from the frame's background (16 traded motion for colour:
    # benchmarks/results/embedded_t2v_ablation_22min.md)
    fg_weight: float = 4.0
    # per-latent-frame balance of the transformer loss. The causal VAE gives its first latent frames (one pixel frame,
    # then the first four) less amplitude than the later ones, so at a shared sigma they are noisier and their
    # foreground passes the fg threshold less often. With balance p > 0 each latent index f weighs (s_ref / s_f) ** p,
    # s_f its std over the training latents and s_ref their median, and the fg threshold scales with s_f / s_ref
    # (off: it moved quality between frames rather than adding any, MODEL_CARD.md)
    frame_balance: float = 0.0
    warmup: int = 50
    # AR
    chunk_frames: int = 2
    window_frames: int = 6
    # budgets (minutes) and checkpoints
    minutes: dict = field(default_factory=lambda: {"vae": 14.0, "vae_long": 7.0, "vae_dec": 10.0, "vae_dec2": 8.0, "t2v": 40.0,
                                                   "ar": 8.0})
    ckpt_minutes: float = 3.0

    def __post_init__(self) -> None:
        for name in ("n_short", "n_long", "vae_steps", "t2v_steps", "ar_steps", "batch", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}; allowed: >= 1")
        for name in ("short_frames", "long_frames"):
            v = getattr(self, name)
            if v % 4 != 1:
                raise ValueError(f"TrainConfig.{name}={v}; allowed: 1 + 4k (Wan VAE temporal factor 4)")
        if self.height % 32 or self.width % 32:
            raise ValueError(f"TrainConfig.height/width={self.height}x{self.width}; allowed: multiples of 32")
        lat_long = (self.long_frames - 1) // 4 + 1
        if self.window_frames > lat_long:
            raise ValueError(f"TrainConfig.window_frames={self.window_frames} > latent frames of long clips {lat_long}")
        if self.frame_balance < 0:
            raise ValueError(f"TrainConfig.frame_balance={self.frame_balance}; allowed: >= 0")
        for name in ("vae_long_crop_center", "vae_dec_crop_center"):
            if getattr(self, name) not in ("path", "first"):
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}; allowed: 'path', 'first'")
        bad = set(self.minutes) - set(BUDGETED_STAGES)
        if bad:
            raise ValueError(f"TrainConfig.minutes has unknown stages {sorted(bad)}; allowed: {', '.join(BUDGETED_STAGES)}")
        CausalConfig(chunk_frames=self.chunk_frames, window_frames=self.window_frames)


# ----------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------


def build_tokenizer():
    """A T5 (Unigram) tokenizer with one piece per vocabulary word and per-character fallback pieces.

    Word pieces score -1, characters -10, so every vocabulary word is exactly one token; other words
    split into characters (or ``<unk>``).
    """
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0) for w in vocabulary_words()]
    pieces += [("\u2581", -5.0)]
    pieces += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_text_encoder(vocab_size: int, text_dim: int, seed: int):
    """A small UMT5 encoder at a seeded random init (kept frozen: distinct words give distinct,
    contextual embeddings and the transformer learns to read them)."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed + 17)
    cfg = UMT5Config(
        vocab_size=vocab_size,
        d_model=text_dim,
        d_kv=16,
        d_ff=4 * text_dim,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
    )
    return UMT5EncoderModel(cfg).eval()


def build_vae():
    from diffusers import AutoencoderKLWan

    # Wan 2.2-style 2x2 pixel patchify, then two 2x down stages (both also 2x in time):
    # 8x spatial, 4x temporal overall; the convs never run at full resolution (5x cheaper on CPU).
    return AutoencoderKLWan(
        base_dim=16,
        z_dim=16,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=8,
        scale_factor_temporal=4,
    )


def build_transformer(cfg: TrainConfig):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, cfg.patch, cfg.patch),
        num_attention_heads=cfg.dim_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=16,
        out_channels=16,
        text_dim=cfg.text_dim,
        freq_dim=256,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )


def build_scheduler(cfg: TrainConfig):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=cfg.flow_shift, num_train_timesteps=1000
    )


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _video_tensor(frames_u8: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(frames_u8).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def _clip_list(cfg: TrainConfig, kind: str) -> list[tuple[str, int]]:
    """Deterministic (prompt, seed) pairs for training clips; seeds < HELDOUT_SEED_BASE."""
    n = cfg.n_short if kind == "short" else cfg.n_long
    rng = np.random.default_rng([cfg.seed, 1 if kind == "short" else 2])
    out = []
    for i in range(n):
        p = random_prompt(rng, p_core=0.75, p_two=0.08)
        s = int(rng.integers(HELDOUT_SEED_BASE // 2)) + (0 if kind == "short" else HELDOUT_SEED_BASE // 2)
        out.append((p, s))
    return out


class _Budget:
    def __init__(self, minutes: float | None, elapsed: float = 0.0):
        self.limit = None if minutes is None else minutes * 60.0
        self.start = time.time() - elapsed

    @property
    def elapsed(self) -> float:
        return time.time() - self.start

    def over(self) -> bool:
        return self.limit is not None and self.elapsed > self.limit


def _sample_sigma(gen: torch.Generator, shape, shift: float) -> torch.Tensor:
    u = torch.rand(shape, generator=gen)
    return shift * u / (1 + (shift - 1) * u)


class _EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def _mix_loss(vae, z: torch.Tensor, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Latent-linearity loss: a blend of two latents must decode to the same blend of the two clips.

    Without it the tiny VAE's latent space is strongly non-linear (half the latent of a red object
    decodes as a green one), and a denoiser's blurry early predictions -- blends by construction --
    decode to blobs of the wrong colour. Half of the batch, paired with the other half."""
    if z.shape[0] < 2:
        return z.new_zeros(())
    h = z.shape[0] // 2
    a = torch.rand((h, 1, 1, 1, 1), generator=gen)
    zm = a * z[:h] + (1 - a) * z[h : 2 * h]
    xm = a * x[:h] + (1 - a) * x[h : 2 * h]
    ym = vae.decode(zm).sample
    return (ym - xm).abs().mean() + F.mse_loss(ym, xm)


def _foreground_weight(x0: torch.Tensor, weight: float, threshold: float | torch.Tensor = 0.3) -> torch.Tensor:
    """1 + ``weight`` at latent positions that differ from their frame's background (the per-channel
    median over the frame) by more than ``threshold`` (a float, or per frame: broadcastable to
    [B, 1, F, 1, 1]), dilated by one latent pixel; shape [B, 1, F, H, W]."""
    bg = x0.flatten(3).median(dim=-1).values[..., None, None]
    m = ((x0 - bg).abs().mean(dim=1, keepdim=True) > threshold).float()
    m = F.max_pool3d(m, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))
    return 1.0 + weight * m


def _frame_balance(latents: torch.Tensor, power: float, fg_threshold: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-latent-frame loss weights and foreground thresholds from ``latents`` [N, C, F, H, W]:
    ``(s_ref / s_f) ** power`` and ``fg_threshold * s_f / s_ref``, with s_f the std of latent frame f
    and s_ref the median over frames; both shape [F]. ``power`` 0 gives ones and ``fg_threshold``
    (``TrainConfig`` rejects a negative ``frame_balance``)."""
    if power == 0:
        return torch.ones(latents.shape[2]), torch.full((latents.shape[2],), float(fg_threshold))
    s = torch.stack([latents[:, :, f].float().std() for f in range(latents.shape[2])])
    rel = s / s.median()
    return rel.pow(-power), fg_threshold * rel


def _edge_weight(x: torch.Tensor, weight: float, threshold: float = 0.1) -> torch.Tensor:
    """1 + ``weight`` at pixels of ``x`` [B, C, F, H, W] (in [-1, 1]) next to a spatial step larger than
    ``threshold`` in any channel (object outlines, dilated by one pixel); shape [B, 1, F, H, W]."""
    # steps between neighbours, zero-padded so both pixels of a step see it
    gx = F.pad((x[..., :, 1:] - x[..., :, :-1]).abs().amax(dim=1, keepdim=True), (1, 1))
    gy = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs().amax(dim=1, keepdim=True), (0, 0, 1, 1))
    m = torch.maximum(torch.maximum(gx[..., :, 1:], gx[..., :, :-1]), torch.maximum(gy[..., 1:, :], gy[..., :-1, :]))
    m = F.max_pool3d((m > threshold).float(), kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))
    return 1.0 + weight * m


def _atomic_save(obj, path: Path) -> None:
    """Write a state (tensors, numbers, strings, dicts / lists of them) as safetensors + a JSON header, atomically:
    nothing in a work dir is ever unpickled."""
    save_state(path, obj)


def _load(path: Path):
    return load_state(path)


def _resume(ck: Path, model: torch.nn.Module, opt, stage: str) -> tuple[int, float, dict]:
    """Restore a stage's model and optimizer from its checkpoint: ``(step, elapsed seconds, state)``
    (``(0, 0.0, {})`` when there is none yet)."""
    if not ck.is_file():
        return 0, 0.0, {}
    st = _load(ck)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    logger.info("%s: resumed at step %d", stage, st["step"])
    return st["step"], st["elapsed"], st


def _optimizer_step(opt, loss: torch.Tensor, params) -> None:
    """Backward, clip the gradient norm to 1 and step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def _lr_at(step: int, total: int, base: float, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------


class Trainer:
    """Runs the stages of :func:`train_embedded`; state lives in ``cfg.workdir``."""

    def __init__(self, cfg: TrainConfig, resume: bool = True):
        self.cfg = cfg
        self.work = Path(cfg.workdir).expanduser()
        if not resume and self.work.exists():
            logger.info("--no-resume: removing %s", self.work)
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(cfg.threads)
        self.timings: dict[str, float] = self._load_json("timings.json")
        self.info: dict = self._load_json("info.json")
        (self.work / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))

    # -- bookkeeping --------------------------------------------------------------------------
    def _load_json(self, name: str) -> dict:
        p = self.work / name
        return json.loads(p.read_text()) if p.is_file() else {}

    def _save_json(self, name: str, obj: dict) -> None:
        (self.work / name).write_text(json.dumps(obj, indent=2))

    def _done(self, stage: str) -> bool:
        return (self.work / f"{stage}.done").is_file()

    def _mark_done(self, stage: str, seconds: float, **info) -> None:
        self.timings[stage] = round(seconds, 1)
        self.info[stage] = info
        self._save_json("timings.json", self.timings)
        self._save_json("info.json", self.info)
        (self.work / f"{stage}.done").write_text("ok\n")

    # -- text ---------------------------------------------------------------------------------
    def text_parts(self):
        d = self.work / "text"
        from transformers import T5Tokenizer, UMT5EncoderModel

        if not (d / "text_encoder").is_dir():
            tok = build_tokenizer()
            te = build_text_encoder(len(tok), self.cfg.text_dim, self.cfg.seed)
            tok.save_pretrained(d / "tokenizer")
            te.save_pretrained(d / "text_encoder")
        tok = T5Tokenizer.from_pretrained(d / "tokenizer")
        te = UMT5EncoderModel.from_pretrained(d / "text_encoder", dtype=torch.float32).eval()
        return tok, te

    def pipeline(self, transformer=None, vae=None):
        from diffusers import WanPipeline

        tok, te = self.text_parts()
        if vae is None:
            vae = self.load_vae()
        return WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=build_scheduler(self.cfg), transformer=transformer)

    @torch.no_grad()
    def embed_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """prompt -> [max_sequence_length, text_dim], exactly as ``WanPipeline.encode_prompt`` pads it."""
        from diffusers import WanPipeline

        tok, te = self.text_parts()
        pipe = WanPipeline(tokenizer=tok, text_encoder=te, vae=None, scheduler=build_scheduler(self.cfg), transformer=None)
        uniq = sorted(set(prompts) | {""})
        out = {}
        for i in range(0, len(uniq), 64):
            batch = uniq[i : i + 64]
            emb, _ = pipe.encode_prompt(
                batch, do_classifier_free_guidance=False, max_sequence_length=self.cfg.max_sequence_length,
                device=torch.device("cpu"), dtype=torch.float32,
            )
            for p, e in zip(batch, emb):
                out[p] = e.clone()
        return out

    # -- stage 1: VAE -------------------------------------------------------------------------
    def load_vae(self):
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan.from_pretrained(self.work / "vae_final", dtype=torch.float32).eval()

    def _vae_batch(self, step: int, frames: int | None = None, batch: int | None = None, center: str = "first"):
        """``batch`` random clips of ``frames`` frames, cropped to ``vae_crop`` px around the first object
        (``center="first"``: its position in the first frame; ``"path"``: the middle of its path over the clip)
        or, one time in five, anywhere."""
        cfg = self.cfg
        frames = frames or cfg.vae_frames
        rng = np.random.default_rng([cfg.seed, 10, step])
        clips = []
        for _ in range(batch or cfg.vae_batch):
            p = random_prompt(rng, p_core=0.6, p_two=0.2)
            # the VAE sees objects anywhere in the frame (crops), whatever layout the transformer data uses
            plan = plan_scene(p, height=cfg.height, width=cfg.width, seed=int(rng.integers(HELDOUT_SEED_BASE)),
                              texture=None, layout="anywhere")
            start = int(rng.integers(0, 64)) if rng.random() < 0.5 else 0
            v = render_plan(plan, frames, start_frame=start)
            c = cfg.vae_crop
            if rng.random() < 0.8:  # crop around the first object
                path = plan.positions(start + frames)[start:, 0]
                cx, cy = path.mean(axis=0) if center == "path" else path[0]
                x0 = int(np.clip(cx - c / 2 + rng.integers(-c // 4, c // 4 + 1), 0, cfg.width - c))
                y0 = int(np.clip(cy - c / 2 + rng.integers(-c // 4, c // 4 + 1), 0, cfg.height - c))
            else:
                x0 = int(rng.integers(0, cfg.width - c + 1))
                y0 = int(rng.integers(0, cfg.height - c + 1))
            clips.append(_video_tensor(v[:, y0 : y0 + c, x0 : x0 + c]))
        return torch.stack(clips)

    def _fit_vae(self, stage: str, vae, params: list, *, total: int, lr: float, warmup: int, seed_mul: int,
                 batch, train_encoder: bool, lr_span: int | None = None,
                 noise: float | None = None, edge_weight: float = 0.0) -> tuple[int, float | None, "_Budget"]:
        """The loop both VAE stages share: resumable AdamW on reconstruction + latent-linearity losses.

        ``batch(step)`` gives the clips; with ``train_encoder`` the encoder learns too (and a light
        penalty on the posterior mean keeps the latent scale bounded), else it is frozen. ``noise``: the
        latent noise (default ``vae_noise``); ``edge_weight``: extra weight on edge pixels (:func:`_edge_weight`)."""
        cfg = self.cfg
        noise = cfg.vae_noise if noise is None else noise
        ck = self.work / f"{stage}_ckpt.safetensors"
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        step, elapsed, _ = _resume(ck, vae, opt, stage)
        budget = _Budget(cfg.minutes.get(stage), elapsed)
        gen = torch.Generator()
        last_ck = time.time()
        (vae if train_encoder else vae.decoder).train()
        bar = tqdm(total=total, initial=step, desc=stage, dynamic_ncols=True)
        rec = None  # stays None when the stage resumes already finished (no step runs)

        def save():
            _atomic_save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": budget.elapsed}, ck)

        while step < total and not budget.over():
            gen.manual_seed(cfg.seed * seed_mul + step)
            x = batch(step)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, lr_span or total, lr, warmup=warmup)
            with torch.set_grad_enabled(train_encoder):
                mean = vae.encode(x).latent_dist.mean
            # near-deterministic autoencoder: the posterior mean plus a small fixed noise (the
            # posterior's own std starts at ~1 and would drown the signal for most of a short run)
            z = mean + noise * torch.randn(mean.shape, generator=gen)
            y = vae.decode(z).sample
            if edge_weight > 0:
                w = _edge_weight(x, edge_weight).expand_as(x)
                rec = ((y - x).abs() * w).sum() / w.sum() + ((y - x) ** 2 * w).sum() / w.sum()
            else:
                rec = (y - x).abs().mean() + F.mse_loss(y, x)
            loss = rec + cfg.vae_kl * mean.pow(2).mean() if train_encoder else rec  # light bound on the latent scale
            loss = loss + cfg.vae_mix * _mix_loss(vae, z, x, gen)
            _optimizer_step(opt, loss, params)
            step += 1
            bar.update(1)
            bar.set_postfix(rec=f"{rec.item():.4f}")
            if time.time() - last_ck > cfg.ckpt_minutes * 60:
                save()
                last_ck = time.time()
        bar.close()
        if step < total:
            logger.warning("%s: time budget reached at step %d/%d", stage, step, total)
        save()
        vae.eval()
        return step, None if rec is None else float(rec.item()), budget

    def stage_vae(self):
        cfg = self.cfg
        vae = build_vae()
        step, rec, budget = self._fit_vae(
            "vae", vae, list(vae.parameters()), total=cfg.vae_steps, lr=cfg.vae_lr, warmup=30, seed_mul=1_000_003,
            batch=self._vae_batch, train_encoder=True,
        )
        self._save_with_latent_stats(vae)
        self._mark_done("vae", budget.elapsed, steps=step, final_rec=rec)

    def stage_vae_long(self):
        """Encoder and decoder together on 17-frame clips (5 latent frames, what a T2V clip has): the
        causal encoder's later latent frames, never seen on 9-frame clips, drift less (a still object's latent:
        up to 194 % of its norm before, 106 % after; ``benchmarks/embedded_diagnostics.py``)."""
        cfg = self.cfg
        vae = self.load_vae()
        step, rec, budget = self._fit_vae(
            "vae_long", vae, list(vae.parameters()), total=cfg.vae_long_steps, lr=cfg.vae_long_lr, warmup=20,
            seed_mul=1_000_037,
            batch=lambda step: self._vae_batch(200_000 + step, frames=cfg.vae_long_frames, batch=cfg.vae_long_batch,
                                               center=cfg.vae_long_crop_center),
            train_encoder=True,
        )
        self._save_with_latent_stats(vae)
        self._mark_done("vae_long", budget.elapsed, steps=step, final_rec=rec)

    def _save_with_latent_stats(self, vae) -> None:
        """Measure ``latents_mean`` / ``latents_std`` on full-size clips and save ``vae_final``."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 11])
        zs = []
        with torch.no_grad():
            for _ in range(4):
                vids = []
                for _ in range(8):
                    p = random_prompt(rng)
                    plan = plan_scene(p, height=cfg.height, width=cfg.width, seed=int(rng.integers(HELDOUT_SEED_BASE)),
                                      texture=None, layout="anywhere")
                    vids.append(_video_tensor(render_plan(plan, cfg.short_frames)))
                zs.append(vae.encode(torch.stack(vids)).latent_dist.mode())
        z = torch.cat(zs)
        mean = z.mean(dim=(0, 2, 3, 4))
        std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
        vae.register_to_config(latents_mean=[round(float(v), 6) for v in mean], latents_std=[round(float(v), 6) for v in std])
        self._replace_vae_final(vae)

    def _replace_vae_final(self, vae) -> None:
        """Save ``vae`` as ``vae_final`` (written beside it first, so an interrupted save leaves the old one)."""
        tmp = self.work / "vae_final.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        vae.save_pretrained(tmp)
        if (self.work / "vae_final").exists():
            shutil.rmtree(self.work / "vae_final")
        os.replace(tmp, self.work / "vae_final")

    # -- stage 2b: decoder fine-tuning ---------------------------------------------------------
    def stage_vae_dec(self):
        """Fine-tune the decoder (and ``post_quant_conv``) with the encoder frozen: the latents the
        transformer is trained on stay valid while reconstructions get sharper."""
        # 17-frame clips (5 latent frames): the length of a T2V clip. The causal caches take longer than that
        # to settle (a change to the first latent frames still shows in the 8th), so longer videos drift more
        self._decoder_round("vae_dec", self.cfg.vae_dec_steps, self.cfg.vae_dec_lr, clip_base=100_000,
                            seed_mul=1_000_033)

    def stage_vae_dec2(self):
        """A second decoder round over the first round's clips again, at a lower, nearly constant learning
        rate: the first round stops at its time budget while still improving. Measured on the held-out
        prompts with the transformer unchanged: colour 0.784 -> 0.881. (The same 400 steps with a full
        cosine decay on fresh clips reached only 0.800.)"""
        self._decoder_round("vae_dec2", self.cfg.vae_dec2_steps, self.cfg.vae_dec2_lr, clip_base=100_000,
                            seed_mul=1_000_033, lr_span=self.cfg.vae_dec2_lr_span)

    def _decoder_round(self, stage: str, steps: int, lr: float, *, clip_base: int, seed_mul: int,
                       lr_span: int | None = None) -> None:
        cfg = self.cfg
        vae = self.load_vae()
        params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
        for p in vae.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        step, rec, budget = self._fit_vae(
            stage, vae, params, total=steps, lr=lr, warmup=20, seed_mul=seed_mul,
            batch=lambda step: self._vae_batch(clip_base + step, frames=cfg.vae_dec_frames, batch=cfg.vae_dec_batch,
                                               center=cfg.vae_dec_crop_center),
            train_encoder=False, lr_span=lr_span, noise=cfg.vae_dec_noise, edge_weight=cfg.vae_dec_edge_weight,
        )
        self._replace_vae_final(vae)
        self._mark_done(stage, budget.elapsed, steps=step, final_rec=rec)

    # -- stage 2: latents ---------------------------------------------------------------------
    def stage_latents(self):
        cfg = self.cfg
        t0 = time.time()
        vae = self.load_vae()
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        for kind, frames in (("short", cfg.short_frames), ("long", cfg.long_frames)):
            path = self.work / f"latents_{kind}.safetensors"
            clips = _clip_list(cfg, kind)
            part = self.work / f"latents_{kind}.partial.safetensors"
            done: list[torch.Tensor] = _load(part)["z"] if part.is_file() else []
            n_done = sum(z.shape[0] for z in done)
            if path.is_file():
                continue
            bs = 8
            bar = tqdm(total=len(clips), initial=n_done, desc=f"encode {kind}", dynamic_ncols=True)
            last = time.time()
            with torch.no_grad():
                for i in range(n_done, len(clips), bs):
                    vids = [
                        _video_tensor(render_plan(plan_scene(p, height=cfg.height, width=cfg.width, seed=s, texture=None,
                                                               layout=cfg.layout), frames))
                        for p, s in clips[i : i + bs]
                    ]
                    z = vae.encode(torch.stack(vids)).latent_dist.mode()
                    done.append(((z - mean) / std).to(torch.float16))
                    bar.update(len(vids))
                    if time.time() - last > 60:
                        _atomic_save({"z": done}, part)
                        last = time.time()
            bar.close()
            _atomic_save({"z": torch.cat(done), "prompts": [p for p, _ in clips], "seeds": [s for _, s in clips]}, path)
            part.unlink(missing_ok=True)
        self._mark_done("latents", time.time() - t0 + self.timings.get("latents", 0.0), n_short=cfg.n_short, n_long=cfg.n_long)

    def _load_latents(self):
        s = _load(self.work / "latents_short.safetensors")
        l = _load(self.work / "latents_long.safetensors")
        return s, l

    # -- transformer training (shared by t2v and ar) ------------------------------------------
    def _train_transformer(self, stage: str, init_state: dict | None):
        cfg = self.cfg
        short, long = self._load_latents()
        lat_s, lat_l = short["z"], long["z"]
        prompts_s, prompts_l = short["prompts"], long["prompts"]
        emb = self.embed_prompts(prompts_s + prompts_l)
        empty = emb[""]
        model = build_transformer(cfg)
        if init_state is not None:
            model.load_state_dict(init_state)
        causal = stage == "ar"
        if causal:
            apply_block_causal(model, cfg.chunk_frames)
        total = cfg.t2v_steps if stage == "t2v" else cfg.ar_steps
        lr = cfg.lr if stage == "t2v" else cfg.lr * 0.5
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
        ema = _EMA(model, cfg.ema)
        ck = self.work / f"{stage}_ckpt.safetensors"
        step, elapsed, st = _resume(ck, model, opt, stage)
        if st:
            ema.shadow = st["ema"]
        budget = _Budget(cfg.minutes.get(stage), elapsed)
        gen = torch.Generator()
        T = cfg.short_frames // 4 + 1  # latent frames of a T2V clip
        W = cfg.window_frames
        n_lat_long = lat_l.shape[2]
        tpf = (lat_s.shape[3] // cfg.patch) * (lat_s.shape[4] // cfg.patch)
        # by absolute latent index: the long clips cover every index a T2V clip or an AR window uses
        frame_w, fg_thr = _frame_balance(lat_l, cfg.frame_balance)
        if cfg.frame_balance:
            logger.info("%s: frame balance %.2f: weights %s, fg thresholds %s", stage, cfg.frame_balance,
                        np.round(frame_w.numpy(), 2).tolist(), np.round(fg_thr.numpy(), 3).tolist())
        last_ck = time.time()
        losses: list[float] = []
        model.train()
        bar = tqdm(total=total, initial=step, desc=stage, dynamic_ncols=True)

        def save():
            _atomic_save(
                {"model": model.state_dict(), "opt": opt.state_dict(), "ema": ema.shadow, "step": step, "elapsed": budget.elapsed}, ck
            )

        while step < total and not budget.over():
            rng = np.random.default_rng([cfg.seed, 20 if stage == "t2v" else 30, step])
            gen.manual_seed(cfg.seed * 7_000_003 + step + (0 if stage == "t2v" else 1 << 40))
            B = cfg.batch
            if not causal:
                # T2V: 17-frame clips, short clips and the prefixes of long clips
                idx = rng.integers(lat_s.shape[0] + lat_l.shape[0], size=B)
                x0 = torch.stack([lat_s[i] if i < lat_s.shape[0] else lat_l[i - lat_s.shape[0], :, :T] for i in idx]).float()
                ps = [prompts_s[i] if i < len(prompts_s) else prompts_l[i - len(prompts_s)] for i in idx]
                sigma = _sample_sigma(gen, (B,), cfg.train_shift)
                s_b = sigma.view(B, 1, 1, 1, 1)
                timestep = sigma * 1000.0
                loss_w = None
                f_idx = torch.arange(T).expand(B, T)
            else:
                idx = rng.integers(lat_l.shape[0], size=B)
                offs = rng.integers(0, (n_lat_long - W) // cfg.chunk_frames + 1, size=B) * cfg.chunk_frames
                offs = np.where(rng.random(B) < 0.3, 0, offs)  # the video start (1-pixel-frame latent) often
                x0 = torch.stack([lat_l[i, :, o : o + W] for i, o in zip(idx, offs)]).float()
                ps = [prompts_l[i] for i in idx]
                n_chunks = W // cfg.chunk_frames
                sig_c = _sample_sigma(gen, (B, n_chunks), cfg.train_shift)
                # half the samples mimic generation: chunks before a random chunk j are (nearly) clean
                j = torch.from_numpy(rng.integers(0, n_chunks, size=B))
                clean = torch.arange(n_chunks)[None, :] < j[:, None]
                mimic = torch.from_numpy(rng.random(B) < 0.5)[:, None] & clean
                sig_c = torch.where(mimic, torch.rand((B, n_chunks), generator=gen) * 0.05, sig_c)
                sig_f = sig_c.repeat_interleave(cfg.chunk_frames, dim=1)  # [B, W]
                s_b = sig_f.view(B, 1, W, 1, 1)
                timestep = (sig_f * 1000.0).repeat_interleave(tpf, dim=1)  # [B, W * tpf]
                loss_w = (sig_f > 0.05).float().view(B, 1, W, 1, 1)
                f_idx = torch.from_numpy(offs)[:, None] + torch.arange(W)[None, :]
            drop = rng.random(B) < cfg.cfg_dropout
            text = torch.stack([empty if d else emb[p] for p, d in zip(ps, drop)])
            if rng.random() < cfg.long_pad_prob:
                text = F.pad(text, (0, 0, 0, 512 - text.shape[1]))
            eps = torch.randn(x0.shape, generator=gen)
            xt = (1 - s_b) * x0 + s_b * eps
            target = eps - x0
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, lr, warmup=cfg.warmup)
            pred = model(hidden_states=xt, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
            if cfg.fg_weight > 0:
                fg = _foreground_weight(x0, cfg.fg_weight, fg_thr[f_idx].view(B, 1, -1, 1, 1))
                loss_w = fg if loss_w is None else loss_w * fg
            if cfg.frame_balance:
                fw = frame_w[f_idx].view(B, 1, -1, 1, 1)
                loss_w = fw if loss_w is None else loss_w * fw
            if loss_w is None:
                loss = F.mse_loss(pred, target)
            else:
                loss = ((pred - target) ** 2 * loss_w).sum() / loss_w.expand_as(pred).sum().clamp_min(1.0)
            _optimizer_step(opt, loss, model.parameters())
            ema.update(model, step)
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if step % 100 == 0:
                logger.info("%s step %d loss(50) %.4f elapsed %.0fs", stage, step, np.mean(losses[-50:]), budget.elapsed)
            if time.time() - last_ck > cfg.ckpt_minutes * 60:
                save()
                last_ck = time.time()
        bar.close()
        if step < total:
            logger.warning("%s: time budget reached at step %d/%d", stage, step, total)
        save()
        if causal:
            remove_block_causal(model)
        final = build_transformer(cfg)
        final.load_state_dict({k: v.to(final.state_dict()[k].dtype) for k, v in ema.shadow.items()})
        final.save_pretrained(self.work / f"{stage}_final")
        self._mark_done(stage, budget.elapsed, steps=step, final_loss=float(np.mean(losses[-50:])) if losses else None)

    def stage_t2v(self):
        self._train_transformer("t2v", None)

    def stage_ar(self):
        from diffusers import WanTransformer3DModel

        init = WanTransformer3DModel.from_pretrained(self.work / "t2v_final", dtype=torch.float32).state_dict()
        self._train_transformer("ar", init)

    # -- stage 5: export ----------------------------------------------------------------------
    def export_pipeline(self, stage: str, dest: Path) -> None:
        """Save a ``WanPipeline`` of the ``stage`` ("t2v" or "ar") transformer, the VAE and the text parts to
        ``dest`` (replaced if it exists)."""
        from diffusers import WanTransformer3DModel

        tr = WanTransformer3DModel.from_pretrained(self.work / f"{stage}_final", dtype=torch.float32)
        pipe = self.pipeline(transformer=tr)
        # float16 storage halves the size; the tiny text encoder stays float32 so that loading
        # without a dtype (transformers keeps the stored dtype) still gives float32 embeddings
        pipe.transformer.to(torch.float16)
        pipe.vae.to(torch.float16)
        pipe.save_pretrained(dest, safe_serialization=True)

    def stage_export(self):
        t0 = time.time()
        out = Path(self.cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, stage in (("shapes-t2v", "t2v"), ("shapes-ar", "ar")):
            dest = out / name
            # written beside the target and swapped in whole: a failed export leaves the previous models intact
            staging = out / f".{name}.partial"
            if staging.exists():
                shutil.rmtree(staging)
            self.export_pipeline(stage, staging)
            if name == "shapes-ar":
                CausalConfig(
                    chunk_frames=self.cfg.chunk_frames,
                    window_frames=self.cfg.window_frames,
                    max_sequence_length=self.cfg.max_sequence_length,
                ).save(staging)
            (staging / "training_info.json").write_text(
                json.dumps({"timings_s": self.timings, "info": self.info, "config": asdict(self.cfg),
                            "world": {"half_size_range": list(shapes.HALF_SIZE_RANGE)}}, indent=2, default=str)
            )
            _swap_in(staging, dest)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        logger.info("exported to %s (%.1f MB)", out, size / 1e6)
        self._mark_done("export", time.time() - t0, bytes=size)


def _swap_in(staging: Path, dest: Path) -> None:
    """Replace ``dest`` by the complete folder ``staging`` (the old one is removed only once the new one is in)."""
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    if old.exists():
        shutil.rmtree(old)


def resolve_out_dir(out_dir: str | Path | None) -> Path:
    """Where the models go: ``out_dir`` as given, else ``./embedded_models``; an implicit default that would land
    inside the installed ``vidaccel`` package is refused (its shipped weights are only replaced on request)."""
    import vidaccel

    if out_dir is not None:
        return Path(out_dir)
    default = Path(TrainConfig.out_dir).resolve()
    package = Path(vidaccel.__file__).resolve().parent
    if default == package or package in default.parents:
        raise ValueError(f"the default output folder {default} is inside the vidaccel package; give the output "
                         "folder explicitly (--out) to write there")
    return default


def train_embedded(
    out_dir: str | Path | None = None,
    *,
    resume: bool = True,
    workdir: str | Path | None = None,
    minutes: dict | None = None,
    stages: tuple[str, ...] = STAGES,
    **overrides,
) -> Path:
    """Train both embedded models end to end and export them to ``out_dir``.

    Args:
        out_dir: where ``shapes-t2v/`` and ``shapes-ar/`` are written (default: ``./embedded_models``; pass
            ``vidaccel/models/embedded`` explicitly to replace the shipped weights).
        resume: continue from the checkpoints in ``workdir`` (else start over).
        minutes: per-stage wall-clock budgets, e.g. ``{"vae": 9, "t2v": 30, "ar": 16}``.
        stages: subset of :data:`STAGES` to run (earlier stages must be done).
        **overrides: any :class:`TrainConfig` field.

    Returns:
        ``out_dir``.
    """
    kw = dict(overrides)
    kw["out_dir"] = str(resolve_out_dir(out_dir))
    if workdir is not None:
        kw["workdir"] = str(workdir)
    cfg = TrainConfig(**kw)
    if minutes:
        cfg.minutes = {**cfg.minutes, **minutes}
        TrainConfig(**asdict(cfg))  # validate
    bad = set(stages) - set(STAGES)
    if bad:
        raise ValueError(f"stages {sorted(bad)} unknown; allowed: {list(STAGES)}")
    tr = Trainer(cfg, resume=resume)
    t_all = time.time()
    for stage in STAGES:
        if stage not in stages:
            continue
        if tr._done(stage):
            logger.info("stage %s already done (%s); skipping", stage, tr.work)
            continue
        logger.info("stage %s ...", stage)
        getattr(tr, f"stage_{stage}")()
        logger.info("stage %s done in %.0fs", stage, tr.timings.get(stage, float("nan")))
    logger.info("all stages done in %.0fs this run; per stage: %s", time.time() - t_all, tr.timings)
    return Path(cfg.out_dir)


def config_value(field: str, text: str):
    """``text`` converted to the type of the scalar :class:`TrainConfig` field ``field``.

    Raises:
        ValueError: for an unknown or non-scalar field, or a value of the wrong type.
    """
    default = TrainConfig()
    scalars = sorted(k for k in TrainConfig.__dataclass_fields__ if isinstance(getattr(default, k), (int, float, str)))
    if field not in scalars:
        raise ValueError(f"field {field!r} is not a scalar TrainConfig field; allowed: {scalars}")
    typ = type(getattr(default, field))
    try:
        return typ(text)
    except ValueError:
        raise ValueError(f"TrainConfig.{field}={text!r}; allowed: a {typ.__name__}") from None


def _parse_args(argv: list[str] | None):
    """The command line, every value checked before any work (``CliError``: one line, exit 2)."""
    from vidaccel.cli.common import CliError, Parser, int_between, output_dir

    ap = Parser(prog="vidaccel train-embedded", description=main.__doc__)
    ap.add_argument("--out", default=None, type=output_dir("--out"), help="output folder (default: ./embedded_models; "
                    "the shipped weights are replaced only with --out vidaccel/models/embedded)")
    ap.add_argument("--workdir", default=None, type=output_dir("--workdir"),
                    help="checkpoints and caches (default: ~/.cache/vidaccel/train)")
    ap.add_argument("--no-resume", action="store_true", help="delete the work dir and start over")
    ap.add_argument("--minutes", action="append", default=[], metavar="STAGE=MIN",
                    help="time budget of a stage (vae, t2v, ar), e.g. --minutes t2v=30; repeatable")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--threads", type=int_between("--threads", 1, 4096), default=2)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a TrainConfig field (int/float/str), e.g. --set t2v_steps=3000")
    args = ap.parse_args(argv)
    minutes = {}
    for m in args.minutes:
        k, _, v = m.partition("=")
        try:
            value = float(v)
        except ValueError:
            value = float("nan")
        if k not in BUDGETED_STAGES or not math.isfinite(value) or value <= 0:
            raise CliError(f"--minutes={m[:60]!r} is not allowed: use STAGE=MINUTES with STAGE one of "
                           f"{', '.join(BUDGETED_STAGES)} and MINUTES a finite number > 0")
        minutes[k] = value
    stages = tuple(s for s in args.stages.split(",") if s)
    if not stages or set(stages) - set(STAGES):
        raise CliError(f"--stages={args.stages[:60]!r} is not allowed: give a comma-separated subset of "
                       f"{','.join(STAGES)}")
    overrides: dict = {"threads": args.threads}
    for item in args.set:
        k, _, v = item.partition("=")
        try:
            value = config_value(k, v)
        except ValueError as e:
            raise CliError(f"--set={item[:60]!r} is not allowed: {e}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise CliError(f"--set={item[:60]!r} is not allowed: the value must be a finite number")
        overrides[k] = value
    try:  # the whole config, as train_embedded will build it, before any stage starts
        kw = dict(overrides, out_dir=str(resolve_out_dir(args.out)))
        if args.workdir is not None:
            kw["workdir"] = str(args.workdir)
        cfg = TrainConfig(**kw)
        if minutes:
            TrainConfig(**{**asdict(cfg), "minutes": {**cfg.minutes, **minutes}})
    except (ValueError, TypeError) as e:
        raise CliError(str(e)) from None
    return args, minutes, stages, overrides


def main(argv: list[str] | None = None) -> int:
    """``vidaccel train-embedded``: reproduce the shipped embedded models on CPU."""
    args, minutes, stages, overrides = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # the stage log (budgets, resumes, per-100-step losses) even where the caller configured logging first:
    # ``vidaccel train-embedded`` sets WARNING for its pass-through subcommands
    logging.getLogger("training").setLevel(logging.INFO)
    train_embedded(args.out, resume=not args.no_resume, workdir=args.workdir, minutes=minutes, stages=stages,
                   **overrides)
    return 0


if __name__ == "__main__":
    import sys

    from vidaccel.cli import main as cli_main

    raise SystemExit(cli_main(["train-embedded", *sys.argv[1:]]))
