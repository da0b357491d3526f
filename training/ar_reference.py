"""The simple autoregressive loop the block-causal ``shapes-ar`` model is evaluated with during training.

:func:`generate_ar_recompute` denoises chunk after chunk while the (clean) history window is recomputed
through the whole transformer at every step: no KV cache (the product's rolling-KV pipeline is
:class:`vidaccel.pipelines.LongVideoPipeline`, whose ``use_kv_cache=False`` path is the equivalent reference).

Example::

    >>> from training.ar_reference import load_shapes_ar, generate_ar_recompute
    >>> pipe = load_shapes_ar()
    >>> video = generate_ar_recompute(pipe, "a red circle moving right on a black background", num_chunks=9)
    >>> video.shape  # [F, H, W, 3] float in [0, 1]; F = 1 + 4 * (chunk_frames * num_chunks - 1)
    (69, 128, 128, 3)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidaccel.pipelines.long_video import CausalConfig, apply_block_causal
from vidaccel.pipelines.long_video.block_causal import has_block_causal

__all__ = ["load_shapes_ar", "chunk_pixel_bounds", "generate_ar_recompute", "decode_latents"]


def load_shapes_ar(path: str | Path | None = None, *, dtype: torch.dtype = torch.float32):
    """Load the shipped ``shapes-ar`` WanPipeline (offline) with block-causal attention applied.

    Returns:
        a ``WanPipeline`` whose ``causal_config`` attribute is the :class:`CausalConfig`.
    """
    from diffusers import WanPipeline

    from vidaccel.models import embedded_path

    folder = Path(path) if path is not None else embedded_path("shapes-ar")
    cfg = CausalConfig.load(folder)
    pipe = WanPipeline.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    apply_block_causal(pipe.transformer, cfg.chunk_frames)
    pipe.causal_config = cfg
    return pipe


def chunk_pixel_bounds(num_chunks: int, chunk_frames: int, temporal_factor: int = 4) -> list[tuple[int, int]]:
    """Pixel-frame ranges [start, stop) of each chunk after decoding with the causal Wan VAE.

    Latent frame 0 decodes to 1 pixel frame, every later latent frame to ``temporal_factor``.
    """
    bounds = []
    for c in range(num_chunks):
        a_lat, b_lat = c * chunk_frames, (c + 1) * chunk_frames
        a = 0 if a_lat == 0 else 1 + (a_lat - 1) * temporal_factor
        b = 1 + (b_lat - 1) * temporal_factor
        bounds.append((a, b))
    return bounds


def _per_token_timesteps(sigmas_per_frame: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """[B, F] sigmas -> [B, F * tokens_per_frame] timesteps (sigma * 1000)."""
    return (sigmas_per_frame * 1000.0).repeat_interleave(tokens_per_frame, dim=1)


@torch.no_grad()
def generate_ar_recompute(
    pipe: Any,
    prompt: str,
    num_chunks: int,
    *,
    height: int = 128,
    width: int = 128,
    num_inference_steps: int = 20,
    guidance_scale: float = 4.0,
    negative_prompt: str = "",
    seed: int = 0,
    causal_config: CausalConfig | None = None,
    max_sequence_length: int | None = None,
    output_type: str = "np",
    return_latents: bool = False,
):
    """Generate ``num_chunks`` chunks one after another, recomputing the history window each step.

    Each chunk starts from noise and is denoised with a fresh copy of ``pipe.scheduler``; the last
    ``window_frames - chunk_frames`` latent frames of history (noised to ``context_noise``) are fed
    with it, at per-token timesteps, and their positions restart at 0 in every window. The whole
    latent sequence is decoded once at the end.

    Args:
        pipe: a WanPipeline with a block-causal transformer (see :func:`load_shapes_ar`).
        num_chunks: chunks to generate, the first included.
        max_sequence_length: text length (default: the model's ``causal_config``).

    Returns:
        float np array [F, H, W, 3] in [0, 1] with ``F = 1 + 4 * (num_chunks * chunk_frames - 1)``
        (and the normalised latents [1, C, num_chunks * chunk_frames, h, w] if ``return_latents``).
    """
    cfg = causal_config or getattr(pipe, "causal_config", None)
    if cfg is None:
        raise ValueError("pipe has no causal_config; load it with load_shapes_ar() or pass causal_config=")
    if num_chunks < 1:
        raise ValueError(f"num_chunks={num_chunks}; allowed: >= 1")
    transformer = pipe.transformer
    if not has_block_causal(transformer):
        apply_block_causal(transformer, cfg.chunk_frames)
    device = pipe._execution_device
    dtype = transformer.dtype
    do_cfg = guidance_scale > 1.0
    cond, uncond = pipe.encode_prompt(
        prompt,
        negative_prompt=negative_prompt,
        do_classifier_free_guidance=do_cfg,
        max_sequence_length=max_sequence_length or cfg.max_sequence_length,
        device=device,
        dtype=dtype,
    )
    sf = pipe.vae_scale_factor_spatial
    p_t, p_h, p_w = transformer.config.patch_size
    h, w = height // sf, width // sf
    tpf = (h // p_h) * (w // p_w)
    C = transformer.config.in_channels
    gen = torch.Generator(device="cpu").manual_seed(seed)
    history = torch.zeros(1, C, 0, h, w, dtype=torch.float32)
    ctx_len = cfg.window_frames - cfg.chunk_frames
    for c in range(num_chunks):
        ctx = history[:, :, -ctx_len:] if history.shape[2] else history
        n_ctx = ctx.shape[2]
        if n_ctx and cfg.context_noise > 0:
            eps = torch.randn(ctx.shape, generator=gen)
            ctx = (1 - cfg.context_noise) * ctx + cfg.context_noise * eps
        x = torch.randn(1, C, cfg.chunk_frames, h, w, generator=gen)
        sched = copy.deepcopy(pipe.scheduler)
        sched.set_timesteps(num_inference_steps, device="cpu")
        for t in sched.timesteps:
            sigma_new = float(t) / sched.config.num_train_timesteps
            sig = torch.tensor([[cfg.context_noise] * n_ctx + [sigma_new] * cfg.chunk_frames])
            ts = _per_token_timesteps(sig, tpf).to(device)
            inp = torch.cat([ctx, x], dim=2).to(device=device, dtype=dtype)
            v = transformer(hidden_states=inp, timestep=ts, encoder_hidden_states=cond, return_dict=False)[0]
            if do_cfg:
                vu = transformer(hidden_states=inp, timestep=ts, encoder_hidden_states=uncond, return_dict=False)[0]
                v = vu + guidance_scale * (v - vu)
            v = v[:, :, n_ctx:].float().cpu()
            x = sched.step(v, t, x, return_dict=False)[0]
        history = torch.cat([history, x], dim=2)
    video = decode_latents(pipe, history, output_type=output_type)
    return (video, history) if return_latents else video


@torch.no_grad()
def decode_latents(pipe: Any, latents: torch.Tensor, *, output_type: str = "np"):
    """Decode normalised latents [1, C, F_lat, h, w] with the pipeline's VAE -> [F, H, W, 3] in [0, 1]."""
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    z = (latents.float() * std + mean).to(device=vae.device, dtype=vae.dtype)
    video = vae.decode(z, return_dict=False)[0]
    out = pipe.video_processor.postprocess_video(video, output_type=output_type)
    if output_type == "np":
        return np.asarray(out[0])
    return out[0]
